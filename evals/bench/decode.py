"""Time one decode step (one new token) of a zoo model with and without finprog's generation settings.

Side by side in one run, on a direct prompt and a 4-shot program prompt: transformers'
own SDPA attention with bf16 logits; finprog's grouped decode attention
(`generation.grouped_decode_attention`) with bf16 logits; and finprog's default, which
adds fp32 logits (`generation.float32_logits`). A step's time is (time for 1 + N new
tokens - time for 1 new token) / N, the best of three tries; greedy decoding is forced to
run all N steps. Then the attention kernel alone, per layer and step: PyTorch's
`scaled_dot_product_attention` on one query row per head with `enable_gqa` (what
transformers passes at batch 1) against the query heads stacked per key/value head.

    python evals/bench/decode.py [--model qwen2.5-coder-0.5b] [--steps 32] > evals/bench/decode.txt
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

from finprog import flops, prompts
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

SETTINGS = {
    "transformers sdpa, bf16 logits": (),
    "grouped decode attention, bf16 logits": ("grouped",),
    "finprog default (grouped, fp32 logits)": ("grouped", "fp32"),
}


def step_seconds(model, ids, steps: int, tries: int = 3) -> float:
    """Seconds per decode step after the prefill, the best of `tries`."""
    import torch

    def run(new_tokens: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        return time.perf_counter() - start

    return min((run(1 + steps) - run(1)) / steps for _ in range(tries))


def kernel_seconds(shape: flops.ModelShape, keys: int, stacked: bool, calls: int = 200) -> float:
    """Seconds of one decode step's attention in one layer (bf16), the best of three tries."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as attention

    groups = shape.heads // shape.kv_heads
    key = torch.randn(1, shape.kv_heads, keys, shape.head_dim, dtype=torch.bfloat16)
    query = torch.randn(1, shape.kv_heads, groups, shape.head_dim, dtype=torch.bfloat16) if stacked \
        else torch.randn(1, shape.heads, 1, shape.head_dim, dtype=torch.bfloat16)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            attention(query, key, key, enable_gqa=not stacked)
        return (time.perf_counter() - start) / calls

    return min(run() for _ in range(3))


def main() -> None:
    from finprog import generation
    from finprog.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    example = load_finqa(resolve_data("train3")[0])[0]
    exemplars = load_finqa(resolve_data("train_100")[0])[:4]
    loaded = load_model(args.model, dtype="bf16")
    texts = {"direct": prompts.direct_prompt(example), "4-shot program": prompts.program_prompt(example, exemplars)}
    encoded = {name: loaded.tokenizer(prompts.apply_chat_template(loaded.tokenizer, text), add_special_tokens=False,
                                      return_tensors="pt")["input_ids"] for name, text in texts.items()}
    contexts = {"grouped": generation.grouped_decode_attention, "fp32": generation.float32_logits}

    print(header())
    print(f"model {args.model} ({loaded.dtype}), ms per decode step, {args.steps} steps after the prompt")
    print(f"{'':<42}" + "".join(f"{f'{name} ({ids.shape[1]} tokens)':>32}" for name, ids in encoded.items()))
    baseline = {}
    for label, names in SETTINGS.items():
        cells = []
        for name, ids in encoded.items():
            with ExitStack() as stack:
                for context in names:
                    stack.enter_context(contexts[context](loaded.model))
                seconds = step_seconds(loaded.model, ids, args.steps)
            baseline.setdefault(name, seconds)
            cells.append(f"{seconds * 1000:.1f} ms ({baseline[name] / seconds:.2f}x)")
        print(f"{label:<42}" + "".join(f"{cell:>32}" for cell in cells))
    shape = flops.ModelShape.from_config(loaded.model.config.to_dict())
    print(f"attention kernel per layer and step (us), {shape.heads} query heads, {shape.kv_heads} key/value heads")
    for stacked in (False, True):
        label = "stacked per key/value head" if stacked else "one row per head, enable_gqa"
        print(f"{label:<42}" + "".join(
            f"{kernel_seconds(shape, ids.shape[1], stacked) * 1e6:>32.0f}" for ids in encoded.values()))


if __name__ == "__main__":
    main()
