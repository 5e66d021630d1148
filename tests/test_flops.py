"""FLOP counts: formulae checked by hand on a trivial shape, and against torch's FlopCounterMode on tiny models."""

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import pytest

from finprog import flopcheck, flops

# A one-layer llama small enough to count by hand: per token the projections are
# q 4x4, k 4x2, v 4x2, o 4x4, gate 4x8, up 4x8, down 8x4 = 144 multiply-accumulates.
TRIVIAL = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 4, "num_attention_heads": 2,
           "num_key_value_heads": 1, "intermediate_size": 8, "vocab_size": 10}


def trivial():
    return flops.ModelShape.from_config(TRIVIAL)


def test_forward_by_hand():
    # 3 tokens: projections 3*144, Q K^T and P V 2 * heads 2 * head_dim 2 * 3 queries * 3 keys, LM head 3*4*10
    assert flops.forward_flops(trivial(), 3) == 2 * (3 * 144 + 2 * 2 * 2 * 3 * 3 + 3 * 4 * 10)
    # prefill: logits for the last position only
    assert flops.prefill_flops(trivial(), 3) == 2 * (3 * 144 + 2 * 2 * 2 * 3 * 3 + 4 * 10)
    # decode step with context 5: one query against 5 keys
    assert flops.decode_step_flops(trivial(), 5) == 2 * (144 + 2 * 2 * 2 * 1 * 5 + 4 * 10)


def test_generation_is_prefill_plus_decode_steps():
    shape = trivial()
    expected = flops.prefill_flops(shape, 7) + sum(flops.decode_step_flops(shape, c) for c in (8, 9, 10))
    assert flops.generation_flops(shape, 7, 4) == expected
    assert flops.generation_flops(shape, 7, 1) == flops.prefill_flops(shape, 7)
    with pytest.raises(ValueError):
        flops.generation_flops(shape, 7, 0)


def test_useful_and_executed_inference():
    shape = trivial()
    batch = dict(batch_size=2, batch_prompt_tokens=7, batch_new_tokens=4,  # both rows padded to 7, run for 4 tokens
                 cached_prompt_tokens=0)
    completions = [SimpleNamespace(prompt_tokens=5, new_tokens=2, **batch),
                   SimpleNamespace(prompt_tokens=7, new_tokens=4, **batch)]
    counts = flops.inference_flops(shape, completions)
    assert counts["useful"] == flops.generation_flops(shape, 5, 2) + flops.generation_flops(shape, 7, 4)
    assert counts["executed"] == flops.generation_flops(shape, 7, 4, batch=2) > counts["useful"]


def test_a_cached_prefix_by_hand():
    shape = trivial()
    # the prefix: 3 tokens, every projection, 3 x 3 attention, no logits
    assert flops.prefix_flops(shape, 3) == 2 * (3 * 144 + 2 * 2 * 2 * 3 * 3)
    # a 5-token prompt after it: 2 tokens run, scored against 3 cached keys and themselves; logits for the last
    assert flops.prefill_flops(shape, 5, cached=3) == 2 * (2 * 144 + 2 * 2 * 2 * 2 * 5 + 4 * 10)
    # the prefix once plus the rest is the whole prefill less the prefix's queries against the rest's (masked) keys
    assert (flops.prefix_flops(shape, 3) + flops.prefill_flops(shape, 5, cached=3)
            == flops.prefill_flops(shape, 5) - 2 * 2 * 2 * 2 * 3 * 2)
    # decode steps do not change: their context holds the prefix either way
    assert (flops.generation_flops(shape, 5, 4, cached=3) - flops.prefill_flops(shape, 5, cached=3)
            == flops.generation_flops(shape, 5, 4) - flops.prefill_flops(shape, 5))


