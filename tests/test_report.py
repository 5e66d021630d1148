"""Tests for finprog.report: FLOPs-to-target, the frontier, eval-set groups, bad run.json files, the files written."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
from matplotlib.figure import Figure

from finprog.plot import _plot_group
from finprog.report import (
    ReportError,
    build_report,
    format_flops,
    format_markdown,
    format_table,
    load_run,
    load_runs,
    pareto_frontier,
    parse_target,
    report,
    write_report,
)

from finprog.runs import RunError
from finprog.stats import wilson_interval

SET_A = "a" * 64
SET_B = "b" * 64


def write_run(folder, exact, inference=1e12, training=0.0, curve=None, technique=None, ids=SET_A, n=100, **config):
    """Write a run.json for `n` questions in `folder`; `curve` lists (cumulative training FLOPs, exact accuracy)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "kind": "train" if curve else "solve",
        "status": "finished",
        "config": {"model": "tiny", "mode": "program", "technique": technique or ("lora" if curve else "few-shot"),
                   "shots": 4, **config},
        "eval_set": {"name": "test_100", "n": n, "ids_sha256": ids},
        "model": {"name": "tiny", "params": 500_000_000},
        "metrics": {"n": n, "exact": exact, "tolerant": exact, "program_accuracy": None, "outcomes": {},
                    "prompt_tokens_per_example": 900, "new_tokens_per_example": 20},
        "flops": {"inference_per_example": inference, "inference_per_example_executed": inference,
                  "training_total": training},
        "timing": {"seconds_per_example": 0.5},
    }
    if curve:
        record["curve"] = [
            {"step": step, "train_flops": flops, "exact": accuracy, "tolerant": min(1.0, accuracy + 0.1)}
            for step, (flops, accuracy) in enumerate(curve)
        ]
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def only_group(result):
    (group,) = result.groups
    return {row.run.name: row for row in group.rows}, group


# ---------------------------------------------------------------- FLOPs to target


def test_training_run_interpolates_between_evaluations(tmp_path):
    write_run(tmp_path / "lora", exact=0.4, training=3e16, curve=[(0, 0.1), (1e16, 0.2), (3e16, 0.4)])
    rows, _ = only_group(build_report(load_runs([tmp_path]), target=0.3, questions=100))
    row = rows["lora"]
    # halfway from 20% to 40% is halfway from 1e16 to 3e16 training FLOPs; plus 100 questions x 1e12
    assert row.target_training_flops == pytest.approx(2e16)
    assert row.flops_to_target == pytest.approx(2e16 + 1e14)
    assert row.interpolated
    assert row.total_flops == pytest.approx(3e16 + 1e14)


def test_crossing_exactly_at_an_evaluation_is_not_interpolated(tmp_path):
    write_run(tmp_path / "lora", exact=0.4, training=3e16, curve=[(0, 0.1), (1e16, 0.2), (3e16, 0.4)])
    rows, _ = only_group(build_report(load_runs([tmp_path]), target=0.2, questions=100))
    assert rows["lora"].target_training_flops == pytest.approx(1e16)
    assert not rows["lora"].interpolated


def test_first_evaluation_already_meeting_the_target_needs_no_training(tmp_path):
    write_run(tmp_path / "lora", exact=0.5, training=2e16, curve=[(0, 0.35), (2e16, 0.5)])
    rows, _ = only_group(build_report(load_runs([tmp_path]), target=0.3, questions=10))
    assert rows["lora"].target_training_flops == 0
    assert rows["lora"].flops_to_target == pytest.approx(10 * 1e12)
    assert not rows["lora"].interpolated


def test_tolerant_metric_reads_the_tolerant_curve(tmp_path):
    # the tolerant curve is exact + 0.1: 0.2, 0.3, 0.5 -> reaches 40% halfway between 1e16 and 3e16
    write_run(tmp_path / "lora", exact=0.4, training=3e16, curve=[(0, 0.1), (1e16, 0.2), (3e16, 0.4)])
    exact_rows, _ = only_group(build_report(load_runs([tmp_path]), target=0.4, questions=1, metric="exact"))
    tolerant_rows, _ = only_group(build_report(load_runs([tmp_path]), target=0.4, questions=1, metric="tolerant"))
    assert exact_rows["lora"].target_training_flops == pytest.approx(3e16)
    assert tolerant_rows["lora"].target_training_flops == pytest.approx(2e16)


