"""Learning curves of the training runs in evals/runs/train/: CSV, PNG, and a Markdown page with the commands.

Each curve point is one evaluation of `finprog train` (through solve's scoring path) on
the run's eval questions; the dashed line is the same model's few-shot program-mode run
on the same questions (the grid's "program few-shot" cell), so a curve that crosses it
is training that beat prompting.

    python evals/grid.py train      # makes the runs (resumable)
    python evals/curves.py          # writes evals/curves.csv, evals/curves.png, evals/curves.md
"""

from __future__ import annotations

import csv
import json
from dataclasses import fields
from pathlib import Path

from finprog.provenance import header
from finprog.training import TrainOptions

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs" / "train"
FAILURES = ("parse_error", "no_program")
BEFORE_FIELD = {"context": "page"}  # what a run made before an option existed did (otherwise: today's default)
COLUMNS = ("model", "method", "step", "epoch", "tokens", "train_flops", "train_loss", "exact", "tolerant",
           "program_accuracy", "parse_failures", "n", "eval_flops")


def load(kind: str) -> list[dict]:
    records = [json.loads(path.read_text()) for path in sorted(RUNS.glob("*/run.json"))]
    return [r for r in records if r["kind"] == kind and r["status"] == "finished"]


def curve_rows(run: dict) -> list[dict]:
    """One row per evaluation; parse_failures counts completions without a parseable program."""
    n = run["eval_set"]["n"]
    return [{"model": run["model"]["name"], "method": run["config"]["method"], "n": n,
             "parse_failures": sum(point["outcomes"].get(kind, 0) for kind in FAILURES),
             **{key: point[key] for key in COLUMNS if key in point}} for point in run["curve"]]


def baseline(run: dict, solves: list[dict]) -> dict | None:
    """The few-shot solve of the same model on the same questions, if there is one."""
    return next((s for s in solves if s["model"]["name"] == run["model"]["name"]
                 and s["eval_set"]["ids_sha256"] == run["eval_set"]["ids_sha256"]), None)


def command(run: dict) -> str:
    """The `finprog train` command line that makes `run` (options that differ from the defaults)."""
    config, defaults = run["config"], TrainOptions(model="m", train="t", eval="e")
    parts = ["finprog train", f"--model {run['model']['name']}"]
    for field in fields(TrainOptions):
        if not field.init or field.name in ("model", "train", "eval"):
            continue
        value = config.get(field.name, BEFORE_FIELD.get(field.name, getattr(defaults, field.name)))
        if value != getattr(defaults, field.name):
            flag = "--" + field.name.replace("_", "-")
            parts.append(flag if value is True else f"{flag} {value}")
    names = " ".join(Path(path).stem for path in config["train"])
    parts[2:2] = [f"--train {names}", f"--eval {Path(config['eval']).stem}"]
    return " ".join(parts)


def plot(runs: list[dict], solves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy, failures) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        rows = curve_rows(run)
        label = f"{run['model']['name']} {run['config']['method']}"
        x = [row["train_flops"] for row in rows]
        line, = accuracy.plot(x, [100 * row["exact"] for row in rows], marker="o", label=f"{label}: exact")
        accuracy.plot(x, [100 * row["tolerant"] for row in rows], marker="x", linestyle=":", color=line.get_color(),
                      label=f"{label}: tolerant")
        failures.plot(x, [100 * row["parse_failures"] / row["n"] for row in rows], marker="o", color=line.get_color(),
                      label=label)
        few_shot = baseline(run, solves)
        if few_shot:
            accuracy.axhline(100 * few_shot["metrics"]["exact"], color=line.get_color(), linestyle="--",
                             label=f"{run['model']['name']} {few_shot['config']['shots']}-shot, no training: exact")
    accuracy.set(xlabel="cumulative training FLOPs", ylabel="EmAcc on the eval questions (%)",
                 title="Accuracy while training")
    failures.set(xlabel="cumulative training FLOPs", ylabel="completions without a parseable program (%)",
                 title="Parse failures while training", ylim=(0, 105))
    for axis in (accuracy, failures):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    runs, solves = load("train"), load("solve")
    rows = [row for run in runs for row in curve_rows(run)]
    with (HERE / "curves.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot(runs, solves, HERE / "curves.png")
    lines = [header(), "", "Learning curves made by `python evals/grid.py train`, drawn by `python evals/curves.py`",
             "(data: [curves.csv](curves.csv); plot: [curves.png](curves.png)).", ""]
    for run in runs:
        few_shot = baseline(run, solves)
        lines += [f"## {run['model']['name']} {run['config']['method']}", "", "```", command(run), "```", ""]
        if few_shot:
            m = few_shot["metrics"]
            lines += [f"Baseline, no training ({few_shot['config']['shots']}-shot program mode, same "
                      f"{m['n']} questions): exact {m['exact']:.1%}, tolerant {m['tolerant']:.1%}, outcomes "
                      + ", ".join(f"{k} {v}" for k, v in sorted(m["outcomes"].items())) + ".", ""]
        lines += ["| step | train FLOPs | loss | exact | tolerant | parse failures | outcomes |", "|---|---|---|---|---|---|---|"]
        for point, row in zip(run["curve"], curve_rows(run)):
            loss = "-" if point["train_loss"] is None else f"{point['train_loss']:.3f}"
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(point["outcomes"].items()))
            lines.append(f"| {point['step']} | {point['train_flops']:.3g} | {loss} | {point['exact']:.1%} "
                         f"| {point['tolerant']:.1%} | {row['parse_failures']}/{row['n']} | {outcomes} |")
        lines.append("")
    (HERE / "curves.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
