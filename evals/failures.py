"""Why program-mode runs fail: each wrong answer of a run sorted into a kind of mistake, with examples.

    python evals/failures.py evals/studies/test/runs/*_program* > evals/failures.txt

For every example a run got wrong, the predicted program is compared with the gold one:
- no program / parse error / execution error: the run's own outcome;
- percent scale: the value is the gold answer times or divided by 100 (a right
  computation with the percent written the other way; FinQA's exact match rejects it);
- right operations, wrong numbers: the same sequence of operations as the gold program;
- numbers of the gold program, wrong operations: every gold literal appears, the steps differ;
- a number not in the report: a literal that occurs nowhere in the question, text or table;
- other wrong program: none of the above.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from finprog import dsl
from finprog.data import load_finqa
from finprog.operands import example_numbers
from finprog.provenance import header
from finprog.runs import PREDICTIONS, RunRecord, read_rows

KINDS = ("no program", "parse error", "execution error", "percent scale", "right operations, wrong numbers",
         "numbers of the gold program, wrong operations", "a number not in the report", "other wrong program")


def literals(program: dsl.Program) -> list[str]:
    return [arg.text for step in program.steps for arg in (step.first, step.second) if isinstance(arg, dsl.Literal)]


def mistake(row: dict, example) -> str:
    """The kind of mistake behind one wrong program-mode row (see the module docstring)."""
    if row["outcome"] in ("no_program", "parse_error", "execution_error"):
        return row["outcome"].replace("_", " ")
    value, gold = row["value"], row["gold"]
    if isinstance(value, float) and isinstance(gold, float) and gold and any(
            abs(value * factor - gold) <= 1e-4 * abs(gold) for factor in (100, 0.01)):
        return "percent scale"
    predicted, expected = dsl.parse(row["program"]), dsl.parse(example.program)
    if [s.op for s in predicted.steps] == [s.op for s in expected.steps]:
        return "right operations, wrong numbers"
    numbers = set(literals(predicted))
    if set(literals(expected)) <= numbers:
        return "numbers of the gold program, wrong operations"
    known = {n.replace(",", "") for n in example_numbers(example)}
    if any(text.replace(",", "").removesuffix("%") not in known and not text.startswith("const_") for text in numbers):
        return "a number not in the report"
    return "other wrong program"


def analyse(run_dir: Path) -> str:
    record = RunRecord.load(run_dir).validate().data
    examples = {e.id: e for e in load_finqa(Path(record["config"]["data"]))}
    rows = [row for row in read_rows(run_dir / PREDICTIONS) if not row["exact"]]
    kinds = Counter()
    shown: dict[str, list[str]] = {}
    for row in rows:
        kind = mistake(row, examples[row["id"]])
        kinds[kind] += 1
        if len(shown.setdefault(kind, [])) < 2:
            shown[kind].append(f"    {row['id']}: gold `{examples[row['id']].program}` = {row['gold']}; "
                               f"wrote `{row['program'] or row['completion'][:80].strip()}` = {row['value']}")
    n = record["metrics"]["n"]
    lines = [f"{run_dir.name}: {n - len(rows)} of {n} right (exact), {len(rows)} wrong"]
    for kind in KINDS:
        if kinds[kind]:
            lines.append(f"  {kinds[kind]:>3}  {kind}")
            lines += shown[kind]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="program-mode run folders")
    args = parser.parse_args()
    print(header())
    print("\n\n".join(analyse(run) for run in args.runs))


if __name__ == "__main__":
    main()
