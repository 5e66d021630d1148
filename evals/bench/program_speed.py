"""Seconds per question of few-shot program mode for each zoo model, with `finprog solve`'s defaults.

The default model of `finprog solve` must run at no more than about 10 s per question on
a 2-core CPU; the grid's own timings are not fit for that, since its jobs share the cores.
This times each model alone, one after the other, on the same first questions of dev_200;
with --constrained, each model also with grammar-constrained decoding, side by side.

    python evals/bench/program_speed.py --constrained --limit 6 > evals/bench/program_speed.txt
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from finprog.provenance import header
from finprog.solve import SolveOptions, solve

ZOO = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--exemplars", default="train_100")
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    parser.add_argument("--constrained", action="store_true", help="also time each model constrained")
    args = parser.parse_args()
    print(header())
    print(f"program mode, 4 similar exemplars from {args.exemplars}, first {args.limit} questions of dev_200, "
          "defaults otherwise (bf16, batch 1, all cores)")
    print(f"{'model':<22}{'decoding':>13}{'prompt tok/q':>14}{'new tok/q':>12}{'s/q':>8}{'parse failures':>16}")
    for model in args.models:
        for constrained in (False, True) if args.constrained else (False,):
            with tempfile.TemporaryDirectory() as folder:
                options = SolveOptions(model=model, data="dev_200", limit=args.limit, exemplars=args.exemplars,
                                       constrained=constrained)
                record = solve(options, Path(folder), progress=False)
            m = record["metrics"]
            failures = sum(m["outcomes"].get(kind, 0) for kind in ("no_program", "parse_error"))
            print(f"{model:<22}{'constrained' if constrained else 'free':>13}{m['prompt_tokens_per_example']:>14.0f}"
                  f"{m['new_tokens_per_example']:>12.1f}{record['timing']['seconds_per_example']:>8.2f}"
                  f"{failures:>16}", flush=True)


if __name__ == "__main__":
    main()
