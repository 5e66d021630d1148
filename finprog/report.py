"""Comparing runs: the table, FLOPs-to-target, the Pareto frontier, and the Markdown report (the plot: `plot.py`).

Every run becomes one point: its final accuracy against the total FLOPs it needs to
answer Q questions (training FLOPs + Q x inference FLOPs per question). A training
run also keeps its learning curve, which tells how much training reaches the target.
Runs evaluated on different question sets (a different `eval_set.ids_sha256`) are
reported in separate groups, never compared with each other. A run whose training cost is
unknown (an adapter without the run.json of its training) shows "unknown" FLOPs and is left
out of the frontier, the FLOPs to target and the plot: it is never placed at zero training cost.
A report may hold several targets (10%, 20%, 30%): each gets its FLOPs-to-target column
and its cheapest run.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import groupby
from pathlib import Path

from finprog import __version__
from finprog.errors import FinprogError
from finprog.evaluation import METRICS
from finprog.labels import TECHNIQUE_NAMES, format_flops, format_interval, format_params, format_percent
from finprog.models import ModelSource
from finprog.provenance import now
from finprog.runs import PREDICTIONS, RunError, RunRecord, path_list, read_rows
from finprog.stats import Paired, paired, wilson_interval

DEFAULT_METRIC = "exact"
DEFAULT_QUESTIONS = 1147  # the size of the FinQA test split
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
# Accuracies are ratios such as 36/300; two that differ by less than this are equal.
ACCURACY_TOLERANCE = 1e-9

_TRAINED = {"lora", "qlora", "full"}


class ReportError(FinprogError, ValueError):
    """A run cannot be reported or the report was asked for wrongly; the message says which file and field."""


@dataclass(frozen=True)
class EvalSet:
    """The questions a run was scored on; runs are comparable only when `ids_sha256` agrees."""

    name: str
    n: int
    ids_sha256: str

    def describe(self) -> str:
        return f"{self.name} (n={self.n}, ids sha256 {self.ids_sha256[:12]})"


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation during training: cumulative training FLOPs so far and the accuracies then."""

    train_flops: float
    exact: float
    tolerant: float


@dataclass(frozen=True)
class RunSummary:
    """What the report needs from one run.json."""

    path: Path
    kind: str
    model: str
    params: int
    technique: str
    mode: str
    shots: int
    constrained: bool
    samples: int
    quant: str
    eval_set: EvalSet
    n: int  # questions scored
    exact: float
    tolerant: float
    training_flops: float | None  # None: unknown (`flops.training_unknown` in run.json says why)
    inference_flops_per_question: float
    seconds_per_question: float
    curve: tuple[CurvePoint, ...] = ()
    details: dict = field(default_factory=dict)  # program accuracy, outcomes, tokens per question (the details table)
    qualified: bool = False  # named with its parent folder too, because another run has the same folder name
    base: str | None = None  # the model a trained adapter or checkpoint was trained from, where known

    @property
    def base_model(self) -> str:
        """The model the run's technique was applied to: an adapter's base, else the model itself."""
        return self.base or self.model

    @property
    def name(self) -> str:
        """The run's folder name, which tells runs of the same configuration apart (`parent/folder` if qualified)."""
        folder = self.path.resolve().parent
        return f"{folder.parent.name}/{folder.name}" if self.qualified else folder.name

    @property
    def family(self) -> str:
        """The technique without its details: `cascade` for `cascade(executes+logprob:-0.3)`."""
        return self.technique.split("(")[0]

    @property
    def technique_label(self) -> str:
        """`4-shot`, `QLoRA`, `LoRA + 2-shot constrained, 8 samples`, ..."""
        if self.technique == "few-shot":
            label = f"{self.shots}-shot"
        else:
            label = TECHNIQUE_NAMES.get(self.technique, self.technique)
            if self.technique in _TRAINED and self.shots:
                label += f" + {self.shots}-shot"
        if self.quant != "none" and self.technique != "qlora":
            label += f" {self.quant}"
        if self.constrained:
            label += " constrained"
        if self.samples > 1:
            label += f", {self.samples} samples"
        return label

    @property
    def label(self) -> str:
        return f"{self.model} {self.technique_label} {self.mode}"

    def accuracy(self, metric: str) -> float:
        return self.exact if metric == "exact" else self.tolerant

    def interval(self, metric: str) -> tuple[float, float]:
        """The 95% Wilson interval of the run's accuracy on its n questions."""
        return wilson_interval(round(self.accuracy(metric) * self.n), self.n)

    def right_by_id(self, metric: str) -> dict[str, bool] | None:
        """Question id -> scored right, from predictions.jsonl beside run.json; None when it is not there."""
        predictions = self.path.parent / PREDICTIONS
        if not predictions.is_file():
            return None
        return {row["id"]: bool(row.get(metric)) for row in read_rows(predictions)}


