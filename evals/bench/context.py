"""Seconds per question of program mode by prompt context, each variant alone, side by side in one run.

The context-dev study (evals/studies/context-dev) measures accuracy, tokens and FLOPs of each
context on dev_200, but its timings are not fit for comparison when other jobs share the cores. This times the
variants one after the other on the same first questions of dev_200, with the default
model and decoding, and prints each one's time against the page's. The variants are three
of the context-dev study's cells, under the same names.

    python evals/bench/context.py --limit 10 > evals/bench/context.txt
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from finprog.provenance import header
from finprog.solve import DEFAULT_MODEL, SolveOptions, solve

VARIANTS = {
    "page-4shot": dict(context="page", shots=4, exemplars="train_100"),
    "retrieved5-1shot-all2077": dict(context="retrieved", top_k=5, shots=1, exemplars="train_2077"),
    "gold-4shot": dict(context="gold", shots=4, exemplars="train_100"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    print(header())
    print(f"{args.model}, program mode, constrained, first {args.limit} questions of dev_200, each variant alone")
    print(f"{'variant':<40}{'prompt tok/q':>13}{'GFLOPs/q':>10}{'s/q':>8}{'vs first':>10}")
    first = None
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as folder:
            options = SolveOptions(model=args.model, data="dev_200", limit=args.limit, mode="program",
                                   constrained=True, **VARIANTS[variant])
            record = solve(options, Path(folder), progress=False)
        seconds = record["timing"]["seconds_per_example"]
        first = first or seconds
        print(f"{variant:<40}{record['metrics']['prompt_tokens_per_example']:>13.0f}"
              f"{record['flops']['inference_per_example'] / 1e9:>10.0f}{seconds:>8.2f}{seconds / first:>9.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
