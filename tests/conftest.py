"""Shared fixtures: tiny random causal LMs and a byte-level tokenizer, built in memory (no hub)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tests' models are tiny: one thread beats several (thread start-up dominates), most of
# all on a busy machine (seen on a loaded 2-core machine: under a minute instead of about four).
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>"]
TINY_MERGES = [("Ċ", "Ċ"), ("2", "Ċ"), ("t", "h"), ("th", "e")]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer: every byte is a token, plus a few merges (including "2\\n").

    It adds <bos> in front of every text, pads with <pad> on the left, ends with <eos>,
    and has a small chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(TINY_SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    for left, right in TINY_MERGES:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=TINY_MERGES))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", padding_side="left"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(architecture: str, tokenizer, **sizes):
    """A randomly initialised causal LM ("llama" or "qwen2"), fp32, eval mode, seeded.

    2 layers of width 64 unless `sizes` (config fields such as hidden_size) say otherwise.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_class, model_class = classes[architecture]
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=8192)  # room for few-shot prompts of a byte-level tokenizer
    config = config_class(
        **{**shape, **sizes},
        vocab_size=len(tokenizer),
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=architecture == "llama",
    )
    torch.manual_seed(0)
    return model_class(config).eval()


@pytest.fixture
def one_thread():
    """Tiny tensors: on a busy 2-core machine, torch's thread synchronisation costs far more than the work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_tokenizer():
    """A fresh tiny tokenizer (tests may change it)."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama():
    """A tiny random LlamaForCausalLM matching `tiny_tokenizer` (do not train or modify it)."""
    return build_tiny_model("llama", build_tiny_tokenizer())


@pytest.fixture(scope="session")
def tiny_qwen2():
    """A tiny random Qwen2ForCausalLM matching `tiny_tokenizer` (do not train or modify it)."""
    return build_tiny_model("qwen2", build_tiny_tokenizer())


@pytest.fixture
def fresh_tiny_llama(tiny_tokenizer):
    """A tiny random LlamaForCausalLM of its own, for tests that change the model."""
    return build_tiny_model("llama", tiny_tokenizer)


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request):
    """Each tiny architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


def save_tiny_checkpoint(folder: Path, architecture: str) -> str:
    """A tiny random model and its tokenizer saved as an ordinary checkpoint folder (loadable by `--model`)."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(architecture, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory) -> str:
    """A tiny random Llama checkpoint folder."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_checkpoint_dir(tmp_path_factory) -> str:
    """A tiny random Qwen2 checkpoint folder: a second, different model (for cascades)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2-checkpoint"), "qwen2")


@pytest.fixture(scope="session")
def demo_split(tmp_path_factory) -> Path:
    """A folder with the demo sample split in two: train.json (8 records) and eval.json (5), no shared ids."""
    folder = tmp_path_factory.mktemp("demo-split")
    records = json.loads((Path(__file__).resolve().parents[1] / "data" / "demo.json").read_text())
    (folder / "train.json").write_text(json.dumps(records[:8]))
    (folder / "eval.json").write_text(json.dumps(records[8:]))
    return folder


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test where a model loads: bad input is refused before."""
    from finprog import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
