"""Cascades on tiny random checkpoints: signals, rules, routing, FLOPs over attempts, the sweep's exactness, bad input."""

import json
import math
import shutil
from pathlib import Path

import pytest

from finprog import models
from finprog.cascade import CascadeError, cascade_row, parse_rule, route
from finprog.cli import main
from finprog.report import report
from finprog.runs import RunError
from finprog.solve import SolveOptions, agreement, solve
from finprog.sweep import candidate_thresholds, frontier, load_runs, question_attempts, sweep
from shared_data import REPO, finqa_file
from test_report import write_run

DEMO = REPO / "data" / "demo.json"
COMMON = ["--data", str(DEMO), "--limit", "4", "--batch-size", "1", "--max-new-tokens", "8", "--shots", "1",
          "--exemplars", str(finqa_file("train_100.json")), "--dtype", "fp32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_qwen2_checkpoint_dir):
    """The tiny Qwen2 checkpoint dressed as a `finprog train` output (prompted zero-shot with the whole page,
    1e12 training FLOPs)."""
    folder = tmp_path_factory.mktemp("trained") / "tiny_lora"
    shutil.copytree(tiny_qwen2_checkpoint_dir, folder)
    write_run(folder, exact=0.0, training=1e12, curve=[(1e12, 0.0)], shots=0, max_prompt_tokens=300, context="page")
    return str(folder)


@pytest.fixture(scope="module")
def singles(tmp_path_factory, tiny_checkpoint_dir, trained):
    """Each model alone on the same 4 questions, as the sweep reads them."""
    out = tmp_path_factory.mktemp("singles")
    for name, model in (("small", tiny_checkpoint_dir), ("trained", trained)):
        assert main(["solve", "--model", model, *COMMON, "--out", str(out / name), "--json"]) == 0
    return [out / "small", out / "trained"]


def middle_threshold(singles) -> float:
    """A log-prob threshold at which the first model keeps some questions and passes others on."""
    rule = parse_rule("logprob", open_term=True)
    thresholds = candidate_thresholds(rule, load_runs(singles, rule))
    return thresholds[len(thresholds) // 2]


def rows_of(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- signals


def test_every_completion_records_finite_log_probabilities(singles):
    for folder in singles:
        for row in rows_of(folder):
            assert math.isfinite(row["logprob_mean"]) and math.isfinite(row["logprob_min"])
            assert row["logprob_min"] <= row["logprob_mean"] <= 0


def test_samples_record_their_agreement_with_the_winner(tmp_path, tiny_checkpoint_dir):
    options = SolveOptions(model=tiny_checkpoint_dir, data=str(DEMO), limit=2, max_new_tokens=6, shots=1, samples=3,
                           exemplars=str(finqa_file("train_100.json")), dtype="fp32")
    solve(options, tmp_path / "run", progress=False)
    for row in rows_of(tmp_path / "run"):
        assert row["agreement"] == agreement(row["value"], [s["value"] for s in row["samples"]])
        assert 0 <= row["agreement"] <= 1
        assert all(s["logprob_min"] <= s["logprob_mean"] <= 0 for s in row["samples"])


def test_agreement_counts_values_equal_at_five_decimals():
    assert agreement(2.0, [2.0, 2.000001, 3.0, None]) == 0.5
    assert agreement(None, [None, None]) == 0.0
    assert agreement("yes", ["yes", "no", "yes"]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- rules and routing


def test_rules_read_and_print_back():
    rule = parse_rule("executes+logprob:-0.3")
    assert str(rule) == "executes+logprob:-0.3" and not rule.needs_samples
    assert rule.accepts({"value": 1.0, "logprob_mean": -0.3})
    assert not rule.accepts({"value": None, "logprob_mean": -0.1})
    assert not rule.accepts({"value": 1.0, "logprob_mean": -0.31})
    assert parse_rule("agree:0.6").accepts({"agreement": 2 / 3}) and parse_rule("agree:1").needs_samples
    assert parse_rule("minlogprob:-2").accepts({"logprob_min": -1.5})
    swept = parse_rule("executes+logprob", open_term=True)
    assert swept.open_term.signal == "logprob" and str(swept.with_threshold(-0.25)) == "executes+logprob:-0.25"


@pytest.mark.parametrize("text, message", [
    ("confident", "unknown acceptance rule term 'confident'"),
    ("logprob:0.5", "out of range; it must be at most 0"),
    ("agree:1.5", "out of range; it must be a fraction from 0 to 1"),
    ("agree:-0.1", "out of range"),
    ("logprob", "logprob needs a value"),
    ("logprob:abc", "not a number"),
    ("executes:1", "executes takes no value"),
    ("logprob:-1+logprob:-2", "names a signal twice"),
])
def test_bad_rules_are_refused(text, message):
    with pytest.raises(CascadeError, match=message):
        parse_rule(text)


def test_only_one_term_may_be_left_open_for_a_sweep():
    with pytest.raises(CascadeError, match="only one term"):
        parse_rule("logprob+agree", open_term=True)


def test_a_question_goes_on_until_a_model_is_accepted_and_pays_for_every_attempt():
    rule = parse_rule("executes+logprob:-0.5")
    attempt = {"id": "q", "prompt_tokens": 10, "new_tokens": 3, "seconds": 1.0, "flops_executed": 2.0,
               "ranker_flops": 0.5}
    tries = [
        {**attempt, "model": "a", "value": None, "logprob_mean": -0.1, "flops": 1.0, "exact": False},
        {**attempt, "model": "b", "value": 2.0, "logprob_mean": -0.9, "flops": 10.0, "exact": False},
        {**attempt, "model": "c", "value": 3.0, "logprob_mean": -3.0, "flops": 100.0, "exact": True},
    ]
    assert [a["model"] for a in route(rule, tries)] == ["a", "b", "c"]  # the last model is always accepted
    tries[1]["logprob_mean"] = -0.4
    routed = route(rule, tries)
    row = cascade_row(routed)
    assert [a["model"] for a in routed] == ["a", "b"] and row["answered_by"] == "b"
    summed = (row["flops"], row["new_tokens"], row["prompt_tokens"], row["ranker_flops"])
    assert row["value"] == 2.0 and summed == (11.0, 6, 20, 1.0)
    assert [a["model"] for a in row["attempts"]] == ["a", "b"] and "id" not in row["attempts"][0]


# ---------------------------------------------------------------- the live cascade against the sweep


def test_the_sweep_predicts_a_live_cascade_exactly(tmp_path, singles, tiny_checkpoint_dir, trained, capsys):
    runs = load_runs(singles, parse_rule("logprob", open_term=True))
    threshold = middle_threshold(singles)
    accept = f"logprob:{threshold}"
    out = tmp_path / "cascade"
    assert main(["solve", "--cascade", tiny_checkpoint_dir, trained, "--accept", accept, *COMMON,
                 "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answered_by"]
    record = json.loads((out / "run.json").read_text())
    live = {row["id"]: row for row in rows_of(out)}

    rule = parse_rule(accept)
    predicted = {qid: cascade_row(route(rule, tries)) for qid, tries in question_attempts(runs).items()}
    assert set(live) == set(predicted)
    for qid, row in live.items():
        expected = predicted[qid]
        for key in ("answered_by", "completion", "value", "outcome", "exact", "flops", "logprob_mean"):
            assert row[key] == expected[key], (qid, key)
        assert [a["model"] for a in row["attempts"]] == [a["model"] for a in expected["attempts"]]
        assert row["flops"] == sum(a["flops"] for a in row["attempts"])
        assert row["ranker_flops"] == sum(a["ranker_flops"] for a in row["attempts"])
        assert row["attempts"][0]["ranker_flops"] > 0  # the first model is shown retrieved facts
    assert {row["answered_by"] for row in live.values()} == {tiny_checkpoint_dir, trained}, "the rule routed nothing"

    result, files = sweep(singles, rule="logprob", target=0.0001, out=tmp_path / "sweep")
    point = next(p for p in result["points"] if p["threshold"] == threshold)
    assert point["accuracy"] == record["metrics"]["exact"]
    assert point["flops_per_question"] == pytest.approx(record["flops"]["inference_per_example"], rel=1e-12)
    assert point["answered_by"] == record["answered_by"]
    assert record["flops"]["training_total"] == 1e12  # the trained model's, counted once
    assert record["kind"] == "cascade" and record["config"]["technique"] == f"cascade({accept})"
    stages = record["config"]["stages"]
    assert [s["context"] for s in stages] == ["retrieved", "page"]  # the trained model's as it was trained
    assert [s["shots"] for s in stages] == [1, 1] and stages[1]["max_prompt_tokens"] == 300
    assert [f.name for f in files] == ["sweep.json", "sweep.txt", "sweep.png"]


def write_single_run(folder, model, flops, logprobs, exact, training=0.0):
    """A finished single-model run on questions q0, q1, ... with the given per-question signals and outcomes."""
    ids = [f"q{i}" for i in range(len(exact))]
    write_run(folder, exact=sum(exact) / len(exact), inference=flops, training=training, n=len(ids), model=model)
    rows = [{"id": i, "value": 1.0, "logprob_mean": lp, "logprob_min": lp - 1, "exact": ok, "tolerant": ok,
             "flops": flops} for i, lp, ok in zip(ids, logprobs, exact)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.mark.parametrize("target, rule, accuracy, flops", [
    (1.0, "logprob:-0.2", 1.0, (4 * 1 + 2 * 10) / 4),  # the two confident answers kept, the others passed on
    (0.75, "logprob:-1.0", 0.75, (4 * 1 + 1 * 10) / 4),
    (0.5, "logprob:-2.0", 0.5, 1.0),  # every answer of the cheap model kept
])
def test_the_sweep_picks_the_cheapest_threshold_that_meets_the_target(tmp_path, target, rule, accuracy, flops):
    cheap = write_single_run(tmp_path / "a", "a", 1, [-0.1, -0.2, -1.0, -2.0], [True, True, False, False])
    dear = write_single_run(tmp_path / "b", "b", 10, [-0.5] * 4, [True] * 4, training=5.0)
    result, files = sweep([cheap, dear], rule="logprob", target=target, out=tmp_path / "sweep")
    chosen = result["chosen"]
    assert (chosen["rule"], chosen["accuracy"], chosen["flops_per_question"]) == (rule, accuracy, flops)
    assert [p["threshold"] for p in result["points"]] == [-2.0, -1.0, -0.2, -0.1, 0.0]
    assert result["points"][-1]["answered_by"] == {"b": 4} and result["training_flops"] == 5.0
    bins = {(b["low"], b["high"]): (b["n"], b["accuracy"]) for b in result["calibration"][0]["bins"]}
    assert bins == {(None, -2.0): (1, 0.0), (-2.0, -1.0): (1, 0.0), (-0.25, -0.1): (2, 1.0)}
    assert f"--accept {rule}" in (tmp_path / "sweep" / "sweep.txt").read_text()


def test_the_sweeps_frontier_shows_thresholds_that_route_alike_once():
    swept = [(-2.0, 0.5, 1.0), (-1.0, 0.5, 1.0), (-0.5, 0.75, 4.0), (-0.2, 0.5, 6.0), (0.0, 1.0, 10.0)]
    points = [{"threshold": t, "accuracy": a, "flops_per_question": f} for t, a, f in swept]
    assert [p["threshold"] for p in frontier(points)] == [-2.0, -0.5, 0.0]


def test_a_sweep_without_a_reachable_target_says_so(tmp_path):
    cheap = write_single_run(tmp_path / "a", "a", 1, [-0.1, -2.0], [True, False])
    dear = write_single_run(tmp_path / "b", "b", 10, [-0.5, -0.5], [False, False])
    result, _ = sweep([cheap, dear], rule="executes+logprob", target=0.9)
    assert result["chosen"] is None
    assert max(p["accuracy"] for p in result["points"]) == 0.5


def test_the_sweeps_ends_are_each_model_alone(singles):
    result, _ = sweep(singles, rule="logprob", target=0.5)
    first = result["points"][0]
    assert first["answered_by"] == {result["models"][0]: 4}
    assert first["flops_per_question"] == pytest.approx(result["alone"][0]["flops_per_question"])
    for model in result["calibration"]:
        assert sum(b["n"] for b in model["bins"]) == 4


def test_a_cascade_is_one_run_in_the_report(tmp_path, singles, tiny_checkpoint_dir, trained):
    out = tmp_path / "cascade"
    assert main(["solve", "--cascade", tiny_checkpoint_dir, trained, "--accept", "executes", *COMMON,
                 "--out", str(out), "--json"]) == 0
    result, files = report([out, *singles], target=0.5, out=tmp_path / "report")
    rows = {row.run.path.parent.name: row for row in result.groups[0].rows}
    assert rows["cascade"].run.technique == "cascade(executes)" and rows["cascade"].run.family == "cascade"
    assert rows["cascade"].run.training_flops == 1e12
    assert rows["cascade"].run.model == f"{Path(tiny_checkpoint_dir).name} > tiny_lora"
    assert len(result.groups) == 1 and all(f.exists() for f in files)


def test_a_cascade_run_json_without_its_models_is_refused(tmp_path):
    folder = write_run(tmp_path / "cascade", exact=0.5, technique="cascade(executes)")
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, "kind": "cascade"}))
    with pytest.raises(RunError, match="field 'config.cascade' is missing"):
        report([folder], target=0.5)


# ---------------------------------------------------------------- bad input


@pytest.fixture
def no_loading(monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))


@pytest.mark.parametrize("arguments, message", [
    (["--cascade", "CKPT"], "a cascade needs at least two models, got 1"),
    (["--cascade", "CKPT", "CKPT", "--accept", "sure"], "unknown acceptance rule term 'sure'"),
    (["--cascade", "CKPT", "CKPT", "--accept", "logprob:0.2"], "logprob:0.2 is out of range"),
    (["--cascade", "CKPT", "CKPT", "--accept", "agree:2"], "agree:2 is out of range"),
    (["--cascade", "CKPT", "CKPT", "--accept", "agree:0.5"], "give --samples 2 or more"),
    (["--cascade", "CKPT", "NOTOK"], "its tokenizer cannot be found"),
    (["--accept", "executes"], "--accept goes with --cascade"),
    (["--cascade", "CKPT", "CKPT", "--model", "CKPT"], "not both"),
])
def test_bad_cascades_fail_in_one_line_before_any_model_loads(tmp_path, tiny_checkpoint_dir, no_loading, capsys,
                                                              arguments, message):
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_checkpoint_dir, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "special*"))
    named = {"CKPT": tiny_checkpoint_dir, "NOTOK": str(no_tokenizer)}
    code = main(["solve", *[named.get(a, a) for a in arguments], "--data", str(DEMO), "--limit", "1",
                 "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and message in error[0], error
    assert not (tmp_path / "run").exists()


def test_the_sweep_refuses_runs_on_different_questions(tmp_path, singles, tiny_checkpoint_dir, capsys):
    other = tmp_path / "other"
    assert main(["solve", "--model", tiny_checkpoint_dir, *COMMON[:3], "2", *COMMON[4:], "--out", str(other),
                 "--json"]) == 0
    capsys.readouterr()
    code = main(["cascade-sweep", str(singles[0]), str(other), "--rule", "logprob", "--target", "0.1",
                 "--out", str(tmp_path / "sweep")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "different examples" in error[0]


@pytest.mark.parametrize("arguments, message", [
    (["RUN0"], "at least two models, got 1"),
    (["RUN0", "RUN1", "--rule", "agree"], "do not record agreement (agreement needs --samples 2 or more)"),
    (["RUN0", "RUN1", "--rule", "logprob:1"], "out of range"),
])
def test_bad_sweeps_fail_in_one_line(tmp_path, singles, capsys, arguments, message):
    named = {"RUN0": str(singles[0]), "RUN1": str(singles[1])}
    arguments = [named.get(a, a) for a in arguments]
    arguments += [] if "--rule" in arguments else ["--rule", "logprob"]
    code = main(["cascade-sweep", *arguments, "--target", "0.1", "--out", str(tmp_path / "sweep")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and message in error[0], error


def test_an_interrupted_cascade_resumes_without_losing_answered_questions(tmp_path, singles, tiny_checkpoint_dir,
                                                                          trained, capsys):
    out = tmp_path / "cascade"
    accept = f"logprob:{middle_threshold(singles)}"
    command = ["solve", "--cascade", tiny_checkpoint_dir, trained, "--accept", accept, *COMMON, "--out", str(out), "--json"]
    assert main(command) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # interrupted after one question
    assert main([*command[:4], "--accept", "executes", *command[6:], "--resume"]) == 2  # another rule: refused
    assert "accept: 'logprob:" in capsys.readouterr().err
    assert main([*command, "--resume"]) == 0
    assert (out / "predictions.jsonl").read_text().splitlines()[0] == lines[0]

    def answers(rows):
        return sorted((r["id"], r["answered_by"], r["completion"], r["flops"]) for r in rows)

    assert answers(rows_of(out)) == answers(map(json.loads, lines))
    assert len({r["answered_by"] for r in rows_of(out)}) == 2


def test_a_cascade_stopped_by_ctrl_c_is_marked_interrupted_and_resumes(tmp_path, tiny_checkpoint_dir, trained,
                                                                        monkeypatch, capsys):
    from finprog import cascade as module

    real, calls = module.scored_rows, []

    def interrupted_in_the_second_model(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        yield from real(*args, **kwargs)

    monkeypatch.setattr(module, "scored_rows", interrupted_in_the_second_model)
    out = tmp_path / "cascade"
    command = ["solve", "--cascade", tiny_checkpoint_dir, trained, "--accept", "logprob:0", *COMMON, "--out", str(out),
               "--json"]
    assert main(command) == 130
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and "Ctrl-C" in record["reason"]
    monkeypatch.setattr(module, "scored_rows", real)
    assert main(command) == 2 and "--resume" in capsys.readouterr().err
    assert main([*command, "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished" and len(rows_of(out)) == 4
