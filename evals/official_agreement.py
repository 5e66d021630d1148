"""Check that `finprog evaluate` agrees with FinQA's official evaluate.py, example by example.

The official script is not shipped with finprog: pass its path (code/evaluate/evaluate.py
of the FinQA repository). For every gold record of the given files the script builds a
battery of predictions (the gold program, equivalent rewrites, and wrong, broken or
truncated variants), scores each with the official `eval_program` / `equal_program`
and with finprog, and prints the accuracies of both and every disagreement.

    python evals/official_agreement.py --official PATH/evaluate.py ../shared/finqa/*_[0-9]*.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import random
from pathlib import Path

from finprog import dsl
from finprog.data import load_finqa
from finprog.evaluation import evaluate_programs
from finprog.provenance import header


def variants(tokens: list[str], table: list[list[str]], rng: random.Random) -> dict[str, list[str]]:
    """Predictions derived from a gold token list (official format, ending in EOF)."""
    body = tokens[:-1]
    steps = [body[i : i + 4] for i in range(0, len(body), 4)]
    out = {"gold": tokens}

    def rebuild(new_steps):
        return [t for step in new_steps for t in step] + ["EOF"]

    out["swap_args"] = rebuild([[s[0], s[2], s[1], s[3]] if not s[0].startswith("table") else s for s in steps])
    op_swap = {"add(": "subtract(", "subtract(": "add(", "multiply(": "divide(", "divide(": "multiply(",
               "table_max(": "table_min(", "table_min(": "table_max(", "table_sum(": "table_average(",
               "table_average(": "table_sum(", "exp(": "multiply(", "greater(": "greater("}
    last = len(steps) - 1
    out["other_op_last_step"] = rebuild(steps[:last] + [[op_swap[steps[last][0]]] + steps[last][1:]])
    out["const_as_number"] = [t.replace("const_", "") if t.startswith("const_") and t != "const_m1" else t for t in tokens]
    numbers = [i for i, t in enumerate(tokens) if t[:1].isdigit()]
    if numbers:
        perturbed = list(tokens)
        i = rng.choice(numbers)
        perturbed[i] = perturbed[i] + "1"
        out["perturbed_number"] = perturbed
        trailing_zero = list(tokens)
        number, percent = trailing_zero[i].rstrip("%"), "%" * trailing_zero[i].endswith("%")
        trailing_zero[i] = number + ("0" if "." in number else ".0") + percent
        out["same_value_other_text"] = trailing_zero
    labels = [row[0] for row in table if row]
    table_steps = [k for k, s in enumerate(steps) if s[0].startswith("table")]
    if table_steps and len(labels) > 1:
        k = table_steps[0]
        other = rng.choice([label for label in labels if label != steps[k][1]])
        out["other_row"] = rebuild(steps[:k] + [[steps[k][0], other, steps[k][2], ")"]] + steps[k + 1 :])
    out["extra_step"] = rebuild(steps + [["add(", f"#{last}", "const_1", ")"]])
    out["forward_reference"] = rebuild([["add(", "#1", "const_1", ")"]] + steps)
    out["truncated"] = tokens[:-3] + ["EOF"]
    out["no_eof"] = tokens[:-1]
    out["garbage"] = ["the", "answer", "is", "42", "EOF"]
    out["percent_rewrite"] = [_as_percent(t) if t.replace(".", "", 1).isdigit() and "." in t else t for t in tokens]
    out["exponent_notation"] = [f"{float(t):e}" if t.replace(".", "", 1).isdigit() else t for t in tokens]
    return out


def _as_percent(number: str) -> str:
    """`0.038` -> `3.8%` (the same value, written as FinQA writes percentages)."""
    return f"{float(number) * 100:.10f}".rstrip("0").rstrip(".") + "%"


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("official_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_scores(official, pred: list[str], record: dict) -> tuple[bool, bool]:
    gold_tokens = official.program_tokenization(record["qa"]["program"])
    with contextlib.redirect_stdout(io.StringIO()):
        invalid, value = official.eval_program(pred, record["table"])
        equal = official.equal_program(gold_tokens, pred)
    executed = invalid == 0 and value == record["qa"]["exe_ans"]
    return executed, bool(equal and executed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="FinQA's code/evaluate/evaluate.py")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    official = load_official(args.official)
    rng = random.Random(0)

    print(header())
    print(f"# finprog vs FinQA's official evaluate.py ({args.official.name}) on {', '.join(p.name for p in args.files)}")
    rows: dict[str, dict] = {}
    disagreements = []
    for path in args.files:
        records = json.loads(path.read_text())
        examples = {e.id: e for e in load_finqa(path)}
        for record in records:
            gold_tokens = official.program_tokenization(record["qa"]["program"])
            for name, pred in variants(gold_tokens, record["table"], rng).items():
                ours = evaluate_programs({record["id"]: _ours(pred)}, [examples[record["id"]]])
                theirs = official_scores(official, pred, record)
                mine = (ours.execution_accuracy == 1.0, ours.program_accuracy == 1.0)
                row = rows.setdefault(name, {"n": 0, "official": [0, 0], "finprog": [0, 0]})
                row["n"] += 1
                for side, scores in (("official", theirs), ("finprog", mine)):
                    row[side][0] += scores[0]
                    row[side][1] += scores[1]
                if mine != theirs:
                    disagreements.append((path.name, record["id"], name, pred, theirs, mine))

    print(f"{'variant':<24}{'n':>6}{'exe official':>14}{'exe finprog':>13}{'prog official':>15}{'prog finprog':>14}")
    for name, row in rows.items():
        n = row["n"]
        print(f"{name:<24}{n:>6}{row['official'][0] / n:>14.4f}{row['finprog'][0] / n:>13.4f}"
              f"{row['official'][1] / n:>15.4f}{row['finprog'][1] / n:>14.4f}")
    total = sum(row["n"] for row in rows.values())
    print(f"\n{total} predictions, {len(disagreements)} per-example disagreements")
    for file, record_id, name, pred, theirs, mine in disagreements:
        print(f"  {file} {record_id} {name}: official exe/prog {theirs}, finprog {mine}: {pred}")


def _ours(tokens: list[str]):
    try:
        return dsl.from_tokens(tokens)
    except dsl.ProgramParseError as error:
        return error


if __name__ == "__main__":
    main()
