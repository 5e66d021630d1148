"""QLoRA against LoRA on this CPU: seconds per training step of the same run, side by side.

Both runs train qwen2.5-coder-0.5b (rank 16, all linear layers, batch 4, retrieved context,
train_2077) for the same steps with no evaluation; QLoRA's base is 4-bit NF4
(bitsandbytes), LoRA's is bf16 where the CPU computes it natively. The first step (warm-up)
is included in both.

    python evals/bench/qlora.py > evals/bench/qlora.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa, with the CPU to itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from finprog.provenance import header
from finprog.runs import RUN, RunRecord
from finprog.training import TrainOptions, train

MODEL = "qwen2.5-coder-0.5b"
STEPS = 4


def seconds_per_step(method: str) -> tuple[float, float]:
    """(seconds per step, training FLOPs per step) of a STEPS-step run of `method`."""
    options = TrainOptions(model=MODEL, method=method, train="train_2077", eval="dev_200", eval_limit=1,
                           eval_at_start=False, max_steps=STEPS, lora_r=16, lora_targets="all-linear")
    with tempfile.TemporaryDirectory() as folder:
        train(options, Path(folder) / "run", progress=False)
        record = RunRecord.load(Path(folder) / "run" / RUN).data
    return record["timing"]["seconds_per_step"], record["flops"]["training_total"] / record["steps"]


def main() -> None:
    print(header())
    print(f"{MODEL}, rank 16, all linear layers, batch 4, {STEPS} steps each (warm-up step included)\n")
    results = {method: seconds_per_step(method) for method in ("lora", "qlora")}
    for method, (seconds, flops) in results.items():
        print(f"{method:<6}{seconds:>8.1f} s per step{flops:>12.3g} training FLOPs per step")
    print(f"\nqlora / lora: {results['qlora'][0] / results['lora'][0]:.2f}x the time per step")


if __name__ == "__main__":
    main()
