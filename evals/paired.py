"""Pairs of runs on the same questions, question by question: how many each run gets right that the other does not,
and the exact McNemar test of whether that split could be chance (`finprog compare RUN RUN` prints the same test
for one pair).

    python evals/paired.py BASELINE RUN [BASELINE RUN ...]

evals/paired_minilm.txt is, with R=evals/studies/context-dev/runs, A=$R/qwen2.5-coder-1.5b_lora_cosine80,
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
from pathlib import Path

from finprog.provenance import header
from finprog.runs import PREDICTIONS, read_rows
from finprog.stats import paired


def exact_by_id(run: Path) -> dict[str, bool]:
    return {row["id"]: bool(row["exact"]) for row in read_rows(run / PREDICTIONS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="BASELINE RUN pairs")
    args = parser.parse_args()
    if len(args.runs) % 2:
        parser.error("runs come in pairs: BASELINE RUN [BASELINE RUN ...]")
    print(header())
    print("exact match, question by question, over the questions both runs answered\n")
    for baseline, run in zip(args.runs[::2], args.runs[1::2]):
        test = paired(exact_by_id(baseline), exact_by_id(run))
        print(f"{run.parent.name}/{run.name} against {baseline.name}: {test.n} questions, "
              f"{test.both + test.only_a} against {test.both + test.only_b} right; both {test.both}, "
              f"baseline only {test.only_a}, run only {test.only_b}, neither {test.neither}; "
              f"McNemar p = {test.p:.2g}")


if __name__ == "__main__":
    main()
