"""Training steps with bare prompts against instructed ones, side by side: FLOPs and seconds per step.

The same LoRA recipe as the train-2077 study's 240-step run (qwen2.5-coder-0.5b, rank 16 on
every linear layer, bf16, batches of 4 in micro-batches of 1, the same batches in the same
order), run for a few steps with each prompt style, alternating (instructed, bare,
instructed, bare), each run a `finprog train` of its own; the evaluation each run ends with
is one question, and its seconds are not counted. Prints each run's training FLOPs and
seconds per step, the medians per style and their ratios.

    python evals/bench/bare_prompts.py --steps 4      # writes evals/bench/bare_prompts.txt

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa, with the CPU to itself.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from finprog.provenance import header
from finprog.training import TrainOptions, train

HERE = Path(__file__).resolve().parent
RECIPE = dict(model="qwen2.5-coder-0.5b", train=["train_2077"], eval="dev_200", method="lora", lora_r=16,
              lora_targets="all-linear", dtype="bf16", micro_batch_size=1, warmup_steps=10, lr_schedule="cosine",
              eval_at_start=False, eval_limit=1)
STYLES = ("instructed", "bare")
RECIPE_BATCH = TrainOptions(**RECIPE, max_steps=1).batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per style, alternating (default: %(default)s)")
    args = parser.parse_args()
    lines = [header(), "", f"{'run':<16}{'tokens/seq':>15}{'FLOPs/step':>14}{'s/step':>9}"]
    measured = {style: [] for style in STYLES}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for style in STYLES:
                record = train(TrainOptions(**RECIPE, prompt=style, max_steps=args.steps),
                               Path(scratch) / f"{style}-{round_}", progress=False)
                per_step = record["flops"]["training_total"] / record["steps"]
                tokens = record["tokens"] / (record["steps"] * RECIPE_BATCH)
                measured[style].append((per_step, record["timing"]["seconds_per_step"]))
                lines.append(f"{style}-{round_:<6}{tokens:>15,.0f}{per_step:>14.3e}"
                             f"{record['timing']['seconds_per_step']:>9.2f}")
                print(lines[-1], flush=True)
    medians = {style: [statistics.median(values) for values in zip(*runs)] for style, runs in measured.items()}
    (flops_i, seconds_i), (flops_b, seconds_b) = medians["instructed"], medians["bare"]
    lines += ["", f"median per step, instructed: {flops_i:.3e} FLOPs, {seconds_i:.2f} s; "
                  f"bare: {flops_b:.3e} FLOPs, {seconds_b:.2f} s",
              f"bare / instructed: FLOPs {flops_b / flops_i:.3f} ({1 - flops_b / flops_i:.1%} fewer), "
              f"seconds {seconds_b / seconds_i:.3f} ({1 - seconds_b / seconds_i:.1%} less)",
              f"(each run: {args.steps} steps of {RECIPE_BATCH} sequences, the same batches for both styles)"]
    text = "\n".join(lines) + "\n"
    (HERE / "bare_prompts.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
