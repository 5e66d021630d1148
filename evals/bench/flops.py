"""Analytic FLOPs against torch's FlopCounterMode on the offline zoo; achieved FLOP/s against the matmul peak.

    python evals/bench/flops.py [MODEL ...] > evals/bench/flops.txt   # default: the four zoo models of MODELS.md

For each model: `flopcheck.check` (prefill and generation of 576 + 8 tokens, longer than
gemma3's window of 512; a shared prefix of 288 tokens prefilled once and a padded batch of
two generated after it; forward, full and LoRA step on 128 tokens; eager attention),
then the wall time of a 512-token prefill (fp32 with the model's default and with eager
attention, bf16 with the default) and of a LoRA step (r=8 on q_proj,v_proj, 512 tokens,
fp32). Achieved FLOP/s is the analytic count (dense attention, as `finprog.flops`
counts it) over the best wall time, compared with the best torch.matmul rate on
4096x4096 fp32 and bf16 matrices measured at the start and the end of the run. Timings
are of this machine as it was at the time (the load average is printed); the counts
do not depend on it.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from finprog import flopcheck, flops  # noqa: E402
from finprog.provenance import header  # noqa: E402

ZOO = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
CHECK_PROMPT, CHECK_NEW, CHECK_TRAIN = 576, 8, 128  # the prompt is longer than gemma3's window of 512
TIMED_TOKENS = 512
MATMUL_SIZE = 4096


def best_seconds(run, repeats: int) -> float:
    """Best wall time of `repeats` calls, after one warm-up call."""
    run()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def matmul_peak(dtype: torch.dtype, n: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """Best FLOP/s of torch.matmul on two n x n matrices of `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_seconds(lambda: torch.matmul(a, b), repeats)


def timings(model, shape: flops.ModelShape) -> list[tuple[str, torch.dtype, int, float]]:
    """(what, dtype, analytic FLOPs, best seconds) of 512-token prefills and a LoRA step."""
    ids = torch.randint(shape.vocab, (1, TIMED_TOKENS), generator=torch.Generator().manual_seed(0))
    prefill = flops.prefill_flops(shape, TIMED_TOKENS)
    default = model.config._attn_implementation
    rows = []

    def time_prefill(what, dtype, attention):
        model.set_attn_implementation(attention)
        with torch.no_grad():
            seconds = best_seconds(lambda: model(input_ids=ids, logits_to_keep=1), repeats=3)
        rows.append((what, dtype, prefill, seconds))

    model.eval()
    time_prefill(f"prefill fp32 {default}", torch.float32, default)
    time_prefill("prefill fp32 eager", torch.float32, "eager")
    model.set_attn_implementation(default)

    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=list(flops.LORA_TARGETS), task_type="CAUSAL_LM"))
    lora.train()

    def step():
        lora(input_ids=ids, labels=ids).loss.backward()
        lora.zero_grad(set_to_none=True)

    seconds = best_seconds(step, repeats=2)
    rows.append((f"LoRA step fp32 {default}", torch.float32,
                 flops.training_step_flops(shape, TIMED_TOKENS, method="lora"), seconds))
    model = lora.unload()
    model.to(torch.bfloat16)
    time_prefill(f"prefill bf16 {default}", torch.bfloat16, default)
    return rows


def main() -> None:
    from finprog.models import load_model

    names = sys.argv[1:] or ZOO
    print(header())
    print(f"torch threads: {torch.get_num_threads()}; load average at start: {os.getloadavg()[0]:.2f}")
    peaks = {dtype: matmul_peak(dtype) for dtype in (torch.float32, torch.bfloat16)}
    achieved = []
    for name in names:
        model = load_model(name, dtype="fp32").model
        shape = flops.ModelShape.from_config(model.config.to_dict())
        print()
        print(flops.format_summary(flops.summary(shape, prompt_tokens=TIMED_TOKENS, new_tokens=16, method="lora")))
        result = flopcheck.check(model, CHECK_PROMPT, CHECK_NEW, CHECK_TRAIN)
        print(flopcheck.format_check({**result, "model": name}), flush=True)
        attention = 2 * shape.heads * shape.head_dim * TIMED_TOKENS * shape.keys(0, TIMED_TOKENS)
        share = attention / flops.prefill_flops(shape, TIMED_TOKENS)
        achieved += [(name, share, *row) for row in timings(model, shape)]
        del model
    for dtype in peaks:  # the best of the start and the end: other processes only ever slow it down
        peaks[dtype] = max(peaks[dtype], matmul_peak(dtype))
    print(f"\nmatmul peak ({MATMUL_SIZE}x{MATMUL_SIZE}, best of 10 at start and end): "
          f"fp32 {peaks[torch.float32] / 1e9:.1f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.1f} GFLOP/s")
    print(f"achieved on {TIMED_TOKENS} tokens (analytic FLOPs, dense attention; best of 3 prefills, of 2 LoRA steps)")
    print(f"  {'model':20} {'':24} {'attention':>9} {'FLOPs':>10} {'seconds':>8} {'GFLOP/s':>8} {'of peak':>8}")
    for name, share, what, dtype, count, seconds in achieved:
        print(f"  {name:20} {what:24} {share:9.1%} {count:10.4g} {seconds:8.2f} {count / seconds / 1e9:8.1f} "
              f"{count / seconds / peaks[dtype]:8.1%}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes slow the timings, not the counts)")


if __name__ == "__main__":
    main()
