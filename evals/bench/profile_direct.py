"""Where direct mode's time goes: prefill against decoding, and the prefill's operations.

Generates the direct answers of train3.json's 22 records as `finprog solve --mode direct`
does by default (bf16, batch 1), then runs the same prompts' prefill alone, first timed,
then under the torch profiler. Matrix-product GFLOP/s come from the profiler's FLOP
counts; attention GFLOP/s from flops.py's attention count (Q K^T and P V over every key),
halved because the flash kernel skips the causal mask's upper half.

    python evals/bench/profile_direct.py [--model qwen2.5-coder-0.5b] > evals/bench/profile_direct.txt
"""

from __future__ import annotations

import argparse
import time

from finprog import flops, prompts
from finprog.data import load_finqa, resolve_data
from finprog.provenance import header

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")
ATTENTION = "aten::_scaled_dot_product_flash_attention_for_cpu"


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from finprog import generation
    from finprog.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    args = parser.parse_args()
    examples = load_finqa(resolve_data("train3")[0])
    loaded = load_model(args.model, dtype="bf16")
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = [prompts.apply_chat_template(tokenizer, prompts.direct_prompt(e)) for e in examples]
    ids = [tokenizer(t, add_special_tokens=False, return_tensors="pt")["input_ids"] for t in texts]
    lengths = [i.shape[1] for i in ids]

    start = time.perf_counter()
    completions = generation.generate(model, tokenizer, texts, batch_size=1, add_special_tokens=False)
    generating = time.perf_counter() - start

    def prefill():
        with torch.no_grad():
            for prompt in ids:
                model(prompt, logits_to_keep=1)

    start = time.perf_counter()
    prefill()
    prefilling = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as profiler:
        prefill()
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul_us = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    matmul_flops = sum(e.flops for e in events if e.key in MATMULS)
    attention_us = sum(e.self_cpu_time_total for e in events if e.key == ATTENTION)
    shape = flops.ModelShape.from_config(model.config.to_dict())
    attention_flops = sum(2 * 2 * shape.heads * shape.head_dim * t * shape.keys(0, t) / 2 for t in lengths)

    print(header())
    print(f"model {args.model} (bf16), {len(ids)} direct prompts of train3.json, "
          f"{sum(lengths) / len(lengths):.0f} tokens on average (max {max(lengths)}), batch 1")
    print(f"generation (finprog defaults): {generating:.1f} s, {sum(c.new_tokens for c in completions)} new tokens")
    print(f"prefill alone: {prefilling:.1f} s = {prefilling / generating:.0%} of generation, "
          f"{sum(lengths) / prefilling:.0f} prompt tokens/s")
    print(f"prefill under the profiler: {total / 1e6:.1f} s of operator time")
    print(f"  matrix products: {matmul_us / total:.0%}, {matmul_flops / matmul_us / 1e3:.0f} GFLOP/s")
    print(f"  flash attention: {attention_us / total:.0%}, {attention_flops / attention_us / 1e3:.0f} GFLOP/s (causal)")
    print(f"  everything else: {1 - (matmul_us + attention_us) / total:.0%}")


if __name__ == "__main__":
    main()