def test_run_without_training_costs_its_inference_when_it_reaches_the_target(tmp_path):
    write_run(tmp_path / "few", exact=0.31, inference=2e12)
    write_run(tmp_path / "zero", exact=0.29, inference=1e12, technique="zero-shot")
    rows, group = only_group(build_report(load_runs([tmp_path]), target=30, questions=1000))
    assert rows["few"].flops_to_target == pytest.approx(2e15)
    assert not rows["few"].interpolated
    assert rows["zero"].flops_to_target is None
    assert group.cheapest is rows["few"]


def test_nothing_reaching_the_target_says_not_reached(tmp_path):
    write_run(tmp_path / "lora", exact=0.25, training=1e16, curve=[(0, 0.1), (1e16, 0.25)])
    write_run(tmp_path / "few", exact=0.2)
    result = build_report(load_runs([tmp_path]), target=0.3, questions=100)
    rows, group = only_group(result)
    assert rows["lora"].flops_to_target is None and rows["few"].flops_to_target is None
    assert group.cheapest is None
    text = format_table(result)
    assert text.count("not reached") == 4  # in each run's row and in each model and technique's
    assert "No run reaches 30.0% exact EmAcc; the most accurate is lora" in text


def test_accuracy_equal_to_the_target_up_to_rounding_reaches_it(tmp_path):
    write_run(tmp_path / "few", exact=1 - 0.93)  # 0.06999999999999995
    rows, _ = only_group(build_report(load_runs([tmp_path]), target="7%", questions=1))
    assert rows["few"].flops_to_target is not None


@pytest.mark.parametrize("given, fraction", [(0.3, 0.3), ("0.3", 0.3), (30, 0.3), ("30", 0.3), ("30%", 0.3),
                                             ("0.5%", 0.005), (1, 1.0), (100, 1.0)])
def test_target_is_a_fraction_up_to_one_and_a_percentage_above(given, fraction):
    assert parse_target(given) == pytest.approx(fraction)


@pytest.mark.parametrize("given", [0, -0.2, 101, "150%", "abc", "nan"])
def test_target_out_of_range_is_refused(given):
    with pytest.raises(ReportError, match="target"):
        parse_target(given)


def test_bad_metric_and_question_count_are_refused(tmp_path):
    runs = load_runs([write_run(tmp_path / "few", exact=0.2)])
    with pytest.raises(ReportError, match="metric 'program'"):
        build_report(runs, target=0.3, metric="program")
    with pytest.raises(ReportError, match="questions"):
        build_report(runs, target=0.3, questions=0)


def test_flops_to_target_brackets_where_the_curves_interval_reaches_the_target(tmp_path):
    curve = [(1e16, 0.2), (2e16, 0.35), (3e16, 0.5)]
    write_run(tmp_path / "lora", exact=0.5, training=3e16, curve=curve)
    write_run(tmp_path / "other", exact=0.6, training=1e17, curve=[(1e17, 0.6)])  # its bracket: 1e17 and 1e17
    rows, group = only_group(build_report(load_runs([tmp_path]), target=0.4, questions=1))
    crossing = rows["lora"].crossings[0]
    (_, high20), (low35, high35), (low50, _) = (wilson_interval(round(100 * a), 100) for _, a in curve)
    assert high20 < 0.4 < high35 and low35 < 0.4 < low50
    assert crossing.earliest == pytest.approx(1e16 + (0.4 - high20) / (high35 - high20) * 1e16 + 1e12)
    assert crossing.surely == pytest.approx(2e16 + (0.4 - low35) / (low50 - low35) * 1e16 + 1e12)
    assert crossing.earliest < crossing.flops_to_target < crossing.surely
    assert "overlaps" not in format_table(build_report(load_runs([tmp_path]), target=0.4, questions=1))
    # at 50%, lora's lower bound never reaches it: its bracket is open and overlaps other's
    rows, _ = only_group(build_report(load_runs([tmp_path]), target=0.5, questions=1))
    assert rows["lora"].crossings[0].surely is None and rows["other"].crossings[0].surely == pytest.approx(1e17 + 1e12)
    text = format_table(build_report(load_runs([tmp_path]), target=0.5, questions=1))
    assert "[" in text and ", -]" in text and "bracket overlaps those of other" in text


