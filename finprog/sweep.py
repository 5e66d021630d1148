"""The offline cascade sweep: each threshold's exact accuracy and FLOPs from finished runs, the choice, calibration.

It finds the cheapest threshold that meets a target EmAcc and tells how well each model's log-probabilities are
calibrated.

The runs are the cascade's models in order, each run alone over the same questions
(the same `eval_set.ids_sha256`). Since every row records the answer's outcome, its
confidence signals and its FLOPs, routing the recorded rows through the acceptance rule
(`cascade.route`, the function the live cascade uses) gives the cascade's accuracy and
FLOPs exactly, without running a model: they are what `finprog solve --cascade` gets
on those questions whenever each model answers a question as it did in its own run
(greedy decoding does; sampled text depends on which prompts share a batch).

The rule names one term without a value (`logprob`, `executes+logprob`, `agree`), and
that term's threshold is swept over every recorded value of the signal, rounded down to
3 decimals, so that the printed rule is exactly the one evaluated. Thresholds chosen
on dev are then applied unchanged on test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from finprog.cascade import SIGNALS, CascadeError, Rule, parse_rule, route
from finprog.compare import check_same_examples, load_run_folder
from finprog.provenance import header
from finprog.labels import format_flops, format_percent
from finprog.report import DEFAULT_METRIC, METRICS, pareto_frontier, parse_target
from finprog.runs import path_list

DECIMALS = 3
CALIBRATION_EDGES = (-math.inf, -2.0, -1.0, -0.5, -0.25, -0.1, -0.05, 0.0)
"""Bins of mean token log-probability for the calibration table (each bin includes its upper edge)."""
SWEEP_JSON = "sweep.json"
SWEEP_TXT = "sweep.txt"
SWEEP_PNG = "sweep.png"


def sweep(run_dirs: list[str | Path], rule: str, target: float | str, metric: str = DEFAULT_METRIC,
          out: str | Path | None = None) -> tuple[dict, list[Path]]:
    """`finprog cascade-sweep`: every threshold's accuracy and FLOPs per question, the choice, the calibration.

    Returns the result (JSON-ready) and the files written to `out` (none when `out` is None).
    """
    target = parse_target(target)
    if metric not in METRICS:
        raise CascadeError(f"metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CascadeError(f"--out {out} is a file; give a folder for {SWEEP_JSON}, {SWEEP_TXT} and {SWEEP_PNG}")
    rule = parse_rule(rule, open_term=True)
    runs = load_runs(run_dirs, rule)
    attempts = question_attempts(runs)
    thresholds = candidate_thresholds(rule, runs)
    points = [_point(rule.with_threshold(t) if t is not None else rule, t, attempts, metric) for t in thresholds]
    result = {
        "eval_set": runs[0]["record"]["eval_set"],
        "runs": [run["dir"] for run in runs],
        "models": [_model(run) for run in runs],
        "rule": str(rule),
        "metric": metric,
        "target": target,
        "training_flops": _training_flops(runs),
        "alone": [_alone(run, metric) for run in runs],
        "points": points,
        "chosen": cheapest(points, target),
        "calibration": [calibration(run, metric) for run in runs],
    }
    return result, write_sweep(result, out) if out is not None else []


def _training_flops(runs: list[dict]) -> float | None:
    """The models' training FLOPs together; None when one model's is unknown."""
    costs = [run["record"]["flops"]["training_total"] for run in runs]
    return None if None in costs else sum(costs)


def load_runs(run_dirs: list[str | Path], rule: Rule) -> list[dict]:
    """The finished single-model runs, in cascade order, checked: each once, the same questions, the signals the
    rule needs."""
    run_dirs = path_list(run_dirs, "run_dirs")
    if len(run_dirs) < 2:
        raise CascadeError(f"a cascade sweep needs the runs of at least two models, got {len(run_dirs)}")
    seen = set()
    for folder in run_dirs:
        if folder.resolve() in seen:
            raise CascadeError(f"{folder} is given twice; a cascade sweep needs one run per model, each a different "
                               "run folder")
        seen.add(folder.resolve())
    runs = [load_run_folder(d) for d in run_dirs]
    for run in runs:
        if run["record"].get("kind") != "solve":
            raise CascadeError(f"{run['dir']}: a sweep reads single-model runs of `finprog solve`, "
                               f"not a {run['record'].get('kind')!r} run")
    check_same_examples(runs)
    needed = {"logprob_mean"} | {SIGNALS[t.signal][0] for t in rule.terms}
    for index, run in enumerate(runs):
        fields = needed if index < len(runs) - 1 else {"logprob_mean"}  # the last model is never judged
        missing = sorted(fields - set.intersection(*(set(row) for row in run["rows"].values())))
        if missing:
            hint = " (agreement needs --samples 2 or more)" if "agreement" in missing else \
                " (the run predates confidence signals; run it again)"
            raise CascadeError(f"{run['dir']}: its predictions do not record {', '.join(missing)}{hint}")
    return runs


def _model(run: dict) -> str:
    return run["record"]["config"]["model"]


def question_attempts(runs: list[dict]) -> dict[str, list[dict]]:
    """Per question, every model's recorded row in cascade order, as an attempt (the row with its `model`)."""
    return {qid: [{"model": _model(run), **run["rows"][qid]} for run in runs] for qid in runs[0]["rows"]}


