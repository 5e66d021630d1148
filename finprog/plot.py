"""The report's plot: per eval set, accuracy (with its 95% interval) against total FLOPs, the targets, the frontier,
and the labels of the runs a reader needs: the frontier's and each target's cheapest (the table names the rest)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator, PercentFormatter
from matplotlib.transforms import blended_transform_factory

from finprog.labels import TECHNIQUE_NAMES, format_flops, format_percent

if TYPE_CHECKING:  # the report is drawn, never imported: report.py imports this module to draw it
    from finprog.report import Group, Report

_COLOURS = {
    "zero-shot": "tab:gray", "few-shot": "tab:blue", "lora": "tab:orange", "qlora": "tab:green", "full": "tab:red",
    "cascade": "tab:purple",
}
_OTHER_COLOUR = "tab:brown"
_MARKERS = {"program": "o", "direct": "s"}
_OTHER_MARKER = "D"
# Label positions tried around a point, nearest first, as offsets in typographic points.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1.4), (0, -1.4))
_OFFSETS = [(dx * radius, dy * radius) for radius in (7, 16, 28, 42, 58, 76) for dx, dy in _DIRECTIONS]


def plot_report(report: Report, path: str | Path) -> Path:
    """Write the PNG: per eval set, accuracy against total FLOPs (log), a line per target and the frontier.

    Only the runs whose total FLOPs are known are placed (`Group.placed`); an eval set with none gets no panel.
    """
    groups = [replace(group, rows=group.placed) for group in report.groups if group.placed]
    figure = Figure(figsize=(12, 6.5 * len(groups)), dpi=130)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(groups), 1, squeeze=False)[:, 0]
    for axis, group in zip(axes, groups):
        _plot_group(axis, report, group)
    figure.tight_layout()
    for axis, group in zip(axes, groups):
        _place_labels(axis, report, group)
    path = Path(path)
    figure.savefig(path)
    return path


def _plot_group(axis, report: Report, group: Group) -> None:
    """One eval set's panel: each run's point (and learning curve), the frontier, the targets and the legend."""
    inference = {row.run.path: report.questions * row.run.inference_flops_per_question for row in group.rows}
    for row in group.rows:
        colour = _COLOURS.get(row.run.family, _OTHER_COLOUR)
        if row.run.curve:
            xs = [point.train_flops + inference[row.run.path] for point in row.run.curve]
            ys = [getattr(point, report.metric) for point in row.run.curve]
            axis.plot(xs, ys, color=colour, alpha=0.35, linewidth=1, marker=".", markersize=4)
        axis.errorbar(row.total_flops, row.accuracy, yerr=[[row.accuracy - row.interval[0]],
                                                            [row.interval[1] - row.accuracy]],
                      fmt="none", ecolor=colour, alpha=0.6 if row.on_frontier else 0.3, linewidth=1, capsize=2)
        axis.scatter(
            row.total_flops, row.accuracy, s=90 if row.on_frontier else 55, color=colour, zorder=3,
            marker=_MARKERS.get(row.run.mode, _OTHER_MARKER), edgecolors="black" if row.on_frontier else "none",
        )
    frontier = group.frontier
    axis.plot([row.total_flops for row in frontier], [row.accuracy for row in frontier],
              color="black", linewidth=1.2, drawstyle="steps-post", zorder=2)
    for index, target in enumerate(report.targets):
        _plot_target(axis, group, index, target)
    _set_axes(axis, report, group, costs=[row.total_flops for row in group.rows] + list(inference.values()))
    axis.legend(handles=_legend_handles(report, group), loc="best", fontsize=8, framealpha=0.9)


def _plot_target(axis, group: Group, index: int, target: float) -> None:
    """The target's dashed line, labelled at its right end with the cheapest FLOPs to it, and that run's star."""
    axis.axhline(target, color="crimson", linestyle="--", linewidth=1)
    cheapest = group.cheapest_to(index)
    flops = None if cheapest is None else cheapest.crossings[index].flops_to_target
    reached = "not reached" if flops is None else f"cheapest {format_flops(flops)}"
    axis.text(0.995, target, f"target {format_percent(target)}: {reached}", color="crimson", fontsize=7.5,
              ha="right", va="bottom", transform=blended_transform_factory(axis.transAxes, axis.transData))
    if flops is not None:  # under the run markers (zorder), so a run sitting on the target stays visible
        axis.scatter(flops, target, marker="*", s=220, color="gold", edgecolors="black", zorder=2.5)


def _set_axes(axis, report: Report, group: Group, costs: list[float]) -> None:
    """Log FLOPs from a quarter of the cheapest to four times the dearest cost; whole percentages of accuracy."""
    axis.set_xscale("log")
    axis.set_xlim(min(costs) / 4, max(costs) * 4)
    top = max([row.accuracy for row in group.rows] + list(report.targets))
    axis.set_ylim(0, min(1.0, top + 0.1))
    axis.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))  # whole percentages: ticks every 1, 2, 5, 10 ...
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axis.grid(True, which="major", alpha=0.3)
    axis.set_xlabel(f"total FLOPs to answer {report.questions} questions (training + inference), log scale")
    axis.set_ylabel(f"{report.metric} EmAcc")
    axis.set_title(f"Eval set {group.eval_set.describe()}", loc="left")


def _legend_handles(report: Report, group: Group) -> list[Line2D]:
    """The techniques and modes present, the frontier, the targets, and the curve and star when drawn."""
    present = {row.run.family for row in group.rows}
    techniques = [t for t in _COLOURS if t in present] + sorted(present - _COLOURS.keys())
    modes = sorted({row.run.mode for row in group.rows})
    handles = [
        Line2D([], [], color=_COLOURS.get(technique, _OTHER_COLOUR), marker="o", linestyle="",
               label=TECHNIQUE_NAMES.get(technique, technique))
        for technique in techniques
    ]
    handles += [
        Line2D([], [], color="dimgray", marker=_MARKERS.get(mode, _OTHER_MARKER), linestyle="", label=f"{mode} mode")
        for mode in modes
    ]
    handles += [
        Line2D([], [], color="dimgray", marker="|", markersize=10, linestyle="", label="95% interval of EmAcc"),
        Line2D([], [], color="black", linewidth=1.2, label="Pareto frontier (outlined, labelled)"),
        Line2D([], [], color="crimson", linestyle="--", label="target EmAcc (labelled on the line)"),
    ]
    if any(row.run.curve for row in group.rows):
        handles.append(Line2D([], [], color="gray", alpha=0.5, marker=".", label="learning curve"))
    if any(group.cheapest_to(index) for index in range(len(report.targets))):
        handles.append(Line2D([], [], color="gold", marker="*", markersize=12, markeredgecolor="black", linestyle="",
                              label="cheapest to a target: its FLOPs to target"))
    return handles


def _labelled(report: Report, group: Group) -> list:
    """The rows a reader needs named on the plot: the frontier's and each target's cheapest."""
    winners = {id(group.cheapest_to(index)) for index in range(len(report.targets))}
    return [row for row in group.rows if row.on_frontier or id(row) in winners]


def _place_labels(axis, report: Report, group: Group) -> None:
    """Label the frontier's and the targets' runs, each at the nearby spot that covers the least of the other
    marks."""
    renderer = axis.figure.canvas.get_renderer()
    heavy = []  # markers (with a margin), the legend and the labels placed so far, as pixel boxes
    for collection in axis.collections:
        if not isinstance(collection, PathCollection):  # the error bars
            continue
        radius = math.sqrt(collection.get_sizes()[0]) / 2 * axis.figure.dpi / 72 + 4
        for centre in axis.transData.transform(collection.get_offsets()):
            heavy.append(np.concatenate([centre - radius, centre + radius]))
    heavy.append(axis.get_legend().get_window_extent(renderer).extents)
    heavy += [text.get_window_extent(renderer).extents for text in axis.texts]  # the target labels
    light = np.vstack([  # the lines, as small boxes along them
        _line_boxes(line.get_transform().transform(line.get_path().vertices)) for line in axis.get_lines()
    ])
    frame = axis.get_window_extent(renderer).extents
    for row in _labelled(report, group):
        heavy.append(_place_label(axis, renderer, row, heavy, light, frame))


def _place_label(axis, renderer, row, heavy: list, light, frame) -> np.ndarray:
    """Annotate `row`'s point at the first offset that costs nothing, else the cheapest; returns the label's box.

    Cost: 10 x the area over heavy boxes or outside the frame, plus the area over the lines.
    """
    best = None
    for dx, dy in _OFFSETS:
        far = max(abs(dx), abs(dy)) > 10
        text = axis.annotate(
            f"{row.run.model}\n{row.run.technique_label} {row.run.mode}", (row.total_flops, row.accuracy),
            xytext=(dx, dy), textcoords="offset points", fontsize=7.5,
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            va="bottom" if dy > 0 else "top" if dy < 0 else "center",
            arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.6} if far else None,
        )
        text.update_positions(renderer)
        box = Text.get_window_extent(text, renderer).extents  # the text alone: its arrow may cross marks
        outside = (box[2] - box[0]) * (box[3] - box[1]) - _overlap(box, frame[None])
        cost = 10 * (_overlap(box, np.array(heavy)) + outside) + _overlap(box, light)
        if best is None or cost < best[0]:
            if best is not None:
                best[1].remove()
            best = (cost, text, box)
        else:
            text.remove()
        if cost == 0:
            break
    return best[2]


def _line_boxes(vertices, spacing: float = 5.0, half: float = 1.5):
    """Small boxes every `spacing` pixels along a polyline given in pixels."""
    samples = [vertices[:1]]
    for start, end in zip(vertices[:-1], vertices[1:]):
        steps = max(1, int(np.hypot(*(end - start)) / spacing))
        samples.append(start + (end - start) * np.linspace(0, 1, steps + 1)[1:, None])
    points = np.vstack(samples)
    return np.hstack([points - half, points + half])


def _overlap(box, others) -> float:
    """Total area that `box` shares with the rows of `others` (all boxes as x0, y0, x1, y1)."""
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    return float((width * height).sum())


def plot_sweep(result: dict, path: str | Path) -> Path:
    """Write the PNG of a cascade sweep: accuracy against inference FLOPs per question over the thresholds."""
    figure = Figure(figsize=(8, 5), dpi=130)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    points = result["points"]
    axis.plot([p["flops_per_question"] for p in points], [p["accuracy"] for p in points], color=_COLOURS["cascade"],
              marker=".", markersize=4, linewidth=1, label=f"cascade, rule {result['rule']} over its thresholds")
    for alone in result["alone"]:
        axis.scatter(alone["flops_per_question"], alone["accuracy"], s=60, color="black", zorder=3)
        axis.annotate(alone["model"], (alone["flops_per_question"], alone["accuracy"]), xytext=(6, 6),
                      textcoords="offset points", fontsize=8)
    axis.axhline(result["target"], color="crimson", linestyle="--", linewidth=1,
                 label=f"target {format_percent(result['target'])}")
    if result["chosen"]:
        chosen = result["chosen"]
        axis.scatter(chosen["flops_per_question"], chosen["accuracy"], marker="*", s=220, color="gold",
                     edgecolors="black", zorder=4, label=f"chosen: {chosen['rule']}")
    axis.set_xscale("log")
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axis.grid(True, which="major", alpha=0.3)
    axis.set_xlabel("inference FLOPs per question, log scale")
    axis.set_ylabel(f"{result['metric']} EmAcc")
    axis.set_title(f"Cascade {' > '.join(result['models'])} on {result['eval_set']['name']}", loc="left", fontsize=9)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path
