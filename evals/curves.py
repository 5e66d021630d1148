"""Learning curves of a study's training runs (evals/studies/STUDY/runs/): CSV, PNG, and a Markdown page with the
commands.

Each curve point is one evaluation of `finprog train` (through solve's scoring path) on
the run's eval questions; the dashed line is the same model's best prompted run (no
training) on the same questions, found among every solve under evals/runs/, so a curve
that crosses it is training that beat prompting.

    finprog study evals/studies/train-2077/study.toml   # makes the runs (resumable)
    python evals/curves.py train-2077                    # writes evals/train-2077-curves.{csv,png,md}
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import fields
from pathlib import Path

from finprog.provenance import header
from finprog.training import TrainOptions

HERE = Path(__file__).resolve().parent
SOLVES = ("studies/*/runs/*", "runs/*/*")  # every solve of evals/, for the baselines
FAILURES = ("parse_error", "no_program")
BEFORE_FIELD = {"context": "page"}  # what a run made before an option existed did (otherwise: today's default)
COLUMNS = ("run", "model", "method", "train_data", "step", "epoch", "tokens", "train_flops", "train_loss", "exact",
           "tolerant", "program_accuracy", "parse_failures", "n", "eval_flops")


def load(kind: str, pattern: str) -> list[dict]:
    """The finished runs of `kind` ("train" or "solve") in the run folders matching `pattern`, named by folder."""
    records = [{**json.loads(path.read_text()), "run": path.parent.name, "path": str(path.parent)}
               for path in sorted(HERE.glob(f"{pattern}/run.json"))]
    return [r for r in records if r["kind"] == kind and r["status"] == "finished"]


def train_data(run: dict) -> str:
    return "+".join(Path(path).stem for path in run["config"]["train"])


def curve_rows(run: dict) -> list[dict]:
    """One row per evaluation; parse_failures counts completions without a parseable program."""
    n = run["eval_set"]["n"]
    return [{"run": run["run"], "model": run["model"]["name"], "method": run["config"]["method"],
             "train_data": train_data(run), "n": n,
             "parse_failures": sum(point["outcomes"].get(kind, 0) for kind in FAILURES),
             **{key: point[key] for key in COLUMNS if key in point}} for point in run["curve"]]


def baseline(run: dict, solves: list[dict]) -> dict | None:
    """The most accurate untrained solve of the same model on the same questions, if there is one."""
    same = [s for s in solves if s["model"]["name"] == run["model"]["name"] and s["config"]["technique"] == "few-shot"
            and s["eval_set"]["ids_sha256"] == run["eval_set"]["ids_sha256"]]
    return max(same, key=lambda s: s["metrics"]["exact"], default=None)


def prompting(solve: dict) -> str:
    """How a baseline was prompted and decoded, in a few words."""
    config = solve["config"]
    return (f"{config['shots']}-shot {config.get('context', 'page')}, "
            + ("constrained" if config.get("constrained") else "free decoding"))


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
            if isinstance(value, bool):  # a switch: --flag, or --no-flag for one that is on by default
                parts.append(flag if value else f"--no-{flag[2:]}")
            else:
                parts.append(f"{flag} {value}")
    names = " ".join(Path(path).stem for path in config["train"])
    parts[2:2] = [f"--train {names}", f"--eval {Path(config['eval']).stem}"]
    return " ".join(parts)


def resumes(run: dict) -> str:
    """What a resumed run changed in how its steps ran (run.json `config_changes`), as sentences."""
    return "".join(f" Resumed at step {change.pop('from_step')} with "
                   + ", ".join(f"{key} {old} -> {new}" for key, (old, new) in change.items()) + "."
                   for change in map(dict, run.get("config_changes", [])))


def plot(runs: list[dict], solves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy, failures) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = set()
    for run in runs:
        rows = curve_rows(run)
        label = f"{run['run']} ({train_data(run)})"
        x = [row["train_flops"] for row in rows]
        line, = accuracy.plot(x, [100 * row["exact"] for row in rows], marker="o", label=f"{label}: exact")
        accuracy.plot(x, [100 * row["tolerant"] for row in rows], marker="x", linestyle=":", color=line.get_color(),
                      label=f"{label}: tolerant")
        failures.plot(x, [100 * row["parse_failures"] / row["n"] for row in rows], marker="o", color=line.get_color(),
                      label=label)
        untrained = baseline(run, solves)
        if untrained and untrained["run"] not in drawn:
            drawn.add(untrained["run"])
            accuracy.axhline(100 * untrained["metrics"]["exact"], color=line.get_color(), linestyle="--",
                             label=f"{run['model']['name']} {prompting(untrained)}, no training: exact")
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default="train", help="a study of evals/studies/ (default: train)")
    grid = parser.parse_args().grid
    runs, solves = load("train", f"studies/{grid}/runs/*"), [run for pattern in SOLVES for run in load("solve", pattern)]
    if not runs:
        raise SystemExit(f"no finished training run under evals/studies/{grid}/runs/; run "
                         f"`finprog study evals/studies/{grid}/study.toml` first")
    stem = f"{grid}-curves"
    with (HERE / f"{stem}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(row for run in runs for row in curve_rows(run))
    plot(runs, solves, HERE / f"{stem}.png")
    lines = [header(), "", f"Learning curves made by `finprog study evals/studies/{grid}/study.toml`, drawn by "
             f"`python evals/curves.py "
             f"{grid}` (data: [{stem}.csv]({stem}.csv); plot: [{stem}.png]({stem}.png)).", ""]
    for run in runs:
        untrained = baseline(run, solves)
        lines += [f"## {run['run']}", "", "```", command(run), "```", "",
                  f"Trained {run['created'][:10]} on {run['machine']}, {run['timing']['seconds_per_step']:.1f} s per step."
                  + resumes(run), ""]
        if untrained:
            m = untrained["metrics"]
            lines += [f"Baseline, no training ({prompting(untrained)}, same {m['n']} questions, "
                      f"{Path(untrained['path']).relative_to(HERE.parent)}): exact {m['exact']:.1%}, "
                      f"tolerant {m['tolerant']:.1%}, outcomes "
                      + ", ".join(f"{k} {v}" for k, v in sorted(m["outcomes"].items())) + ".", ""]
        lines += ["| step | train FLOPs | loss | exact | tolerant | parse failures | outcomes |", "|---|---|---|---|---|---|---|"]
        for point, row in zip(run["curve"], curve_rows(run)):
            loss = "-" if point["train_loss"] is None else f"{point['train_loss']:.3f}"
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(point["outcomes"].items()))
            lines.append(f"| {point['step']} | {point['train_flops']:.3g} | {loss} | {point['exact']:.1%} "
                         f"| {point['tolerant']:.1%} | {row['parse_failures']}/{row['n']} | {outcomes} |")
        lines.append("")
    (HERE / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