@dataclass(frozen=True)
class Crossing:
    """Where one run first reaches one target accuracy."""

    target: float
    training_flops: float | None  # training FLOPs at the first crossing; None: never reached, or at an unknown cost
    interpolated: bool  # the crossing lies between two evaluations of the learning curve
    flops_to_target: float | None  # training_flops + Q x inference FLOPs per question
    unknown: bool = False  # reached, at an unknown training cost
    # FLOPs to target where the curve's 95% interval first reaches up to the target (`earliest`) and where it
    # first lies wholly at or above it (`surely`); None: not on this curve
    earliest: float | None = None
    surely: float | None = None


@dataclass(frozen=True)
class Row:
    """One run scored for the report: its cost for Q questions and what reaching each target costs."""

    run: RunSummary
    accuracy: float
    total_flops: float | None  # None: the training cost is unknown
    crossings: tuple[Crossing, ...]  # one per target of the report, in its order
    on_frontier: bool
    interval: tuple[float, float] = (0.0, 1.0)  # 95% Wilson interval of `accuracy`
    neighbour: str | None = None  # the frontier run it is tested against (see `_neighbour`)
    paired: Paired | None = None  # that test, over the questions both answered

    # The first target's crossing, as the single-target report had it.
    @property
    def target_training_flops(self) -> float | None:
        return self.crossings[0].training_flops

    @property
    def interpolated(self) -> bool:
        return self.crossings[0].interpolated

    @property
    def flops_to_target(self) -> float | None:
        return self.crossings[0].flops_to_target


@dataclass(frozen=True)
class Group:
    """The runs scored on one eval set, cheapest first."""

    eval_set: EvalSet
    rows: tuple[Row, ...]

    def cheapest_to(self, index: int) -> Row | None:
        """The run with the least FLOPs to the report's target number `index`; ties go to the more accurate run."""
        return _cheapest_to(self.rows, index)

    @property
    def by_model(self) -> tuple[tuple[str, str, tuple[Row, ...]], ...]:
        """(base model, technique family, its rows) for each model and technique, smallest model first."""
        def key(row: Row) -> tuple:
            return row.run.params, row.run.base_model, row.run.family

        ordered = sorted(self.rows, key=key)
        return tuple((model, family, tuple(rows))
                     for (_, model, family), rows in groupby(ordered, key=key))

    @property
    def cheapest(self) -> Row | None:
        """The cheapest run to the report's first target."""
        return self.cheapest_to(0)

    @property
    def frontier(self) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if row.on_frontier)

    @property
    def placed(self) -> tuple[Row, ...]:
        """The rows whose total FLOPs are known: those a plot places."""
        return tuple(row for row in self.rows if row.total_flops is not None)