def test_useful_and_executed_inference_after_a_cached_prefix():
    shape = trivial()
    batch = dict(batch_size=2, batch_prompt_tokens=9, batch_new_tokens=3, cached_prompt_tokens=6)
    completions = [SimpleNamespace(prompt_tokens=8, new_tokens=3, **batch),
                   SimpleNamespace(prompt_tokens=9, new_tokens=1, **batch)]
    counts = flops.inference_flops(shape, completions)
    assert counts["useful"] == flops.generation_flops(shape, 8, 3, cached=6) + flops.generation_flops(shape, 9, 1,
                                                                                                          cached=6)
    assert counts["executed"] == flops.generation_flops(shape, 9, 3, batch=2, cached=6) > counts["useful"]
    uncached = flops.inference_flops(shape, [SimpleNamespace(**{**vars(c), "cached_prompt_tokens": 0})
                                             for c in completions])
    assert counts["useful"] + flops.prefix_flops(shape, 6) < uncached["useful"]


def test_full_step_is_three_forwards():
    shape = trivial()
    assert flops.training_step_flops(shape, 3, method="full") == 3 * flops.forward_flops(shape, 3)
    assert flops.training_step_flops(shape, 3, batch=2, method="full") == 6 * flops.forward_flops(shape, 3)
    for logits in (0, 1):  # a head over no position, or only the last, as forward_flops reads it
        assert (flops.training_step_flops(shape, 3, method="full", logits=logits)
                == 3 * flops.forward_flops(shape, 3, logits=logits))


def test_lora_step_by_hand():
    # r=1 on q (4->4) and v (4->2); layer 0's input needs no gradient (no checkpointing)
    forward = 3 * 144 + 72 + 120 + 3 * 1 * ((4 + 4) + (4 + 2))
    backward = (3 * 4 * 10  # LM head dx only
                + 3 * (4 + 2 * 4) + 3 * (4 + 2 * 2)  # adapters: dW_A, dW_B, d(xA); no dx
                + 36 + 72  # dQ only (K needs no grad); dP and dV
                + 3 * 16 + 3 * 32 * 2 + 3 * 32)  # dx of o, gate, up, down
    assert flops.training_step_flops(trivial(), 3, method="lora", lora_rank=1) == 2 * (forward + backward)
    assert flops.training_step_flops(trivial(), 3, method="qlora", lora_rank=1) == 2 * (forward + backward)


def test_gradient_checkpointing_recomputes_the_layers_but_down_proj():
    shape = trivial()
    plain = flops.training_step_flops(shape, 3, method="full")
    layer = 3 * 144 + 72  # the decoder layer's forward MACs; the LM head is not recomputed
    checkpointed = flops.training_step_flops(shape, 3, method="full", gradient_checkpointing=True)
    assert checkpointed == plain + 2 * (layer - 3 * 32)


def test_lora_step_is_cheaper_than_full_but_more_than_two_forwards():
    shape = flops.ModelShape.from_config({**TRIVIAL, "num_hidden_layers": 8, "hidden_size": 64,
                                          "intermediate_size": 256, "num_key_value_heads": 2})
    forward = flops.forward_flops(shape, 64)
    lora = flops.training_step_flops(shape, 64, method="lora")
    assert 2 * forward < lora < flops.training_step_flops(shape, 64, method="full") == 3 * forward


def test_ungated_mlp_drops_the_gate():
    shape = trivial()
    ungated = dataclasses.replace(shape, gated_mlp=False)
    assert flops.forward_flops(shape, 3) - flops.forward_flops(ungated, 3) == 2 * 3 * 4 * 8
    assert flops.parameter_counts(shape)["total"] - flops.parameter_counts(ungated)["total"] == 4 * 8


def test_sliding_window_keys():
    shape = flops.ModelShape.from_config({**TRIVIAL, "model_type": "gemma3_text", "num_hidden_layers": 2,
                                          "head_dim": 2, "sliding_window": 4,
                                          "layer_types": ["sliding_attention", "full_attention"]})
    assert shape.tied_embeddings and shape.sliding_window == 4
    assert shape.keys(0, 10) == 10 + 10  # prefill scores the whole square in both layers
    assert shape.keys(9, 1) == 4 + 10  # the sliding layer's cache keeps window-1 tokens
    assert shape.keys(2, 1) == 3 + 3