def write_three_runs(runs):
    """Three runs, each cheapest to one of 10%, 20% and 30% for 100 questions."""
    write_run(runs / "few", exact=0.15, inference=2e12)  # 2e14 FLOPs for 100 questions: reaches 10% only
    write_run(runs / "lora", exact=0.4, inference=1e12, training=3e16, curve=[(0, 0.05), (1e16, 0.25), (3e16, 0.4)])
    write_run(runs / "big", exact=0.35, inference=1e14)  # 1e16 FLOPs: reaches all three
    return runs


def test_several_targets_each_get_their_flops_and_cheapest_run(tmp_path):
    runs = load_runs([write_three_runs(tmp_path / "runs")])
    result = build_report(runs, target=[0.3, "10%", 20, 0.3], questions=100)
    assert result.targets == pytest.approx((0.1, 0.2, 0.3))  # ascending, once each
    rows, group = only_group(result)
    lora = [crossing.flops_to_target for crossing in rows["lora"].crossings]
    # 10% a quarter of the way from 5% to 25%, 20% three quarters, 30% a third from 25% to 40%; + 100 x 1e12
    assert lora == pytest.approx([2.5e15 + 1e14, 7.5e15 + 1e14, 1e16 + 2e16 / 3 + 1e14])
    assert all(crossing.interpolated for crossing in rows["lora"].crossings)
    assert [crossing.flops_to_target for crossing in rows["few"].crossings] == [pytest.approx(2e14), None, None]
    assert [group.cheapest_to(i).run.name for i in range(3)] == ["few", "lora", "big"]
    assert group.cheapest is group.cheapest_to(0) and rows["lora"].flops_to_target == lora[0]


def test_several_targets_in_the_table_markdown_and_json(tmp_path):
    result = build_report(load_runs([write_three_runs(tmp_path / "runs")]), target=[0.1, 0.2, 0.3], questions=100)
    text = format_table(result)
    header = text.splitlines()[1]
    assert header.index("FLOPs to 10.0%") < header.index("FLOPs to 20.0%") < header.index("FLOPs to 30.0%")
    assert "Cheapest to reach 10.0% exact EmAcc: few" in text
    assert "Cheapest to reach 20.0% exact EmAcc: lora (tiny LoRA + 4-shot program), 7.60e15 FLOPs (interpolated" in text
    assert "Cheapest to reach 30.0% exact EmAcc: big" in text
    assert [line for line in text.splitlines() if line.startswith("few ")][0].count("not reached") == 2
    markdown = format_markdown(result)
    assert "Targets 10.0%, 20.0% and 30.0% exact EmAcc, Q = 100 questions" in markdown
    assert "| FLOPs to 10.0% | FLOPs to 20.0% | FLOPs to 30.0% |" in markdown
    data = json.loads(json.dumps(result.to_dict()))
    assert data["targets"] == [0.1, 0.2, 0.3] and data["target"] == 0.1
    (group,) = data["groups"]
    assert [entry["cheapest"].split("/")[-2] for entry in group["to_targets"]] == ["few", "lora", "big"]
    assert group["cheapest"] == group["to_targets"][0]["cheapest"]
    few = next(row for row in group["rows"] if row["name"] == "few")
    assert [entry["flops_to_target"] for entry in few["to_targets"]] == [pytest.approx(2e14), None, None]


def as_adapter_run(folder, adapter, base=None):
    """Make the solve run in `folder` one of the adapter `adapter` (base recorded as `base`; None: not recorded)."""
    record = json.loads((folder / "run.json").read_text())
    record["config"]["model"] = str(adapter)
    record["model"] = {"name": str(adapter), "source": "adapter", "params": 500_000_000}
    if base:
        record["model"]["base"] = base
    (folder / "run.json").write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize("recorded", [True, False])
