"""Pairs of runs on the same questions, question by question: how many each run gets right that the other does not,
and the exact McNemar test of whether that split could be chance.

    python evals/paired.py BASELINE RUN [BASELINE RUN ...]

evals/paired_minilm.txt is, with R=evals/runs/context-dev, A=$R/qwen2.5-coder-1.5b_lora_cosine80,
B=$R/qwen2.5-coder-0.5b_lora_cosine240 and C=$R/qwen2.5-coder-0.5b_retrieved5-1shot-all2077:

    python evals/paired.py ${A}_retrieved5-as-trained ${A}_retrieved5-minilm-as-trained \
        ${A}_retrieved5-as-trained_first100 ${A}_retrieved5-minilm-as-trained_first100 \
        ${B}_retrieved5-as-trained_first100 ${B}_retrieved5-minilm-as-trained_first100 \
        ${C}_first100 ${C}-minilm_first100 \
        ${A}_retrieved5-as-trained_first100 ${A}_retrieved10-as-trained_first100 \
        ${A}_retrieved5-as-trained_first100 ${A}_gold-as-trained_first100 > evals/paired_minilm.txt

and evals/paired_finqa.txt, FinQA's released retriever (evals/ranker_finqa.py) against the linear ranker:

    python evals/paired.py ${A}_retrieved5-as-trained ${A}_retrieved5-finqa-as-trained \
        ${B}_retrieved5-as-trained ${B}_retrieved5-finqa-as-trained \
        ${B}_retrieved5-as-trained_first100 ${B}_retrieved5-finqa-as-trained_first100 \
        ${A}_retrieved10-as-trained_first100 ${A}_retrieved5-finqa-as-trained > evals/paired_finqa.txt

Each RUN is compared with the BASELINE before it over the questions both answered (exact
match). The p-value is two-sided: the chance that a fair coin splits the questions only
one run got right at least this unevenly.

Run from the repository root.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from finprog.provenance import header
from finprog.runs import PREDICTIONS, read_rows


def exact_by_id(run: Path) -> dict[str, bool]:
    return {row["id"]: bool(row["exact"]) for row in read_rows(run / PREDICTIONS)}


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(only_a + only_b, 1/2) test of the smaller count."""
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="BASELINE RUN pairs")
    args = parser.parse_args()
    if len(args.runs) % 2:
        parser.error("runs come in pairs: BASELINE RUN [BASELINE RUN ...]")
    print(header())
    print("exact match, question by question, over the questions both runs answered\n")
    for baseline, run in zip(args.runs[::2], args.runs[1::2]):
        base, other = exact_by_id(baseline), exact_by_id(run)
        pairs = [(base[i], other[i]) for i in base.keys() & other.keys()]
        only_base, only_run = pairs.count((True, False)), pairs.count((False, True))
        print(f"{run.parent.name}/{run.name} against {baseline.name}: {len(pairs)} questions, "
              f"{sum(b for b, _ in pairs)} against {sum(r for _, r in pairs)} right; both {pairs.count((True, True))}, "
              f"baseline only {only_base}, run only {only_run}, neither {pairs.count((False, False))}; "
              f"McNemar p = {mcnemar_p(only_base, only_run):.2g}")


if __name__ == "__main__":
    main()