def candidate_thresholds(rule: Rule, runs: list[dict]) -> list[float | None]:
    """Every recorded value of the swept signal, rounded down to 3 decimals, and its highest value.

    [None] when the rule leaves no term open: the rule itself is the one point.
    """
    term = rule.open_term
    if term is None:
        return [None]
    field, low, high = SIGNALS[term.signal]
    scale = 10**DECIMALS
    values = {math.floor(row[field] * scale) / scale for run in runs[:-1] for row in run["rows"].values()}
    return sorted({min(high, max(low, v)) for v in values} | {high})


def _point(rule: Rule, threshold: float | None, attempts: dict[str, list[dict]], metric: str) -> dict:
    """The cascade under `rule`: accuracy, inference FLOPs per question, and how many questions each model answered."""
    routed = [route(rule, tries) for tries in attempts.values()]
    answered: dict[str, int] = {}
    for tries in routed:
        answered[tries[-1]["model"]] = answered.get(tries[-1]["model"], 0) + 1
    n = len(routed)
    return {
        "threshold": threshold,
        "rule": str(rule),
        "accuracy": sum(bool(tries[-1][metric]) for tries in routed) / n,
        "flops_per_question": sum(a["flops"] for tries in routed for a in tries) / n,
        "answered_by": answered,
    }


def _alone(run: dict, metric: str) -> dict:
    rows = list(run["rows"].values())
    return {"model": _model(run), "accuracy": sum(bool(r[metric]) for r in rows) / len(rows),
            "flops_per_question": sum(r["flops"] for r in rows) / len(rows)}


def cheapest(points: list[dict], target: float) -> dict | None:
    """The point that reaches `target` for the fewest FLOPs (ties: the more accurate); None if none reaches it."""
    reached = [p for p in points if p["accuracy"] >= target - 1e-9]
    return min(reached, key=lambda p: (p["flops_per_question"], -p["accuracy"]), default=None)


def calibration(run: dict, metric: str) -> dict:
    """A model's accuracy by bin of mean token log-probability: is a confident answer a right one?"""
    bins = []
    for low, high in zip(CALIBRATION_EDGES, CALIBRATION_EDGES[1:]):
        rows = [r for r in run["rows"].values() if low < r["logprob_mean"] <= high]
        if rows:
            bins.append({"low": low if math.isfinite(low) else None, "high": high, "n": len(rows),
                         "accuracy": sum(bool(r[metric]) for r in rows) / len(rows)})
    return {"model": _model(run), "bins": bins}