@dataclass(frozen=True)
class Report:
    """All runs, grouped by eval set, measured against one or more target accuracies (ascending)."""

    targets: tuple[float, ...]
    questions: int
    metric: str
    groups: tuple[Group, ...]
    unfinished: tuple[Path, ...] = ()  # runs found in folders but not finished: left out, and said so

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data (for `--json`).

        `target`, a group's `cheapest` and a row's `flops_to_target` are the first target's, as
        with a single target; `targets` and the `to_targets` lists hold every target's.
        """
        return {
            "target": self.targets[0],
            "targets": list(self.targets),
            "questions": self.questions,
            "metric": self.metric,
            "unfinished": [str(path) for path in self.unfinished],
            "groups": [
                {
                    "eval_set": vars(group.eval_set),
                    "cheapest": _path_or_none(group.cheapest),
                    "to_targets": [_cheapest_dict(group, i, target) for i, target in enumerate(self.targets)],
                    "frontier": [str(row.run.path) for row in group.frontier],
                    "by_model": [
                        {"model": model, "technique": family, "runs": [str(row.run.path) for row in rows],
                         "to_targets": [_path_or_none(_cheapest_to(rows, i)) for i in range(len(self.targets))]}
                        for model, family, rows in group.by_model
                    ],
                    "rows": [_row_dict(row) for row in group.rows],
                }
                for group in self.groups
            ],
        }


def _cheapest_to(rows: Sequence[Row], index: int) -> Row | None:
    """Of `rows`, the one with the least FLOPs to target number `index`; ties go to the more accurate run."""
    reached = [row for row in rows if row.crossings[index].flops_to_target is not None]
    return min(reached, key=lambda row: (row.crossings[index].flops_to_target, -row.accuracy), default=None)


def _path_or_none(row: Row | None) -> str | None:
    return str(row.run.path) if row else None


def _cheapest_dict(group: Group, index: int, target: float) -> dict:
    cheapest = group.cheapest_to(index)
    return {
        "target": target,
        "cheapest": _path_or_none(cheapest),
        "flops_to_target": cheapest.crossings[index].flops_to_target if cheapest else None,
    }


def _row_dict(row: Row) -> dict:
    run = row.run
    return {
        "path": str(run.path),
        "name": run.name,
        "kind": run.kind,
        "model": run.model,
        "params": run.params,
        "technique": run.technique,
        "technique_label": run.technique_label,
        "mode": run.mode,
        "n": run.n,
        "exact": run.exact,
        "tolerant": run.tolerant,
        "interval": list(row.interval),
        "neighbour": row.neighbour,
        "paired": None if row.paired is None else {**asdict(row.paired), "p": row.paired.p},
        "training_flops": run.training_flops,
        "inference_flops_per_question": run.inference_flops_per_question,
        "total_flops": row.total_flops,
        "seconds_per_question": run.seconds_per_question,
        "target_training_flops": row.target_training_flops,
        "flops_to_target": row.flops_to_target,
        "interpolated": row.interpolated,
        "to_targets": [asdict(crossing) for crossing in row.crossings],
        "on_frontier": row.on_frontier,
    }


# ---------------------------------------------------------------- reading runs


def find_run_files(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """The run.json files named by `paths`: a run.json itself, a run folder, or any folder holding runs below it.

    Returns (runs, unfinished): runs found below a folder that are still running or were
    interrupted are set aside as unfinished; a run named itself is always returned.
    """
    found: list[Path] = []
    unfinished: list[Path] = []
    for path in path_list(paths, "paths"):
        if path.is_file():
            found.append(path)
        elif (path / "run.json").is_file():
            found.append(path / "run.json")
        elif path.is_dir():
            below = sorted(path.rglob("run.json"))
            if not below:
                raise ReportError(f"{path}: no run.json in this folder or below it")
            for file in below:
                (unfinished if _status(file) not in (None, "finished") else found).append(file)
        else:
            raise ReportError(f"{path}: no such file or folder")
    return list({file.resolve(): file for file in found}.values()), unfinished


def _status(path: Path) -> object:
    try:
        return RunRecord.load(path).status
    except RunError:
        return None  # load_run says what is wrong with it


def load_runs(paths: list[str | Path]) -> list[RunSummary]:
    """Every finished run found under `paths` (see `find_run_files`), read and checked; runs whose folders
    share a name are named with their parent folder too."""
    runs = [load_run(file) for file in find_run_files(paths)[0]]
    repeated = {name for name, count in Counter(run.name for run in runs).items() if count > 1}
    return [replace(run, qualified=True) if run.name in repeated else run for run in runs]


def load_run(path: str | Path) -> RunSummary:
    """Read one finished run.json through `RunRecord` (RunError names the file and field of what is wrong)."""
    record = RunRecord.load(path).validate()
    get = record.get
    return RunSummary(
        path=record.path,
        kind=get("kind"),
        model=ModelSource(str(get("model.source")), get("model.name")).name,
        params=int(get("model.params")),
        technique=get("config.technique"),
        mode=get("config.mode"),
        shots=int(get("config.shots", 0)),
        constrained=get("config.constrained", False),
        samples=int(get("config.samples", 1)),
        quant=get("config.quant", "none"),
        eval_set=EvalSet(name=get("eval_set.name"), n=int(get("eval_set.n")), ids_sha256=get("eval_set.ids_sha256")),
        n=int(get("metrics.n")),
        exact=get("metrics.exact"),
        tolerant=get("metrics.tolerant"),
        training_flops=get("flops.training_total"),
        inference_flops_per_question=get("flops.inference_per_example"),
        seconds_per_question=get("timing.seconds_per_example"),
        curve=tuple(CurvePoint(p["train_flops"], p["exact"], p["tolerant"]) for p in get("curve", ()))
        if get("kind") == "train" else (),
        details={name: get(f"metrics.{name}") for name in
                 ("program_accuracy", "outcomes", "prompt_tokens_per_example", "new_tokens_per_example")},
        base=_base_model(record),
    )


def _base_model(record: RunRecord) -> str | None:
    """The model a solve's adapter or checkpoint was trained from: run.json's `model.base`, or for a run recorded
    before it was, the model of the training run.json beside the adapter where it still is, in the folder of the
    same name beside this run (a study's runs, moved together), or beside finprog's shipped adapter of that name
    (where an adapter goes once it ships)."""
    if record.get("kind") == "train" or record.get("model.source") not in ("adapter", "checkpoint"):
        return None
    if record.get("model.base"):
        return record.get("model.base")
    name = Path(str(record.get("model.name"))).name
    for folder in (str(record.get("config.model")), str(record.folder.parent / name), name):
        try:
            trained = RunRecord.trained(folder)
        except RunError:
            trained = None
        if trained:
            return ModelSource(str(trained.get("model.source")), trained.get("model.name")).name
    return None


# ---------------------------------------------------------------- the maths


def parse_target(value: float | str) -> float:
    """The target accuracy as a fraction: up to 1 is a fraction (0.3), above 1 a percentage (30 or '30%')."""
    text = str(value).strip()
    try:
        number = float(text.removesuffix("%"))
    except ValueError:
        raise ReportError(
            f"target {value!r} is not a number; give a fraction such as 0.3 or a percentage such as 30"
        ) from None
    fraction = number / 100 if text.endswith("%") or number > 1 else number
    if not 0 < fraction <= 1:
        raise ReportError(f"target {value!r} is out of range; give a fraction in (0, 1] or a percentage in (0, 100]")
    return fraction


def parse_targets(value: float | str | Sequence[float | str]) -> tuple[float, ...]:
    """One target or several (see `parse_target`), as fractions in ascending order without repeats."""
    values = [value] if isinstance(value, (str, int, float)) else list(value)
    if not values:
        raise ReportError("no target given; give one or more, such as 0.1 0.2 0.3")
    return tuple(sorted(set(map(parse_target, values))))


def training_flops_to_target(curve: Sequence[tuple[float, float]], target: float) -> tuple[float | None, bool]:
    """Cumulative training FLOPs where a curve of (training FLOPs, accuracy) first reaches `target`, and whether
    that was interpolated.

    Between the last evaluation below the target and the first at or above it, the
    FLOPs are interpolated linearly. A curve whose first point already meets the
    target needs that point's FLOPs, and one that never meets it gives None.
    """
    previous = None
    for flops, accuracy in curve:
        if accuracy >= target - ACCURACY_TOLERANCE:
            if previous is None or accuracy <= target + ACCURACY_TOLERANCE:
                return flops, False
            before_flops, before = previous
            share = (target - before) / (accuracy - before)
            return before_flops + share * (flops - before_flops), True
        previous = flops, accuracy
    return None, False


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the (cost, accuracy) points that no other point beats, cheapest first (then the more accurate,
    then the earlier). A point beats another when it costs no more and is no less accurate, and is better in one;
    accuracies within ACCURACY_TOLERANCE are equal, and two equal points are both on the frontier."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    kept, best_cheaper = [], -math.inf  # the best accuracy of the points that cost less
    for _, same_cost in groupby(order, key=lambda i: points[i][0]):
        same_cost = list(same_cost)
        best = max(best_cheaper, points[same_cost[0]][1])  # ... or as much
        kept += [i for i in same_cost if best_cheaper < points[i][1] - ACCURACY_TOLERANCE
                 and best <= points[i][1] + ACCURACY_TOLERANCE]
        best_cheaper = best
    return kept


def build_report(
    runs: list[RunSummary],
    target: float | str | Sequence[float | str],
    questions: int = DEFAULT_QUESTIONS,
    metric: str = DEFAULT_METRIC,
) -> Report:
    """Score every run against `target` (one or several) for `questions` questions, grouped by eval set."""
    targets = parse_targets(target)
    if metric not in METRICS:
        raise ReportError(f"metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    if isinstance(questions, bool) or not isinstance(questions, int) or questions < 1:
        raise ReportError(f"questions must be a positive whole number, got {questions!r}")
    if not runs:
        raise ReportError("no runs to report")
    by_set: dict[str, list[RunSummary]] = {}
    for run in runs:
        by_set.setdefault(run.eval_set.ids_sha256, []).append(run)
    groups = [_score_group(members, targets, questions, metric) for members in by_set.values()]
    groups.sort(key=lambda group: (group.eval_set.name, group.eval_set.ids_sha256))
    return Report(targets, questions, metric, tuple(groups))


def _crossing(run: RunSummary, target: float, questions: int, metric: str) -> Crossing:
    if run.training_flops is None:
        return Crossing(target, None, False, None, unknown=run.accuracy(metric) >= target - ACCURACY_TOLERANCE)
    # A run without a learning curve is a single evaluation after all its training.
    curve = run.curve or (CurvePoint(run.training_flops, run.exact, run.tolerant),)
    points = [(point.train_flops, getattr(point, metric)) for point in curve]
    bounds = [(flops, wilson_interval(round(accuracy * run.n), run.n)) for flops, accuracy in points]
    inference = questions * run.inference_flops_per_question

    def to_target(curve: list[tuple[float, float]]) -> float | None:
        training = training_flops_to_target(curve, target)[0]
        return None if training is None else training + inference

    training, interpolated = training_flops_to_target(points, target)
    return Crossing(target, training, interpolated, None if training is None else training + inference,
                    earliest=to_target([(flops, high) for flops, (_, high) in bounds]),
                    surely=to_target([(flops, low) for flops, (low, _) in bounds]))


def _total_flops(run: RunSummary, questions: int) -> float | None:
    """Training FLOPs + `questions` x inference FLOPs per question; None when the training cost is unknown."""
    if run.training_flops is None:
        return None
    return run.training_flops + questions * run.inference_flops_per_question


def _score_group(runs: list[RunSummary], targets: tuple[float, ...], questions: int, metric: str) -> Group:
    points = [(_total_flops(run, questions), run.accuracy(metric)) for run in runs]
    known = [i for i, point in enumerate(points) if point[0] is not None]
    frontier = {known[i] for i in pareto_frontier([points[i] for i in known])}
    rows = [
        Row(
            run=run,
            accuracy=accuracy,
            total_flops=total,
            crossings=tuple(_crossing(run, target, questions, metric) for target in targets),
            on_frontier=index in frontier,
            interval=run.interval(metric),
        )
        for index, (run, (total, accuracy)) in enumerate(zip(runs, points))
    ]
    rows.sort(key=lambda row: (row.total_flops is None, row.total_flops or 0, -row.accuracy, row.run.name))
    rows = _with_neighbours(rows, metric)
    # The same questions may carry different names (test_100 from two files); show them all.
    names = " / ".join(sorted({run.eval_set.name for run in runs}))
    return Group(replace(runs[0].eval_set, name=names), tuple(rows))


def _neighbour(row: Row, frontier: list[Row]) -> Row | None:
    """The frontier run a run is tested against: for a frontier run, the frontier run before it (cheaper, less
    accurate); for any other run, the most accurate frontier run that costs no more (one that beats it)."""
    if row.total_flops is None:
        return None
    cheaper = [other for other in frontier if other is not row and other.total_flops <= row.total_flops
               and (not row.on_frontier or other.accuracy < row.accuracy)]
    return max(cheaper, key=lambda other: (other.accuracy, -other.total_flops), default=None)


def _with_neighbours(rows: list[Row], metric: str) -> list[Row]:
    """Each row with its frontier neighbour and, where both runs' predictions are there, their paired test."""
    frontier = [row for row in rows if row.on_frontier]
    right = {}
    result = []
    for row in rows:
        other = _neighbour(row, frontier)
        if other is None:
            result.append(row)
            continue
        for run in (row.run, other.run):
            if run.path not in right:
                right[run.path] = run.right_by_id(metric)
        a, b = right[other.run.path], right[row.run.path]
        test = paired(a, b) if a is not None and b is not None else None
        result.append(replace(row, neighbour=other.run.name, paired=test if test and test.n else None))
    return result


# ---------------------------------------------------------------- text


def _neighbour_cell(row: Row) -> str:
    """`p=0.31 vs NAME` (or `p=0.01* vs NAME`: significant at 5%), `-` with nothing to test against."""
    if row.neighbour is None:
        return "-"
    if row.paired is None:
        return f"no shared predictions with {row.neighbour}"
    return f"p={row.paired.p:.2g}{'*' if row.paired.significant else ''} vs {row.neighbour}"


def _table(report: Report, group: Group) -> tuple[list[str], list[list[str]]]:
    headers = [
        "run", "model", "params", "technique", "mode", "n", "EmAcc exact", "EmAcc tolerant",
        f"{report.metric} 95% CI", "training FLOPs", "inference FLOPs/q", f"total FLOPs (Q={report.questions})",
        "s/q", *[f"FLOPs to {format_percent(target)}" for target in report.targets], "frontier",
        "vs frontier neighbour",
    ]
    cells = []
    for row in group.rows:
        run = row.run
        cells.append([
            run.name, run.model, format_params(run.params), run.technique_label, run.mode, str(run.n),
            format_percent(run.exact), format_percent(run.tolerant), format_interval(row.interval),
            format_flops(run.training_flops), format_flops(run.inference_flops_per_question),
            format_flops(row.total_flops), f"{run.seconds_per_question:.2f}", *map(_to_target_cell, row.crossings),
            "*" if row.on_frontier else "", _neighbour_cell(row),
        ])
    return headers, cells


def _by_model_table(report: Report, group: Group) -> tuple[list[str], list[list[str]]]:
    """For each model and technique, the most accurate of its runs and its cheapest run to each target."""
    headers = ["model", "params", "technique", "runs", f"best {report.metric}", "95% CI",
               *[f"FLOPs to {format_percent(target)}" for target in report.targets]]
    cells = []
    for model, family, rows in group.by_model:
        best = max(rows, key=lambda row: row.accuracy)
        cells.append([model, format_params(best.run.params), TECHNIQUE_NAMES.get(family, family), str(len(rows)),
                      format_percent(best.accuracy), format_interval(best.interval),
                      *[_cheapest_cell(rows, index) for index in range(len(report.targets))]])
    return headers, cells


def _cheapest_cell(rows: Sequence[Row], index: int) -> str:
    """The cheapest run's FLOPs to target number `index` and its name; where none reaches it, the bracket of the
    run whose interval reaches it first."""
    cheapest = _cheapest_to(rows, index)
    if cheapest:
        return f"{_to_target_cell(cheapest.crossings[index])} {cheapest.run.name}"
    nearest = min(rows, key=lambda row: row.crossings[index].earliest or math.inf)
    return _to_target_cell(nearest.crossings[index])


def _to_target_cell(crossing: Crossing) -> str:
    if crossing.unknown:
        return "unknown"
    if crossing.earliest is None:
        return "not reached"
    value = ("~" if crossing.interpolated else "") + format_flops(crossing.flops_to_target) \
        if crossing.flops_to_target is not None else "not reached"
    return f"{value} [{format_flops(crossing.earliest)}, {format_flops(crossing.surely) if crossing.surely else '-'}]"


def _summary(report: Report, group: Group) -> list[str]:
    frontier = " -> ".join(
        f"{row.run.name} ({format_percent(row.accuracy)}, {format_flops(row.total_flops)})" for row in group.frontier
    ) or "none (no run's training cost is known)"
    cheapest = [_cheapest_line(report, group, index) for index in range(len(report.targets))]
    return [*cheapest, f"Pareto frontier, cheapest first: {frontier}."]


def _cheapest_line(report: Report, group: Group, index: int) -> str:
    goal = f"{format_percent(report.targets[index])} {report.metric} EmAcc"
    cheapest = group.cheapest_to(index)
    if cheapest is None:
        best = max(group.rows, key=lambda row: row.accuracy)
        known = "of known training cost " if any(row.crossings[index].unknown for row in group.rows) else ""
        return (
            f"No run {known}reaches {goal}; the most accurate is {best.run.name} ({best.run.label}) "
            f"at {format_percent(best.accuracy)}."
        )
    crossing = cheapest.crossings[index]
    how = "interpolated on its learning curve" if crossing.interpolated else "measured"
    low, high = cheapest.interval
    inside = (f"; the target lies inside its 95% interval ({format_interval(cheapest.interval)}), so it may not "
              "truly reach it" if low <= report.targets[index] <= high else "")
    return (
        f"Cheapest to reach {goal}: {cheapest.run.name} ({cheapest.run.label}), "
        f"{format_flops(crossing.flops_to_target)} FLOPs ({how}{inside}).{_overlapping(group, cheapest, index)}"
    )


def _overlapping(group: Group, cheapest: Row, index: int) -> str:
    """` Not told apart from ...`: the runs whose FLOPs-to-target bracket overlaps the cheapest run's."""
    def bracket(row: Row) -> tuple[float, float] | None:
        crossing = row.crossings[index]
        return None if crossing.earliest is None else (crossing.earliest, crossing.surely or math.inf)

    low, high = bracket(cheapest)
    names = [row.run.name for row in group.rows if row is not cheapest and bracket(row)
             and bracket(row)[0] <= high and bracket(row)[1] >= low]
    if not names:
        return ""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f" Its FLOPs-to-target bracket overlaps those of {', '.join(names[:5])}{more}."


def _mixing_warning(report: Report) -> str | None:
    if len(report.groups) == 1:
        return None
    return (
        f"These runs were scored on {len(report.groups)} different eval sets (different question ids); "
        "each set is reported on its own, because accuracies on different questions are not comparable."
    )


def _unfinished_note(report: Report) -> str | None:
    if not report.unfinished:
        return None
    return (f"Left out {len(report.unfinished)} unfinished run(s): "
            + ", ".join(str(path.parent) for path in report.unfinished) + ".")


def _unknown_cost_note(report: Report) -> str | None:
    unknown = [row.run.name for group in report.groups for row in group.rows if row.total_flops is None]
    if not unknown:
        return None
    return (f"Training cost unknown for {len(unknown)} run(s): {', '.join(unknown)} (an adapter without the run.json "
            "of its training); they show 'unknown' FLOPs and are left out of the frontier, the FLOPs to target and "
            "the plot.")


def _notes(report: Report) -> list[str]:
    return [
        f"Total FLOPs = training FLOPs + {report.questions} questions x inference FLOPs per question. "
        "Inference FLOPs count the tokens each question needed (run.json `flops.inference_per_example`), "
        "not batch padding, so they do not depend on the batch size.",
        "FLOPs to target = training FLOPs until the learning curve first reaches the target "
        f"+ {report.questions} x the final model's inference FLOPs per question; "
        "'~' marks a crossing interpolated between two evaluations; in brackets, the same where the curve's 95% "
        "interval first reaches the target and where it first lies wholly above it ('-': not on this curve). "
        "Two runs whose brackets overlap are not told apart at this target by their curves.",
        "By model and technique: each model and technique's most accurate run, and its cheapest run to each target "
        "(a trained adapter's or checkpoint's runs count under the model it was trained from); where none reaches "
        "a target, the bracket of the run whose interval reaches it first.",
        f"The frontier (*) holds the runs that no other run beats on both {report.metric} EmAcc and total FLOPs.",
        f"95% CI: the Wilson interval of the {report.metric} EmAcc on the run's n questions.",
        "vs frontier neighbour: the exact McNemar test, over the questions both runs answered, against the frontier "
        "run before it (a frontier run) or the most accurate frontier run that costs no more (any other run); "
        "'*' marks p < 0.05, a difference unlikely to be chance.",
    ]


def _details(group: Group) -> tuple[list[str], list[list[str]]]:
    """Each run's outcomes, program accuracy, tokens and time per question, as its run.json records them."""
    headers = ["run", "model", "technique", "mode", "n", "exact", "tolerant", "program acc.", "outcomes",
               "prompt tok/q", "new tok/q", "s/q", "GFLOPs/q"]
    cells = []
    for row in group.rows:
        run, details = row.run, row.run.details
        program = details["program_accuracy"]
        cells.append([
            run.name, run.model, run.technique_label, run.mode, str(run.n), format_percent(run.exact),
            format_percent(run.tolerant), "-" if program is None else format_percent(program),
            ", ".join(f"{k} {v}" for k, v in sorted(details["outcomes"].items())),
            f"{details['prompt_tokens_per_example']:.0f}", f"{details['new_tokens_per_example']:.1f}",
            f"{run.seconds_per_question:.2f}", f"{run.inference_flops_per_question / 1e9:,.0f}",
        ])
    return headers, cells


def aligned_table(headers: list[str], cells: list[list[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, two spaces apart."""
    lines = [headers, *cells]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def _markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    lines = [headers, ["---"] * len(headers), *cells]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def format_table(report: Report) -> str:
    """The report for the terminal: per eval set, the table, the cheapest run and the frontier."""
    parts = [line for line in (_mixing_warning(report), _unfinished_note(report), _unknown_cost_note(report)) if line]
    parts += [""] if parts else []
    for group in report.groups:
        parts += [f"Eval set {group.eval_set.describe()}", aligned_table(*_table(report, group))]
        parts += [*_summary(report, group), "", "By model and technique:"]
        parts += [aligned_table(*_by_model_table(report, group)), ""]
    return "\n".join(parts + _notes(report))


def _targets_text(report: Report) -> str:
    """`Target 30.0%`, `Targets 10.0%, 20.0% and 30.0%`."""
    *rest, last = map(format_percent, report.targets)
    return f"Targets {', '.join(rest)} and {last}" if rest else f"Target {last}"


def format_markdown(report: Report, plot_name: str | None = REPORT_PNG) -> str:
    """The report as Markdown: summary, the plot (None: no plot), one table per eval set, and how to read them."""
    runs = sum(len(group.rows) for group in report.groups)
    parts = [
        "# finprog report",
        "",
        f"{_targets_text(report)} {report.metric} EmAcc, Q = {report.questions} questions, "
        f"{runs} runs on {len(report.groups)} eval set{'s' if len(report.groups) > 1 else ''}. "
        f"Written {now()} by finprog {__version__}; each run's run.json records its own date, machine and "
        "package versions.",
    ]
    for line in (_mixing_warning(report), _unfinished_note(report), _unknown_cost_note(report)):
        parts += ["", f"**{line}**"] if line else []
    if plot_name:
        parts += ["", f"![{report.metric} EmAcc against total FLOPs]({plot_name})"]
    for group in report.groups:
        parts += ["", f"## Eval set {group.eval_set.describe()}", ""]
        parts += [f"- {line}" for line in _summary(report, group)]
        parts += ["", "By model and technique:", "", _markdown_table(*_by_model_table(report, group))]
        parts += ["", "Every run:", "", _markdown_table(*_table(report, group))]
        parts += ["", "Runs in detail:", "", _markdown_table(*_details(group))]
    parts += ["", "## How to read this", "", *[f"- {note}" for note in _notes(report)]]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- files


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write report.md and report.png (unless no run's cost is known) into `out_dir`; returns their paths.

    A folder this call creates is removed again if writing fails, so nothing partial is left.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    from finprog.plot import plot_report  # matplotlib loads only when a plot is drawn

    try:
        png = plot_report(report, out_dir / REPORT_PNG) if any(group.placed for group in report.groups) else None
        markdown = out_dir / REPORT_MD
        markdown.write_text(format_markdown(report, png and png.name), encoding="utf-8")
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return [markdown, png] if png else [markdown]


def report(
    paths: list[str | Path],
    target: float | str | Sequence[float | str],
    questions: int = DEFAULT_QUESTIONS,
    metric: str = DEFAULT_METRIC,
    out: str | Path | None = None,
) -> tuple[Report, list[Path]]:
    """`finprog report`: read the runs under `paths`, score them against `target` (one or several), and write
    report.md and report.png to `out`.

    Returns the report and the files written (none when `out` is None).
    """
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise ReportError(f"out must be a folder's path, got {out!r}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ReportError(f"--out {out} is a file; give a folder for report.md and report.png")
    files, unfinished = find_run_files(paths)
    result = replace(build_report([load_run(file) for file in files], target, questions, metric),
                     unfinished=tuple(unfinished))
    return result, write_report(result, out) if out is not None else []
