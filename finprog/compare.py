"""Side-by-side comparison of runs on the same examples: metrics, cost, and who got right what the other missed."""

from __future__ import annotations

import json
from pathlib import Path

from finprog.labels import format_flops
from finprog.runs import PREDICTIONS, RunError, RunRecord, evaluation_file, path_list, read_rows
from finprog.stats import paired, wilson_interval

COMPARISON = "comparison.json"


def compare_modes(runs: list, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Solve with each of `runs` (SolveOptions of one model and data, a mode each) into `out/MODE/`; compare them."""
    from finprog.solve import solve

    out = Path(out)
    for options in runs:
        solve(options, out / options.mode, resume=resume, progress=progress)
    result = compare_runs([out / options.mode for options in runs])
    (out / COMPARISON).write_text(json.dumps(result, indent=2) + "\n")
    return result


def compare_runs(run_dirs: list[str | Path]) -> dict:
    """Compare finished runs (a folder or a list of them); they must have been scored on the same examples."""
    runs = [load_run_folder(d) for d in path_list(run_dirs, "run_dirs")]
    check_same_examples(runs)
    columns = [_column(run) for run in runs]
    result = {"eval_set": runs[0]["record"]["eval_set"], "runs": columns, "paired": _paired_tests(runs)}
    if all(run["record"]["kind"] == "train" for run in runs):
        result["steps"] = _step_tests(runs)
    return result


def compare_curves(run_dirs: list[str | Path]) -> dict:
    """Training runs' curves side by side as far as each has come, finished or not (`_step_tests`)."""
    runs = []
    for folder in path_list(run_dirs, "run_dirs"):
        record = RunRecord.load(folder).validate(finished=False)
        if record.data["kind"] != "train":
            raise RunError(f"{record.path}: not a training run; only training runs have curves to compare")
        runs.append({"dir": str(folder), "record": record.data})
    check_same_examples(runs)
    return {"runs": [{"run": run["dir"]} for run in runs], "steps": _step_tests(runs)}


def check_same_examples(runs: list[dict]) -> None:
    """Refuse runs (as `load_run_folder` gives them) that were scored on different examples."""
    sets = {run["record"]["eval_set"]["ids_sha256"] for run in runs}
    if len(sets) > 1:
        described = "; ".join(f"{run['dir']}: {run['record']['eval_set']['name']} n={run['record']['eval_set']['n']}"
                              for run in runs)
        raise RunError(f"these runs were scored on different examples and cannot be compared ({described})")


def load_run_folder(folder: Path) -> dict:
    """A finished run folder: {dir, record (run.json), rows (predictions by id)}, read through `RunRecord`.

    RunError names the file and field of what is wrong.
    """
    record = RunRecord.load(folder).validate()
    predictions = record.folder / PREDICTIONS
    if not predictions.is_file():
        raise RunError(f"{predictions}: no such file")
    rows = {row["id"]: row for row in read_rows(predictions)}
    if len(rows) != record.data["eval_set"]["n"]:
        raise RunError(f"{predictions}: {len(rows)} whole predictions for {record.data['eval_set']['n']} questions; "
                       "a line is damaged or missing (--resume on the run sets damaged lines aside and redoes them)")
    missing = [row["id"] for row in rows.values() if not all(isinstance(row.get(k), bool) for k in ("exact", "tolerant"))]
    if missing:
        raise RunError(f"{predictions}: the row of id {missing[0]!r} lacks field 'exact' or 'tolerant' (true or false)")
    return {"dir": str(folder), "record": record.data, "rows": rows}


def _column(run: dict) -> dict:
    record = run["record"]
    metrics, flops, timing = record["metrics"], record["flops"], record["timing"]
    return {
        "run": run["dir"],
        "model": record["model"]["name"],
        "mode": record["config"]["mode"],
        "technique": record["config"]["technique"],
        "exact": metrics["exact"],
        "tolerant": metrics["tolerant"],
        "exact_interval": list(wilson_interval(round(metrics["exact"] * metrics["n"]), metrics["n"])),
        "program_accuracy": metrics["program_accuracy"],
        "outcomes": metrics["outcomes"],
        "prompt_tokens_per_example": metrics["prompt_tokens_per_example"],
        "new_tokens_per_example": metrics["new_tokens_per_example"],
        "seconds_per_example": timing["seconds_per_example"],
        "flops_per_example": flops["inference_per_example"],
        "flops_per_example_executed": flops["inference_per_example_executed"],
    }


def _paired_tests(runs: list[dict], metrics: tuple[str, ...] = ("exact", "tolerant")) -> list[dict]:
    """For each pair of runs and each metric: the questions only one got right, and the exact McNemar p-value."""
    tests = []
    for index, a in enumerate(runs):
        for b in runs[index + 1:]:
            for metric in metrics:
                test = paired(*({i: row[metric] for i, row in run["rows"].items()} for run in (a, b)))
                tests.append({"a": a["dir"], "b": b["dir"], "metric": metric, "only_a": test.only_a,
                              "only_b": test.only_b, "both": test.both, "neither": test.neither, "p": test.p})
    return tests


def _step_tests(runs: list[dict]) -> list[dict]:
    """Training runs' curves side by side: at every step that each of them evaluated on the same questions, each
    run's exact EmAcc and training FLOPs, and the paired exact test of each pair."""
    points = [{point["step"]: point for point in run["record"].get("curve", [])} for run in runs]
    result = []
    for step in sorted(set.intersection(*(set(curve) for curve in points))):
        files = [evaluation_file(Path(run["dir"]), step) for run in runs]
        if not all(file.is_file() for file in files):
            continue
        at_step = [{**run, "rows": {row["id"]: row for row in read_rows(file)}} for run, file in zip(runs, files)]
        if len({frozenset(run["rows"]) for run in at_step}) > 1:
            continue  # evaluated on other questions (an eval limit)
        result.append({"step": step, "exact": [curve[step]["exact"] for curve in points],
                       "train_flops": [curve[step]["train_flops"] for curve in points],
                       "paired": _paired_tests(at_step, ("exact",))})
    return result


def format_comparison(result: dict) -> str:
    """A table with one column per run."""
    runs = result["runs"]
    names = [f"{r['mode']} ({Path(r['run']).name})" for r in runs]
    models = [r["model"] for r in runs]
    width = max(14, *(len(n) + 2 for n in names + models))

    def line(label: str, values) -> str:
        return f"{label:<30}" + "".join(f"{v:>{width}}" for v in values)

    outcomes = sorted({k for r in runs for k in r["outcomes"]})
    one_model = len(set(models)) == 1
    lines = [
        f"{result['eval_set']['name']}: {result['eval_set']['n']} examples" + (f", model {models[0]}" if one_model else ""),
        line("", names),
        *([] if one_model else [line("model", models)]),
        line("exact EmAcc", [f"{r['exact']:.1%}" for r in runs]),
        line("  95% interval", [f"{100 * r['exact_interval'][0]:.1f}-{100 * r['exact_interval'][1]:.1f}%"
                                for r in runs]),
        line("tolerant EmAcc", [f"{r['tolerant']:.1%}" for r in runs]),
        line("program accuracy", ["-" if r["program_accuracy"] is None else f"{r['program_accuracy']:.1%}" for r in runs]),
        *[line(f"  {k}", [r["outcomes"].get(k, 0) for r in runs]) for k in outcomes],
        line("prompt tokens / example", [f"{r['prompt_tokens_per_example']:.0f}" for r in runs]),
        line("generated tokens / example", [f"{r['new_tokens_per_example']:.1f}" for r in runs]),
        line("seconds / example", [f"{r['seconds_per_example']:.2f}" for r in runs]),
        line("GFLOPs / example (useful)", [f"{r['flops_per_example'] / 1e9:,.0f}" for r in runs]),
        line("GFLOPs / example (executed)", [f"{r['flops_per_example_executed'] / 1e9:,.0f}" for r in runs]),
    ]
    lines += [_paired_line(test, test["metric"]) for test in result["paired"]]
    return "\n".join(lines + format_steps(result) if result.get("steps") else lines)


def format_steps(result: dict) -> list[str]:
    """The lines of a comparison's curves, step by step (`compare_runs` or `compare_curves`)."""
    lines = ["the curves step by step (exact EmAcc at the training FLOPs of the step):"]
    for point in result["steps"]:
        shown = ", ".join(f"{Path(run['run']).name} {exact:.1%} ({format_flops(flops)})"
                          for run, exact, flops in zip(result["runs"], point["exact"], point["train_flops"]))
        lines.append(f"  step {point['step']}: {shown}")
        lines += [_paired_line(test, "    exact") for test in point["paired"]]
    return lines


def _paired_line(test: dict, label: str) -> str:
    a, b = Path(test["a"]).name, Path(test["b"]).name
    return (f"{label}: right only in {a} {test['only_a']}, only in {b} {test['only_b']} "
            f"(both {test['both']}, neither {test['neither']}); exact McNemar p = {test['p']:.2g}"
            + (", a significant difference" if test["p"] < 0.05 else ", within chance"))