def frontier(points: list[dict]) -> list[dict]:
    """The points on the Pareto frontier of accuracy and FLOPs (`report.pareto_frontier`), cheapest first; of
    thresholds that route alike (the same accuracy and FLOPs), only the first."""
    kept, seen = [], set()
    for index in pareto_frontier([(p["flops_per_question"], p["accuracy"]) for p in points]):
        cost_and_accuracy = (points[index]["flops_per_question"], points[index]["accuracy"])
        if cost_and_accuracy not in seen:
            seen.add(cost_and_accuracy)
            kept.append(points[index])
    return kept


def format_sweep(result: dict) -> str:
    """The sweep for a person: each model alone, the thresholds on the frontier, the choice, the calibration."""
    n, metric = result["eval_set"]["n"], result["metric"]
    last = result["alone"][-1]
    lines = [
        f"Cascade {' > '.join(result['models'])} on {result['eval_set']['name']} (n={n}), rule {result['rule']}, "
        f"{metric} EmAcc, target {format_percent(result['target'])}",
        "Each model alone: " + "; ".join(f"{a['model']} {format_percent(a['accuracy'])} at "
                                         f"{format_flops(a['flops_per_question'])} FLOPs/q" for a in result["alone"]),
        "",
        f"Thresholds on the frontier ({len(frontier(result['points']))} of {len(result['points'])}; "
        f"all in {SWEEP_JSON}):",
        f"{'rule':<36}{'EmAcc':>8}{'FLOPs/q':>10}{'vs last':>9}  answered by",
    ]
    for point in frontier(result["points"]):
        lines.append(f"{point['rule']:<36}{format_percent(point['accuracy']):>8}"
                     f"{format_flops(point['flops_per_question']):>10}"
                     f"{point['flops_per_question'] / last['flops_per_question']:>9.0%}  "
                     + ", ".join(f"{m} {k}" for m, k in point["answered_by"].items()))
    chosen = result["chosen"]
    lines.append("")
    if chosen is None:
        best = max(result["points"], key=lambda p: p["accuracy"])
        lines.append(f"No threshold reaches {format_percent(result['target'])}; the most accurate is "
                     f"{best['rule']} at {format_percent(best['accuracy'])}.")
    else:
        lines.append(f"Chosen: --accept {chosen['rule']}: {format_percent(chosen['accuracy'])} at "
                     f"{format_flops(chosen['flops_per_question'])} FLOPs/q "
                     f"({chosen['flops_per_question'] / last['flops_per_question']:.0%} of {last['model']} alone); "
                     "apply it unchanged on the test set.")
    alone = cheapest(result["alone"], result["target"])
    lines.append(f"Cheapest model alone at the target: {alone['model']}, {format_percent(alone['accuracy'])} at "
                 f"{format_flops(alone['flops_per_question'])} FLOPs/q." if alone else
                 f"No model alone reaches {format_percent(result['target'])}.")
    lines += ["", f"Calibration: {metric} EmAcc by mean token log-probability"]
    for model in result["calibration"]:
        lines.append(f"  {model['model']}: " + "; ".join(
            f"{_bin_label(b)} {format_percent(b['accuracy'])} of {b['n']}" for b in model["bins"]))
    return "\n".join(lines)


def _bin_label(calibration_bin: dict) -> str:
    low = calibration_bin["low"]
    return f"({'-inf' if low is None else f'{low:g}'}, {calibration_bin['high']:g}]"


def write_sweep(result: dict, out: str | Path) -> list[Path]:
    """Write sweep.json, sweep.txt (with a provenance line) and sweep.png into `out`; returns their paths."""
    from finprog.plot import plot_sweep  # matplotlib loads only when a plot is drawn

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_JSON).write_text(json.dumps(result, indent=2) + "\n")
    (out / SWEEP_TXT).write_text(f"{header()}\n{format_sweep(result)}\n")
    return [out / SWEEP_JSON, out / SWEEP_TXT, plot_sweep(result, out / SWEEP_PNG)]
