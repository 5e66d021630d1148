"""Run a grid of zoo models x techniques with `finprog solve`, resumably, and tabulate the results.

Each cell is an ordinary run folder under evals/runs/GRID/ (predictions.jsonl + run.json),
so an interrupted grid continues where it stopped, and `finprog report evals/runs/GRID`
and `finprog compare` read the same folders. The table goes to evals/GRID.md.

    python evals/grid.py direct-dev      # direct answers, the four zoo models, dev_200
    python evals/grid.py program-dev     # few-shot programs, the four zoo models, dev_200
    python evals/grid.py test            # direct, program, program constrained on test_100
    python evals/grid.py test --models smollm2-135m gemma3-270m   # a subset of the models
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from finprog.provenance import header
from finprog.solve import SolveOptions, solve

ZOO = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
TECHNIQUES = {
    "direct": dict(mode="direct"),
    "program": dict(mode="program"),
    "program-constrained": dict(mode="program", constrained=True),
}
GRIDS = {
    "direct-dev": ("dev_200", ["direct"]),
    "program-dev": ("dev_200", ["program"]),
    "test": ("test_100", ["direct", "program", "program-constrained"]),
}
HERE = Path(__file__).resolve().parent


def run_grid(name: str, models: list[str], exemplars: str) -> list[dict]:
    data, techniques = GRIDS[name]
    records = []
    for model in models:
        for technique in techniques:
            out = HERE / "runs" / name / f"{model}_{technique}"
            options = SolveOptions(model=model, data=data, exemplars=exemplars, **TECHNIQUES[technique])
            finished = (out / "run.json").is_file() and json.loads((out / "run.json").read_text())["status"] == "finished"
            if finished:
                records.append(json.loads((out / "run.json").read_text()))
                continue
            print(f"== {model} {technique} on {data}", flush=True)
            records.append(solve(options, out, resume=(out / "predictions.jsonl").exists(), progress=True))
    return records


def table(records: list[dict]) -> str:
    lines = [
        "| model | technique | n | exact | tolerant | program acc. | outcomes | prompt tok/ex | new tok/ex | s/ex | GFLOPs/ex |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, config = r["metrics"], r["config"]
        technique = config["mode"] + (" constrained" if config["constrained"] else "")
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(m["outcomes"].items()))
        program = "-" if m["program_accuracy"] is None else f"{m['program_accuracy']:.1%}"
        lines.append(
            f"| {r['model']['name']} | {technique} | {m['n']} | {m['exact']:.1%} | {m['tolerant']:.1%} | {program} "
            f"| {outcomes} | {m['prompt_tokens_per_example']:.0f} | {m['new_tokens_per_example']:.1f} "
            f"| {r['timing']['seconds_per_example']:.2f} | {r['flops']['inference_per_example'] / 1e9:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", choices=GRIDS)
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    parser.add_argument("--exemplars", default="train_100", help="FinQA file or sample name for few-shot exemplars")
    args = parser.parse_args()
    records = run_grid(args.grid, args.models, args.exemplars)
    command = f"python evals/grid.py {args.grid}" + ("" if args.models == list(ZOO) else f" --models {' '.join(args.models)}")
    text = f"{header()}\n\nGrid `{args.grid}` ({GRIDS[args.grid][0]}), produced by `{command}`.\n\n"
    text += table(records) + "\n"
    (HERE / f"{args.grid}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