def test_config_defaults():
    qwen = flops.ModelShape.from_config({**TRIVIAL, "model_type": "qwen2", "sliding_window": 32768,
                                         "use_sliding_window": False, "max_window_layers": 1})
    assert qwen.sliding_window is None and set(qwen.layer_types) == {"full_attention"}
    assert qwen.biases == ("q_proj", "k_proj", "v_proj")
    gemma = flops.ModelShape.from_config({**TRIVIAL, "model_type": "gemma3_text", "num_hidden_layers": 12})
    assert gemma.head_dim == 256 and gemma.sliding_window == 4096
    assert [i for i, t in enumerate(gemma.layer_types) if t == "full_attention"] == [5, 11]


def test_unsupported_configs_fail_clearly():
    with pytest.raises(flops.UnsupportedModelError, match="mixtral"):
        flops.ModelShape.from_config({**TRIVIAL, "model_type": "mixtral"})
    with pytest.raises(flops.UnsupportedModelError, match="vocab_size"):
        flops.ModelShape.from_config({k: v for k, v in TRIVIAL.items() if k != "vocab_size"})
    with pytest.raises(ValueError, match="method"):
        flops.training_step_flops(trivial(), 3, method="prefix")
    with pytest.raises(ValueError, match="lm_head"):
        flops.lora_targets("q_proj,lm_head")
    assert flops.lora_targets("q_proj, v_proj") == ("q_proj", "v_proj")
    assert flops.lora_targets("all-linear") == flops.PROJECTIONS
    phi3 = flops.ModelShape.from_config({**TRIVIAL, "model_type": "phi3"})
    assert flops.lora_targets("all-linear", phi3) == flops.FUSED_PROJECTIONS
    with pytest.raises(ValueError, match="not phi3 projections: choose from qkv_proj, o_proj, gate_up_proj"):
        flops.lora_targets("q_proj,v_proj", phi3)


def test_parameter_counts_by_hand():
    counts = flops.parameter_counts(trivial(), method="lora", lora_rank=2)
    layer = 144 + 2 * 4  # projections and two norms
    assert counts == {"total": 40 + 40 + layer + 4, "embedding": 40, "lm_head": 40, "non_embedding": layer + 4,
                      "trainable": 2 * ((4 + 4) + (4 + 2))}


def test_summary_formats():
    result = flops.summary(trivial(), prompt_tokens=5, new_tokens=2, method="lora")
    assert result["flops"]["generation"] == flops.generation_flops(trivial(), 5, 2)
    assert "generation" in flops.format_summary(result)


def test_import_needs_no_torch_nor_the_modules_that_use_the_counts():
    heavy = ["torch", "transformers", "finprog.flopcheck", "finprog.generation", "finprog.solve", "finprog.training"]
    code = f"import sys, finprog.flops; sys.exit(any(m in sys.modules for m in {heavy}))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------- measured, tiny random models