def test_each_model_and_technique_gets_its_cheapest_run_to_each_target(tmp_path, recorded):
    runs = write_three_runs(tmp_path / "runs")
    # the LoRA run's adapter asked again, more cheaply: it counts under the model it was trained from, recorded in
    # its run.json or (an older record) read from the training run beside the adapter
    as_adapter_run(write_run(runs / "lora_again", exact=0.45, inference=5e11, training=3e16, technique="lora"),
                   runs / "lora", base="tiny" if recorded else None)
    result = build_report(load_runs([runs]), target=[0.1, 0.45], questions=100)
    (group,) = result.groups
    assert [(model, family, [row.run.name for row in rows]) for model, family, rows in group.by_model] == [
        ("tiny", "few-shot", ["few", "big"]), ("tiny", "lora", ["lora_again", "lora"])]  # cheapest first
    table = format_markdown(result)
    assert "| tiny | 500M | few-shot | 2 | 35.0% | 26.4-44.7% | 2.00e14 [2.00e14, -] few | not reached |" in table
    assert ("| tiny | 500M | LoRA | 2 | 45.0% | 35.6-54.8% | ~2.60e15 [1.00e14, 5.20e15] lora | "
            "3.00e16 [3.00e16, -] lora_again |") in table
    assert "By model and technique:" in format_table(result)
    (data,) = json.loads(json.dumps(result.to_dict()))["groups"]
    lora = data["by_model"][1]
    assert lora["model"] == "tiny" and [path.split("/")[-2] for path in lora["to_targets"]] == ["lora", "lora_again"]


def test_a_checkpoint_recorded_at_a_folder_since_moved_is_found_beside_its_solve_run(tmp_path):
    runs = write_three_runs(tmp_path / "runs")  # "lora" is a training run of the model "tiny"
    as_adapter_run(write_run(runs / "lora_test", exact=0.45, technique="lora"), tmp_path / "old" / "place" / "lora")
    (group,) = build_report(load_runs([runs]), target=0.1).groups
    assert [(model, family, [row.run.name for row in rows]) for model, family, rows in group.by_model] == [
        ("tiny", "few-shot", ["few", "big"]), ("tiny", "lora", ["lora", "lora_test"])]


def test_an_adapter_whose_training_is_unknown_counts_under_its_own_name(tmp_path):
    write_run(tmp_path / "runs" / "few", exact=0.15)
    as_adapter_run(write_run(tmp_path / "runs" / "other", exact=0.2, technique="lora"), tmp_path / "gone")
    (group,) = build_report(load_runs([tmp_path / "runs"]), target=0.1).groups
    assert [(model, family) for model, family, _ in group.by_model] == [("gone", "lora"), ("tiny", "few-shot")]


def test_one_target_reads_as_before(tmp_path):
    result = build_report(load_runs([write_three_runs(tmp_path / "runs")]), target=0.2, questions=100)
    assert result.targets == (0.2,) and "Target 20.0% exact EmAcc" in format_markdown(result)
    assert format_table(result).count("Cheapest to reach") == 1
    assert result.to_dict()["target"] == 0.2


def test_no_target_is_refused(tmp_path):
    with pytest.raises(ReportError, match="no target given"):
        build_report(load_runs([write_run(tmp_path / "few", exact=0.2)]), target=[])


def test_several_targets_draw_one_labelled_line_each(tmp_path):
    result = build_report(load_runs([write_three_runs(tmp_path / "runs")]), target=[0.1, 0.2, 0.3], questions=100)
    _, png = write_report(result, tmp_path / "out")
    assert png_size(png)[0] > 800
    axis = Figure().subplots()
    _plot_group(axis, result, result.groups[0])
    dashed = sorted(line.get_ydata()[0] for line in axis.get_lines() if line.get_linestyle() == "--")
    assert dashed == pytest.approx([0.1, 0.2, 0.3])
    assert [text.get_text() for text in axis.texts] == [
        "target 10.0%: cheapest 2.00e14", "target 20.0%: cheapest 7.60e15", "target 30.0%: cheapest 1.00e16"]


# ---------------------------------------------------------------- frontier and cheapest


