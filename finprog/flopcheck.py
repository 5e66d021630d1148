"""The counts of `flops` against measurement: torch's FlopCounterMode on a real model (`finprog flops --check`).

Every row runs what finprog runs (`generate` as generation calls it, a shared prefix and
a padded batch after it as `generation` builds them, a training step through
`training.reply_loss`) on random tokens, and puts the analytic count next to what the
counter recorded. Attention runs eager, since the counter sees no FLOPs in CPU SDPA.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

from finprog.flops import (
    LORA_TARGETS, ModelShape, forward_flops, generation_flops, lora_targets, prefill_flops, prefix_flops,
    training_step_flops,
)
from finprog.generation import SharedPrefix, batch_inputs
from finprog.training import reply_loss


def check(model, prompt_tokens: int = 128, new_tokens: int = 8, train_tokens: int | None = None,
          lora_rank: int = 8, targets: str | tuple[str, ...] = LORA_TARGETS,
          gradient_checkpointing: bool = False) -> dict:
    """Analytic counts against torch.utils.flop_counter on `model` (a transformers causal LM or a finprog model spec).

    Measures, on random tokens, a prefill and a generation of `prompt_tokens` +
    `new_tokens`; a shared prefix of half the prompt prefilled once, and a batch of two
    prompts of different lengths generated after it (with padding between the prefix
    and the shorter one's own tokens); a forward, a full and a LoRA
    training step on `train_tokens` (default: prompt_tokens). The model is left as it
    was found.
    """
    if isinstance(model, str):
        from finprog.models import load_model
        name, model = model, load_model(model).model
    else:
        name = model.config.name_or_path or model.config.model_type
    shape = ModelShape.from_config(model.config.to_dict())
    targets = lora_targets(targets, shape)
    train_tokens = train_tokens or prompt_tokens
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(shape.vocab, (1, max(prompt_tokens, train_tokens)), generator=generator)
    prompt, ids = tokens[:, :prompt_tokens].to(model.device), tokens[:, :train_tokens].to(model.device)
    tail = torch.randint(shape.vocab, (max(1, prompt_tokens // 4),), generator=generator).tolist()
    attention, training = model.config._attn_implementation, model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.set_attn_implementation("eager")
    rows = _inference_rows(model, shape, prompt, ids, new_tokens)
    cached_rows, cached = _cached_prefix_rows(model, shape, prompt[0].tolist(), tail, new_tokens)
    training_rows, model = _training_rows(model, shape, ids, min(new_tokens, train_tokens - 1), lora_rank, targets,
                                          gradient_checkpointing)
    for p, flag in zip(model.parameters(), requires_grad):
        p.requires_grad_(flag)
    model.set_attn_implementation(attention)
    model.train(training)
    return {
        "model": name,
        "model_type": shape.model_type,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "prefix_tokens": cached,
        "train_tokens": train_tokens,
        "lora_rank": lora_rank,
        "lora_targets": list(targets),
        "gradient_checkpointing": gradient_checkpointing,
        "rows": [{"what": what, "analytic": a, "measured": m, "rel_error": (a - m) / m}
                 for what, a, m in rows + cached_rows + training_rows],
    }


def _measured(run: Callable[[], object]) -> int:
    """The FLOPs torch's FlopCounterMode counts while `run()` runs."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def _inference_rows(model, shape: ModelShape, prompt, ids, new_tokens: int) -> list[tuple[str, int, int]]:
    """(what, analytic, measured) of a prefill of `prompt`, a greedy generation after it, and a forward of `ids`."""
    prompt_tokens, train_tokens = prompt.shape[1], ids.shape[1]
    model.eval()
    with torch.no_grad():
        return [
            ("prefill", prefill_flops(shape, prompt_tokens),
             _measured(lambda: model(input_ids=prompt, logits_to_keep=1))),
            ("generation", generation_flops(shape, prompt_tokens, new_tokens), _measured(lambda: model.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, pad_token_id=0))),
            ("forward", forward_flops(shape, train_tokens), _measured(lambda: model(input_ids=ids))),
        ]


def _cached_prefix_rows(model, shape: ModelShape, prompt: list[int], tail: list[int],
                        new_tokens: int) -> tuple[list[tuple[str, int, int]], int]:
    """(what, analytic, measured) of a shared prefix (the first half of `prompt`) prefilled once, and of a greedy
    generation after it, as generation runs them, for a padded batch of two: `prompt` + `tail` and the prefix +
    `tail`; and the prefix's length."""
    cached = max(1, len(prompt) // 2)
    batch = [prompt + tail, prompt[:cached] + tail]
    width = max(len(row) for row in batch)
    prefixes = []
    model.eval()
    with torch.no_grad():
        measured_prefix = _measured(lambda: prefixes.append(SharedPrefix(model, prompt[:cached])))
        measured_batch = _measured(lambda: model.generate(
            **batch_inputs(batch, 0, model.device, prefixes[0]), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, pad_token_id=0))
    return [
        ("prefix", prefix_flops(shape, cached), measured_prefix),
        ("after prefix", generation_flops(shape, width, new_tokens, batch=len(batch), cached=cached), measured_batch),
    ], cached


def _training_rows(model, shape: ModelShape, ids, reply: int, lora_rank: int, targets: tuple[str, ...],
                   gradient_checkpointing: bool) -> tuple[list[tuple[str, int, int]], object]:
    """(what, analytic, measured) of a full and a LoRA training step on `ids` as `finprog train` runs one (loss on
    the last `reply` tokens, `training.reply_loss`), and the model with LoRA unloaded."""
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "position_ids": torch.arange(ids.shape[1], device=ids.device)[None], "labels": ids[:, -reply:]}

    def step(net) -> None:
        reply_loss(net, inputs).backward()
        net.zero_grad(set_to_none=True)

    def analytic(method: str) -> int:
        return training_step_flops(shape, ids.shape[1], method=method, lora_rank=lora_rank, targets=targets,
                                   gradient_checkpointing=gradient_checkpointing, logits=reply + 1)

    if gradient_checkpointing:  # HF's own switch, which also makes the embedding output require grad
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    rows = [("full step", analytic("full"), _measured(lambda: step(model)))]
    model.disable_input_require_grads()  # PEFT registers its own hook when checkpointing is on
    lora = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                            target_modules=list(targets), task_type="CAUSAL_LM"))
    rows.append(("lora step", analytic("lora"), _measured(lambda: step(lora))))
    model = lora.unload()
    if gradient_checkpointing:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        model.disable_input_require_grads()
    return rows, model


def format_check(result: dict) -> str:
    """`check` as a table: analytic vs measured FLOPs and the relative error."""
    lines = [f"{result['model']} ({result['model_type']}): prompt {result['prompt_tokens']} tokens + "
             f"{result['new_tokens']} new; a {result['prefix_tokens']}-token prefix cached, then 2 prompts after it; "
             f"training on {result['train_tokens']} tokens, "
             f"LoRA r={result['lora_rank']} on {','.join(result['lora_targets'])}"
             + (", gradient checkpointing" if result["gradient_checkpointing"] else ""),
             f"  {'':12} {'analytic':>12} {'measured':>12} {'rel. error':>10}"]
    lines += [f"  {r['what']:12} {r['analytic']:12.5g} {r['measured']:12.5g} {r['rel_error']:+10.4%}"
              for r in result["rows"]]
    return "\n".join(lines)