def tiny_model(arch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2)
    config = {
        "llama": lambda: transformers.LlamaConfig(**common),
        "qwen2": lambda: transformers.Qwen2Config(**common, use_sliding_window=True, sliding_window=16,
                                                  max_window_layers=1),
        "gemma3": lambda: transformers.Gemma3TextConfig(
            **common, head_dim=32, sliding_window=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
        "phi3": lambda: transformers.Phi3Config(**common, sliding_window=16, pad_token_id=0),
    }[arch]()
    import torch
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi3"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_check_agrees_with_flop_counter(arch, checkpointing):
    targets = "qkv_proj" if arch == "phi3" else flops.LORA_TARGETS
    result = flopcheck.check(tiny_model(arch), prompt_tokens=20, new_tokens=6, train_tokens=40, targets=targets,
                             gradient_checkpointing=checkpointing)  # the generation crosses the window of 16
    assert [r["what"] for r in result["rows"]] == ["prefill", "generation", "forward", "prefix", "after prefix",
                                                   "full step", "lora step"]
    for row in result["rows"]:
        assert row["analytic"] == row["measured"], flopcheck.format_check(result)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi3"])
def test_check_counts_a_cached_prefix_longer_than_the_window_exactly(arch):
    result = flopcheck.check(tiny_model(arch), prompt_tokens=48, new_tokens=5, train_tokens=8, targets="all-linear")
    rows = {r["what"]: r for r in result["rows"]}
    assert result["prefix_tokens"] == 24  # more than the window of 16 (the sliding layers' cache keeps 15)
    for what in ("prefix", "after prefix"):
        assert rows[what]["analytic"] == rows[what]["measured"], flopcheck.format_check(result)


@pytest.mark.parametrize("arch, targets", [("llama", "k_proj"), ("llama", "o_proj,up_proj"), ("llama", "down_proj"),
                                           ("llama", "all-linear"), ("phi3", "gate_up_proj"), ("phi3", "all-linear")])
def test_check_lora_targets(arch, targets):
    for checkpointing in (False, True):
        result = flopcheck.check(tiny_model(arch), prompt_tokens=24, new_tokens=2, lora_rank=4, targets=targets,
                                 gradient_checkpointing=checkpointing)
        assert abs(result["rows"][-1]["rel_error"]) < 0.01, flopcheck.format_check(result)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi3"])
def test_parameter_counts_match_the_model(arch):
    model = tiny_model(arch)
    shape = flops.ModelShape.from_config(model.config.to_dict())
    assert flops.parameter_counts(shape)["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", "phi3"])
def test_padded_batch_generation_across_the_window(arch):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model(arch).eval()
    shape = flops.ModelShape.from_config(model.config.to_dict())
    ids = torch.randint(512, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = mask[1, :2] = 0  # left padding
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # 10 + 12 tokens crosses the window of 16
        model.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                       pad_token_id=0)
    assert flops.generation_flops(shape, 10, 12, batch=3) == pytest.approx(counter.get_total_flops(), rel=0.01)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_generation_call_with_a_cached_prefix_costs_the_prefix_once_and_its_batches(fresh_tiny_llama, tiny_tokenizer,
                                                                                       batch_size):
    from torch.utils.flop_counter import FlopCounterMode

    from finprog.generation import generate

    model = fresh_tiny_llama
    model.set_attn_implementation("eager")
    shape = flops.ModelShape.from_config(model.config.to_dict())
    prompts = ["Shared instructions for every question. " + q for q in ("a?", "what is the sum of 3 and 4?", "x",
                                                                         "how much did sales grow in 2019?", "ok")]
    with FlopCounterMode(display=False) as counter:
        completions = generate(model, tiny_tokenizer, prompts, batch_size=batch_size, max_new_tokens=6, stop=None,
                               prefix_cache=True)
    (cached,) = {c.cached_prompt_tokens for c in completions}
    executed = flops.inference_flops(shape, completions)["executed"]
    assert cached > 30 and counter.get_total_flops() == flops.prefix_flops(shape, cached) + executed


def test_a_bert_classifiers_forward_by_hand():
    config = SimpleNamespace(model_type="bert", num_hidden_layers=1, hidden_size=4, num_attention_heads=2,
                             intermediate_size=8, vocab_size=10)
    shape = flops.encoder_shape(config)
    assert (shape.head_dim, shape.kv_heads, shape.gated_mlp, shape.layer_types) == (2, 2, False, ("full_attention",))
    # per token: q, k, v, o 4x4 each, up 4x8, down 8x4 = 128 multiply-accumulates; 3 tokens attend to all 3;
    # no LM head; the pooler (4x4) and the one-logit head (4x1) add 4 * 4 + 4 per sequence
    encoder = 2 * (3 * 128 + 2 * 2 * 2 * 3 * 3)
    assert flops.classifier_flops(shape, 3) == encoder + 2 * (4 * 4 + 4)
    assert flops.classifier_flops(shape, 3, rows=5) == 5 * flops.classifier_flops(shape, 3)