def test_frontier_drops_dominated_runs_and_keeps_ties(tmp_path):
    # total FLOPs for 1 question = inference per question
    write_run(tmp_path / "cheap", exact=0.1, inference=1e15)
    write_run(tmp_path / "best", exact=0.3, inference=2e15)
    write_run(tmp_path / "twin", exact=0.3, inference=2e15)  # identical to best: neither dominates
    write_run(tmp_path / "worse_same_cost", exact=0.25, inference=2e15)
    write_run(tmp_path / "dearer_same_accuracy", exact=0.3, inference=5e15)
    write_run(tmp_path / "dearer_less_accurate", exact=0.2, inference=3e15)
    write_run(tmp_path / "most_accurate", exact=0.5, inference=9e15)
    result = build_report(load_runs([tmp_path]), target=0.3, questions=1)
    _, group = only_group(result)
    assert [row.run.name for row in group.frontier][:1] == ["cheap"]
    assert {row.run.name for row in group.frontier} == {"cheap", "best", "twin", "most_accurate"}
    assert [row.total_flops for row in group.rows] == sorted(row.total_flops for row in group.rows)


def beaten(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """`a` costs no more and is no less accurate than `b`, and is better in one (accuracies within 1e-9 equal)."""
    return a[0] <= b[0] and a[1] >= b[1] - 1e-9 and (a[0] < b[0] or a[1] > b[1] + 1e-9)


def test_the_pareto_frontier_keeps_the_points_no_other_beats_cheapest_first():
    points = [(2.0, 0.3), (1.0, 0.1), (2.0, 0.3), (2.0, 0.25), (5.0, 0.3), (3.0, 0.2), (9.0, 0.5), (1.0, 0.1 - 1e-12)]
    assert pareto_frontier(points) == [1, 7, 0, 2, 6]  # ties: the more accurate first, then the earlier
    assert pareto_frontier([]) == []
    random = __import__("random").Random(0)
    for _ in range(200):
        points = [(float(random.randint(1, 6)), random.randint(0, 5) / 5) for _ in range(random.randint(1, 12))]
        expected = [i for i, p in enumerate(points) if not any(beaten(q, p) for q in points)]
        assert sorted(pareto_frontier(points)) == expected


def test_cheapest_tie_goes_to_the_more_accurate_run(tmp_path):
    # both reach 30% for 2e15 FLOPs: "just" by inference alone, "trained" after 1e15 training + 1e15 inference
    write_run(tmp_path / "just", exact=0.3, inference=2e15)
    write_run(tmp_path / "trained", exact=0.6, inference=1e15, training=2e15, curve=[(0, 0.0), (2e15, 0.6)])
    rows, group = only_group(build_report(load_runs([tmp_path]), target=0.3, questions=1))
    assert rows["just"].flops_to_target == rows["trained"].flops_to_target == 2e15
    assert rows["just"].total_flops < rows["trained"].total_flops
    assert group.cheapest.run.name == "trained"


def test_trained_run_can_be_cheapest_to_target_without_being_cheapest_overall(tmp_path):
    # the LoRA run reaches 30% after 1e16 training FLOPs, before its 5e16 total; the 7B few-shot run costs 3e16
    write_run(tmp_path / "lora", exact=0.5, inference=1e12, training=5e16, curve=[(0, 0.0), (2e16, 0.6)])
    write_run(tmp_path / "big_few_shot", exact=0.35, inference=3e13)
    _, group = only_group(build_report(load_runs([tmp_path]), target=0.3, questions=1000))
    assert group.cheapest.run.name == "lora"
    assert group.cheapest.flops_to_target == pytest.approx(1e16 + 1e15)


# ---------------------------------------------------------------- eval sets


def test_runs_on_different_eval_sets_are_grouped_not_mixed(tmp_path):
    write_run(tmp_path / "a_strong", exact=0.6, inference=1e12, ids=SET_A)
    write_run(tmp_path / "a_weak", exact=0.1, inference=5e12, ids=SET_A)
    write_run(tmp_path / "b_weak", exact=0.1, inference=5e12, ids=SET_B)
    result = build_report(load_runs([tmp_path]), target=0.5, questions=1)
    assert [{row.run.name for row in group.rows} for group in result.groups] == [{"a_strong", "a_weak"}, {"b_weak"}]
    by_name = {row.run.name: row for group in result.groups for row in group.rows}
    assert not by_name["a_weak"].on_frontier
    assert by_name["b_weak"].on_frontier  # a_strong would dominate it, but was scored on other questions
    assert result.groups[1].cheapest is None
    for text in (format_table(result), format_markdown(result)):
        assert "2 different eval sets" in text
        assert "ids sha256 aaaaaaaaaaaa" in text and "ids sha256 bbbbbbbbbbbb" in text
    assert len(json.loads(json.dumps(result.to_dict()))["groups"]) == 2


def test_single_eval_set_has_no_mixing_warning(tmp_path):
    write_run(tmp_path / "few", exact=0.2)
    assert "different eval sets" not in format_table(build_report(load_runs([tmp_path]), target=0.3))


# ---------------------------------------------------------------- finding and reading runs


def test_runs_are_found_in_run_folders_files_and_parents_once_each(tmp_path):
    write_run(tmp_path / "compare" / "x", exact=0.1)
    write_run(tmp_path / "compare" / "deeper" / "y", exact=0.2)
    single = write_run(tmp_path / "z", exact=0.3)
    runs = load_runs([tmp_path / "compare", single, single / "run.json", tmp_path / "compare" / "x"])
    assert sorted(run.name for run in runs) == ["x", "y", "z"]


def test_runs_in_folders_of_the_same_name_are_named_with_their_parent(tmp_path):
    write_run(tmp_path / "page" / "qwen_program", exact=0.1)
    write_run(tmp_path / "retrieved" / "qwen_program", exact=0.2)
    write_run(tmp_path / "retrieved" / "qwen_direct", exact=0.0)
    runs = load_runs([tmp_path])
    assert sorted(run.name for run in runs) == ["page/qwen_program", "qwen_direct", "retrieved/qwen_program"]


def test_a_local_model_is_named_by_its_folder(tmp_path):
    folder = write_run(tmp_path / "lora_solve", exact=0.1)
    record = json.loads((folder / "run.json").read_text())
    record["model"].update(name="evals/runs/train/tiny_lora", source="adapter")
    (folder / "run.json").write_text(json.dumps(record))
    assert load_run(folder / "run.json").model == "tiny_lora"


def test_unfinished_runs_in_a_folder_are_left_out_and_named(tmp_path):
    write_run(tmp_path / "runs" / "done", exact=0.1)
    running = tmp_path / "runs" / "running"
    running.mkdir(parents=True)
    (running / "run.json").write_text(json.dumps({"kind": "solve", "status": "running", "config": {}}))
    result, _ = report([tmp_path / "runs"], target=0.3)
    assert [row.run.name for row in result.groups[0].rows] == ["done"]
    assert "Left out 1 unfinished run(s): " + str(running) in format_table(result)
    with pytest.raises(RunError, match="not finished .status 'running'.; continue it with --resume"):
        load_runs([running])


def test_folder_without_runs_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="empty: no run.json"):
        load_runs([tmp_path / "empty"])
    with pytest.raises(ReportError, match="missing: no such file"):
        load_runs([tmp_path / "missing"])


