"""Full fine-tuning's AdamW step, torch's default CPU implementation against its fused kernel, side by side.

Full fine-tuning of qwen2.5-coder-0.5b keeps every weight in fp32 (bf16 mixed precision,
`training.mixed_precision`), so each step's AdamW update reads and writes about 0.63B
parameters with their gradients and two moments. On a CPU, torch's default AdamW is a
loop of small kernels per tensor; `fused=True` updates each tensor in one kernel. Both
run the same update on the model's own parameter shapes (random gradients, lr 3e-5, the
full curve's rate), alternating (default, fused, default, fused), each after one warm-up
step; the median seconds per step and their ratio are printed, and the largest
difference between the two implementations' updated weights after the same steps.

    python evals/bench/optimizer_step.py > evals/bench/optimizer_step.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa, with the CPU to itself.
"""

from __future__ import annotations

import statistics
import time

import torch

from finprog import models
from finprog.provenance import header

MODEL = "qwen2.5-coder-0.5b"
IMPLEMENTATIONS = {"default": {}, "fused": {"fused": True}}


def seconds_per_step(parameters: list[torch.Tensor], steps: int, **kind) -> tuple[float, list[torch.Tensor]]:
    """The median seconds of `steps` AdamW steps (after one warm-up) and the weights they leave."""
    weights = [p.detach().clone().requires_grad_(True) for p in parameters]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(weights, lr=3e-5, **kind)
    times = []
    for step in range(steps + 1):
        for w in weights:
            w.grad = torch.randn(w.shape, generator=generator) * 1e-3
        started = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]), [w.detach() for w in weights]


def main() -> None:
    loaded = models.load_model(MODEL, dtype="fp32", device="cpu")
    parameters = [p.detach() for p in loaded.model.parameters()]
    del loaded
    count = sum(p.numel() for p in parameters)
    print(f"{header()}\n\nAdamW on {MODEL}'s {count / 1e9:.2f}B fp32 parameters ({len(parameters)} tensors), "
          f"median of 3 steps after a warm-up, alternating\n\n{'implementation':<16}{'s/step':>8}", flush=True)
    measured = {name: [] for name in IMPLEMENTATIONS}
    final = {}
    for _ in range(2):
        for name, kind in IMPLEMENTATIONS.items():
            final.pop(name, None)  # at most one other set of weights in memory: about 15 GB at the peak
            seconds, final[name] = seconds_per_step(parameters, 3, **kind)
            measured[name].append(seconds)
            print(f"{name:<16}{seconds:>8.2f}", flush=True)
    default, fused = (statistics.median(measured[name]) for name in IMPLEMENTATIONS)
    difference = max((a - b).abs().max().item() for a, b in zip(final["default"], final["fused"]))
    print(f"\nmedian: default {default:.2f} s, fused {fused:.2f} s; fused / default {fused / default:.2f}x "
          f"({default - fused:.2f} s less per step)\n"
          f"largest weight difference after the same 4 steps: {difference:.1e}")


if __name__ == "__main__":
    main()
