"""What retrieval recall buys: each run's exact accuracy on questions whose shown facts hold every gold fact, and
on those where the ranker missed one.

    S=evals/studies/test-retrieved/runs
    python evals/retrieval/recall_accuracy.py evals/studies/train-2077/runs/*_test_* $S/*_program-constrained \
        $S/*_all2077 evals/studies/context-dev/runs/*[0-9]-as-trained_* > evals/retrieval/recall_accuracy.txt
    python evals/retrieval/recall_accuracy.py --groups-at 3 \
        evals/studies/context-dev/runs/*_retrieved*[0-9]-as-trained_* > evals/retrieval/recall_accuracy_at3.txt
    python evals/retrieval/recall_accuracy.py --groups-at 5 \
        evals/studies/context-dev/runs/qwen2.5-coder-1.5b_*_retrieved*[0-9]-as-trained_* \
        > evals/retrieval/recall_accuracy_at5.txt

For every run with `--context retrieved`, the run's own ranker and k are applied again to
each question's page (ranking is deterministic), and its rows are split by whether
every `gold_inds` fact was among the kept facts, and if not, whether the kept facts still
wrote every number and row label of the gold program (`finprog.operands.shows_operands`);
questions without gold facts are counted apart. Runs with another context are skipped
(and the globs above leave out the runs ranked by evals/retrieval/ranker_minilm.py's
cross-encoder, which is not a built-in ranker). A run is named by the grid or study folder it
lies in and its own folder.
`--groups-at K` groups by the top K facts instead, the same questions in every run, so
that runs of different k can be compared group by group.

Run from the repository root with FINPROG_DATA_DIR=../shared/finqa.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finprog import retrieval
from finprog.data import load_finqa, resolve_data
from finprog.operands import shows_operands
from finprog.provenance import header
from finprog.runs import PREDICTIONS, RunRecord, read_rows

GROUPS = ("all gold facts shown", "operands shown, a fact missed", "an operand missed", "no gold facts")


def group(example, kept: list) -> str:
    if not example.gold_inds:
        return GROUPS[3]
    if set(example.gold_inds) <= {fact.key for fact in kept}:
        return GROUPS[0]
    return GROUPS[1] if shows_operands(example, retrieval.with_facts(example, kept)) else GROUPS[2]


def split(run: Path, groups_at: int | None = None) -> dict[str, list[bool]] | None:
    """Exact-match results of a retrieved-context run, by whether its facts (or the top `groups_at`) held every
    gold fact."""
    config = RunRecord.load(run).validate().data["config"]
    if config.get("context") != "retrieved":
        return None
    examples = {e.id: e for e in load_finqa(resolve_data(config.get("data") or config["eval"])[0])}
    rank = retrieval.ranker(config["ranker"])
    result: dict[str, list[bool]] = {name: [] for name in GROUPS}
    for row in read_rows(run / PREDICTIONS):
        example = examples[row["id"]]
        kept = retrieval.top_facts(example, groups_at or config["top_k"], rank)
        result[group(example, kept)].append(bool(row["exact"]))
    return result


def name(run: Path) -> str:
    """`GRID/RUN` for a run folder under evals/runs/GRID/, `STUDY/RUN` for one under evals/studies/STUDY/runs/."""
    owner = run.parent.parent if run.parent.name == "runs" else run.parent
    return f"{owner.name}/{run.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--groups-at", type=int, metavar="K",
                        help="group every run's questions by the top K facts instead of the run's own k, so runs of "
                             "different k are compared on the same questions")
    args = parser.parse_args()
    print(header())
    facts = f"the top {args.groups_at} facts" if args.groups_at else "the retrieved facts"
    print(f"exact EmAcc by whether {facts} held every gold fact (right / questions)\n")
    print(f"{'run':<80}" + "".join(f"{name:>31}" for name in GROUPS))
    for run in args.runs:
        result = split(run, args.groups_at)
        if result is None:
            continue
        cells = [f"{sum(v) / len(v):.0%} ({sum(v)}/{len(v)})" if v else "-" for v in result.values()]
        print(f"{name(run):<80}" + "".join(f"{cell:>31}" for cell in cells))


if __name__ == "__main__":
    main()