def test_invalid_json_names_the_file_and_line(tmp_path):
    (tmp_path / "run.json").write_text('{"kind": "solve",\n  oops}')
    with pytest.raises(RunError, match=r"run.json: invalid JSON at line 2"):
        load_run(tmp_path / "run.json")


def break_field(folder, dotted, value):
    """Rewrite one field of folder/run.json; value None deletes it."""
    record = json.loads((folder / "run.json").read_text())
    *parents, last = dotted.split(".")
    target = record
    for key in parents:
        target = target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    (folder / "run.json").write_text(json.dumps(record))
    return folder / "run.json"


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        ("metrics.exact", None, "field 'metrics.exact' is missing"),
        ("metrics.exact", "12%", "field 'metrics.exact' must be a number from 0 to 1, got '12%'"),
        ("metrics.exact", 12, "field 'metrics.exact' must be a number from 0 to 1, got 12"),
        ("flops.inference_per_example", 0, "field 'flops.inference_per_example' must be a number from 1"),
        ("eval_set", None, "field 'eval_set.name' is missing"),
        ("eval_set", [], "field 'eval_set' must be an object, got list"),
        ("kind", "evaluate", "field 'kind' must be 'solve' or 'train' or 'cascade'"),
        ("config.constrained", "yes", "field 'config.constrained' must be true or false"),
    ],
)
def test_malformed_run_json_names_the_file_and_field(tmp_path, dotted, value, message):
    path = break_field(write_run(tmp_path / "run1", exact=0.2), dotted, value)
    with pytest.raises(RunError) as caught:
        load_run(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_training_run_needs_a_curve_with_rising_flops(tmp_path):
    folder = write_run(tmp_path / "lora", exact=0.3, training=2e16, curve=[(0, 0.1), (2e16, 0.3)])
    record = json.loads((folder / "run.json").read_text())
    record["curve"][1]["train_flops"] = -1.0
    (folder / "run.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match=r"'curve\[1\].train_flops' must be a number from 0"):
        load_run(folder / "run.json")
    record["curve"] = [record["curve"][0] | {"train_flops": 5e16}, record["curve"][0] | {"train_flops": 1e16}]
    (folder / "run.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match=r"'curve\[1\].train_flops' is smaller than the one before it"):
        load_run(folder / "run.json")
    break_field(folder, "curve", [])
    with pytest.raises(RunError, match="'curve' must be a non-empty list"):
        load_run(folder / "run.json")
    break_field(folder, "curve", None)
    with pytest.raises(RunError, match="'curve' is missing"):
        load_run(folder / "run.json")


def test_technique_label_spells_out_the_configuration(tmp_path):
    few = load_run(write_run(tmp_path / "a", exact=0.1, shots=4, constrained=True, samples=8) / "run.json")
    qlora = load_run(write_run(tmp_path / "b", exact=0.1, technique="qlora", shots=0, quant="nf4",
                               curve=[(0, 0.1)]) / "run.json")
    direct = load_run(write_run(tmp_path / "c", exact=0.1, technique="zero-shot", shots=0, quant="int8") / "run.json")
    assert few.technique_label == "4-shot constrained, 8 samples"
    assert qlora.technique_label == "QLoRA"
    assert direct.technique_label == "zero-shot int8"


# ---------------------------------------------------------------- output


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_writes_markdown_and_a_png(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "zero", exact=0.05, inference=1e12, technique="zero-shot")
    write_run(runs / "few", exact=0.2, inference=6e12)
    write_run(runs / "lora", exact=0.4, inference=1e12, training=5e16, curve=[(0, 0.05), (2.5e16, 0.3), (5e16, 0.4)])
    write_run(runs / "other_set", exact=0.2, ids=SET_B)
    result, files = report([runs], target=0.35, questions=1000, out=tmp_path / "out")
    markdown, png = files
    assert markdown.name == "report.md" and png.name == "report.png"
    text = markdown.read_text()
    assert "](report.png)" in text
    assert "| lora | tiny | 500M | LoRA + 4-shot | program | 100 | 40.0% | 40.0% | 30.9-49.8% |" in text
    assert "~3.85e16" in text  # 2.5e16 + 0.5 * 2.5e16 training + 1000 x 1e12 inference
    width, height = png_size(png)
    assert width > 800 and height > 1000  # two eval sets, two panels
    assert png.stat().st_size > 20_000
    assert result.to_dict()["groups"][0]["cheapest"].endswith("run.json")


def test_single_panel_png_for_one_eval_set(tmp_path):
    write_run(tmp_path / "runs" / "few", exact=0.2)
    result = build_report(load_runs([tmp_path / "runs"]), target=0.3)
    _, png = write_report(result, tmp_path / "out")
    width, height = png_size(png)
    assert 800 < width and 400 < height < width


def test_format_flops():
    assert [format_flops(x) for x in (0, 1.234e17, 9.999e11, 5e9)] == ["0", "1.23e17", "1.00e12", "5.00e9"]


def test_import_does_not_load_matplotlib():
    code = "import sys, finprog.report; print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]
