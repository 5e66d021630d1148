"""Every bad input gets one line and exit status 2 before any model loads, and no computed prediction is lost."""

import importlib
import json
import math
import os
import pkgutil
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import finprog
from finprog.cli import main
from finprog.report import load_run
from finprog.runs import DAMAGED, LOCK, PREDICTIONS, RUN, SCHEMA_VERSION, RunRecord
from shared_data import REPO

DEMO = REPO / "data" / "demo.json"


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def one_line_error(code: int, err: str, *parts: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("finprog: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], (part, lines[0])


def solve_args(checkpoint, out, *more):
    return ["solve", "--model", checkpoint, "--data", DEMO, "--limit", "3", "--mode", "direct",
            "--max-new-tokens", "3", "--dtype", "fp32", "--out", out, "--json", *more]


@pytest.fixture
def finished_run(tmp_path, tiny_checkpoint_dir, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *solve_args(tiny_checkpoint_dir, out))[0] == 0
    return out


def lines_of(out):
    return (out / PREDICTIONS).read_text().splitlines()


def mark_running(out):
    record = json.loads((out / RUN).read_text())
    (out / RUN).write_text(json.dumps({**record, "status": "running"}))


@pytest.mark.parametrize("where", [0, 1, 2])
def test_resume_sets_a_damaged_line_aside_and_keeps_every_other_row(finished_run, tiny_checkpoint_dir, capsys, where):
    lines = lines_of(finished_run)
    damaged = lines[where][:40]
    (finished_run / PREDICTIONS).write_text("\n".join(lines[:where] + [damaged] + lines[where + 1:]) + "\n")
    mark_running(finished_run)
    code, err = run_cli(capsys, *solve_args(tiny_checkpoint_dir, finished_run, "--resume"))
    assert code == 0 and f"line {where + 1} is not a whole prediction" in err
    after = lines_of(finished_run)
    kept = [line for line in lines if line != lines[where]]
    assert after[:2] == kept and len({json.loads(line)["id"] for line in after}) == 3  # only the damaged one redone
    assert (finished_run / DAMAGED).read_text() == damaged + "\n"


def test_a_second_writer_on_a_held_folder_gets_one_line_naming_the_holder(tmp_path, tiny_checkpoint_dir, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from finprog.runs import lock; h = lock(Path(sys.argv[1])); print('held', flush=True); "
                               "time.sleep(60)", str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_cli(capsys, *solve_args(tiny_checkpoint_dir, out, "--resume"))
        one_line_error(code, err, str(out), f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK).is_file()  # the holder was killed: its lock died with it
    assert run_cli(capsys, *solve_args(tiny_checkpoint_dir, out))[0] == 0


def test_an_interrupted_run_is_marked_and_the_next_plain_run_says_resume(tmp_path, tiny_checkpoint_dir, capsys,
                                                                         monkeypatch):
    from finprog import solve

    real = solve.scored_rows

    def interrupted(*args, **kwargs):
        rows = real(*args, **kwargs)
        yield next(rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(solve, "scored_rows", interrupted)
    out = tmp_path / "run"
    assert run_cli(capsys, *solve_args(tiny_checkpoint_dir, out))[0] == 130
    record = json.loads((out / RUN).read_text())
    assert record["status"] == "interrupted" and "Ctrl-C" in record["reason"] and len(lines_of(out)) == 1
    monkeypatch.setattr(solve, "scored_rows", real)
    one_line_error(*run_cli(capsys, *solve_args(tiny_checkpoint_dir, out)), "interrupted", "--resume", "--out")
    assert run_cli(capsys, *solve_args(tiny_checkpoint_dir, out, "--resume"))[0] == 0
    assert len(lines_of(out)) == 3


@pytest.mark.parametrize("more, message", [
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--limit", "-1"], "--limit must be at least 1, got -1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be at least 1, got -1"),
    (["--samples", "2", "--temperature", "0"], "--temperature must be above 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
])
def test_nonsense_settings_are_refused_before_any_model_loads(tmp_path, tiny_checkpoint_dir, capsys, no_model_loads,
                                                               more, message):
    one_line_error(*run_cli(capsys, *solve_args(tiny_checkpoint_dir, tmp_path / "run", *more)), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, message", [
    ("[]", "holds no examples"),
    ("", "holds no examples"),
    ('{\n  "id": "x"\n}\n', "holds one JSON object; expected a JSON list"),
    (b'[{"id": "caf\xe9"}]', "not UTF-8 text (byte 12"),
    ('[{"id": "q1", "qa": {"question": "q?", "program": "add(1, 2)"}}]', "record 'q1' has no page"),
])
def test_bad_data_files_are_refused_before_any_model_loads(tmp_path, tiny_checkpoint_dir, capsys, no_model_loads,
                                                           content, message):
    data = tmp_path / "data.json"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = solve_args(tiny_checkpoint_dir, tmp_path / "run")
    args[args.index("--data") + 1] = data
    one_line_error(*run_cli(capsys, *args), str(data), message)
    assert not (tmp_path / "run").exists()


def test_non_utf8_files_get_one_line_in_every_command(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'[{"id": "\xff"}]')
    for args in (["data", "info", bad], ["evaluate", bad, "demo"], ["evaluate", "data/demo_predictions.jsonl", bad]):
        one_line_error(*run_cli(capsys, *args), str(bad), "not UTF-8 text (byte 9")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN).write_bytes(b'{"kind": "\xff"}')
    one_line_error(*run_cli(capsys, "report", tmp_path / "run", "--target", "30", "--out", tmp_path / "r"),
                   "not UTF-8 text")


def test_a_prompt_longer_than_the_model_is_cut_to_fit_or_refused(tmp_path, tiny_checkpoint_dir, capsys):
    data = json.loads(DEMO.read_text())[:2]
    data[0]["pre_text"] = ["Filler sentence number %d about nothing in particular." % i for i in range(400)]
    path = tmp_path / "long.json"
    path.write_text(json.dumps(data))
    args = solve_args(tiny_checkpoint_dir, tmp_path / "run") + ["--context", "page"]
    args[args.index("--data") + 1] = path
    assert run_cli(capsys, *args)[0] == 0
    record = json.loads((tmp_path / "run" / RUN).read_text())
    assert record["context_cut"] == {"positions": 8192, "max_prompt_tokens": 8189, "prompts_cut": 1}
    assert record["metrics"]["n"] == 2 and max(r["prompt_tokens"] for r in map(json.loads, lines_of(tmp_path / "run"))) <= 8189
    data[0]["qa"]["question"] = "why? " * 3000  # the question alone is longer than the model
    path.write_text(json.dumps(data))
    args[args.index("--out") + 1] = tmp_path / "run2"
    one_line_error(*run_cli(capsys, *args), "even cut to its question", "8192 positions")


@pytest.mark.parametrize("change, message", [
    (lambda record: record.pop("model"), "field 'model.name' is missing"),
    (lambda record: record["metrics"].pop("exact"), "field 'metrics.exact' is missing"),
])
def test_compare_names_the_file_and_field_of_a_malformed_run(finished_run, tmp_path, capsys, change, message):
    record = json.loads((finished_run / RUN).read_text())
    change(record)
    (finished_run / RUN).write_text(json.dumps(record))
    one_line_error(*run_cli(capsys, "compare", finished_run, finished_run), str(finished_run / RUN), message)


def test_compare_refuses_a_null_prediction_line(finished_run, capsys):
    lines = lines_of(finished_run)
    (finished_run / PREDICTIONS).write_text("\n".join(lines[:2] + ["null"]) + "\n")
    one_line_error(*run_cli(capsys, "compare", finished_run, finished_run), str(finished_run / PREDICTIONS),
                   "2 whole predictions for 3 questions")


def test_out_naming_a_file_gets_one_line(finished_run, tmp_path, tiny_checkpoint_dir, capsys):
    taken = tmp_path / "taken.md"
    taken.write_text("keep me")
    one_line_error(*run_cli(capsys, "report", finished_run, "--target", "30", "--out", taken), str(taken), "is a file")
    assert taken.read_text() == "keep me"
    one_line_error(*run_cli(capsys, *solve_args(tiny_checkpoint_dir, taken)), str(taken), "is a file")
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("option, value", [("--new-tokens", "0"), ("--prompt-tokens", "-5")])
def test_flops_refuses_token_counts_below_one(tiny_checkpoint_dir, capsys, option, value):
    one_line_error(*run_cli(capsys, "flops", tiny_checkpoint_dir, option, value), f"{option} must be at least 1")


# ---------------------------------------------------------------- adapters: checked whole before any weights load


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_checkpoint_dir, demo_split):
    """A finished `finprog train` LoRA run of one step on the tiny checkpoint: run.json, adapter config and weights."""
    from finprog.training import TrainOptions, train

    out = tmp_path_factory.mktemp("lora") / "run"
    train(TrainOptions(model=tiny_checkpoint_dir, train=demo_split / "train.json", eval=demo_split / "eval.json",
                       mode="direct", max_steps=1, batch_size=2, eval_limit=2, eval_at_start=False,
                       max_new_tokens=2, max_prompt_tokens=None, lora_r=2), out, progress=False)
    return out


@pytest.fixture
def adapter(lora_run, tmp_path):
    """A copy of the tiny LoRA run folder, to damage."""
    copy = tmp_path / "adapter"
    shutil.copytree(lora_run, copy)
    return copy


def rewrite_config(change):
    def damage(folder):
        path = folder / "adapter_config.json"
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))
        return path
    return damage


def write_config(content: bytes):
    def damage(folder):
        (folder / "adapter_config.json").write_bytes(content)
        return folder / "adapter_config.json"
    return damage


def rewrite_weights(change):
    def damage(folder):
        path = folder / "adapter_model.safetensors"
        path.write_bytes(change(path.read_bytes()))
        return path
    return damage


def header_length(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


DAMAGES = {
    "config not JSON": (write_config(b"{not json"), "not readable as JSON"),
    "config empty": (write_config(b""), "not readable as JSON"),
    "config not UTF-8": (write_config(b'{"r": "\xff"}'), "not readable as JSON"),
    "config a list": (write_config(b"[1, 2]"), "expected a JSON object, got list"),
    "config a string": (write_config(b'"LORA"'), "expected a JSON object, got str"),
    "config without peft_type": (rewrite_config(lambda c: c.pop("peft_type")), "field 'peft_type' is missing"),
    "config with a numeric base": (rewrite_config(lambda c: c.update(base_model_name_or_path=5)),
                                   "field 'base_model_name_or_path' is missing or of the wrong type"),
    "config with a text rank": (rewrite_config(lambda c: c.update(r="2")), "field 'r' is missing or of the wrong type"),
    "weights cut in half": (rewrite_weights(lambda d: d[: len(d) // 2]), "but the file has"),
    "weights cut inside the header": (rewrite_weights(lambda d: d[:20]), "cannot hold the safetensors header"),
    "weights of 4 bytes": (rewrite_weights(lambda d: d[:4]), "cannot hold the safetensors header"),
    "weights with a byte more": (rewrite_weights(lambda d: d + b"\0"), "but the file has"),
    "weights header not JSON": (rewrite_weights(lambda d: d[:8] + b"x" * header_length(d) + d[8 + header_length(d):]),
                                "its header is not the JSON object"),
    "weights without data offsets": (
        rewrite_weights(lambda d: (lambda h: len(h).to_bytes(8, "little") + h + d[8 + header_length(d):])(
            json.dumps({k: {**v, "data_offsets": None} if k != "__metadata__" else v
                        for k, v in json.loads(d[8:8 + header_length(d)]).items()}).encode())),
        "its header is not the JSON object"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_solve_refuses_a_damaged_adapter_in_one_line_before_any_model_loads(adapter, tmp_path, capsys,
                                                                          no_model_loads, damage):
    change, message = DAMAGES[damage]
    damaged = change(adapter)
    one_line_error(*run_cli(capsys, *solve_args(adapter, tmp_path / "out")), str(damaged), message)
    assert not (tmp_path / "out").exists()
    with pytest.raises(finprog.FinprogError, match=message):  # the library raises the same typed error
        finprog.solve_run(finprog.SolveOptions(model=adapter, data=DEMO, limit=1), tmp_path / "out", progress=False)


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_export_refuses_what_solve_refuses_and_leaves_nothing(adapter, tmp_path, capsys, damage):
    change, message = DAMAGES[damage]
    damaged = change(adapter)
    one_line_error(*run_cli(capsys, "export-adapter", adapter, tmp_path / "dest"), str(damaged), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no dest, no partial folder


def test_export_writes_every_file_with_the_same_mode(lora_run, tmp_path, capsys):
    assert run_cli(capsys, "export-adapter", lora_run, tmp_path / "dest")[0] == 0
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "dest").iterdir()}
    assert set(modes) == {"adapter_model.safetensors", "adapter_config.json", "run.json", "README.md"}
    assert len(set(modes.values())) == 1, modes
    assert not list(tmp_path.glob(".*partial"))


# ---------------------------------------------------------------- a trained model is never free


def unknown_cost_run(adapter, tmp_path, capsys, name="unknown") -> tuple[dict, str]:
    (adapter / RUN).unlink()
    code, err = run_cli(capsys, *solve_args(adapter, tmp_path / name))
    assert code == 0, err
    return json.loads((tmp_path / name / RUN).read_text()), err


def test_an_adapter_without_its_run_json_warns_and_records_an_unknown_training_cost(adapter, tmp_path, capsys):
    record, err = unknown_cost_run(adapter, tmp_path, capsys)
    warnings = [line for line in err.splitlines() if line.startswith("finprog: warning: ")]
    assert len(warnings) == 1 and str(adapter) in warnings[0] and "training cost is recorded as unknown" in warnings[0]
    assert "--prompt" in warnings[0] and "Traceback" not in err
    assert record["flops"]["training_total"] is None and "no run.json" in record["flops"]["training_unknown"]
    assert record["config"]["prompt"] == "instructed"  # nothing to inherit: solve's defaults, as the warning says


def test_a_report_never_places_an_unknown_training_cost_at_zero(adapter, finished_run, tmp_path, capsys):
    unknown_cost_run(adapter, tmp_path, capsys)
    lone = tmp_path / "lone"  # every run of unknown cost: a table, no plot
    result, files = finprog.report_runs(str(tmp_path / "unknown"), target=0.01, out=lone)
    assert [path.name for path in files] == ["report.md"]
    assert "Pareto frontier, cheapest first: none (no run's training cost is known)" in (lone / "report.md").read_text()
    row = result.groups[0].rows[0]
    assert row.total_flops is None and not row.on_frontier and result.groups[0].cheapest is None

    assert main(["report", str(tmp_path / "unknown"), str(finished_run), "--target", "0.01", "--json",
                 "--out", str(tmp_path / "json")]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    rows = {Path(row["path"]).parent.name: row for group in groups for row in group["rows"]}
    assert rows["unknown"]["training_flops"] is None and rows["unknown"]["total_flops"] is None
    assert not rows["unknown"]["on_frontier"] and rows["unknown"]["flops_to_target"] is None
    assert rows["run"]["training_flops"] == 0 and rows["run"]["total_flops"] > 0
    assert main(["report", str(tmp_path / "unknown"), str(finished_run), "--target", "0.01",
                 "--out", str(tmp_path / "both")]) == 0
    table = capsys.readouterr().out
    line = next(line for line in table.splitlines() if line.startswith("unknown "))
    assert "unknown" in line.split()[1:] and " 0 " not in line
    assert "Training cost unknown for 1 run(s): unknown" in table
    assert (tmp_path / "both" / "report.png").is_file()


def test_a_version_1_record_of_an_adapter_at_zero_cost_is_read_as_unknown(finished_run, tmp_path):
    record = json.loads((finished_run / RUN).read_text())
    del record["schema_version"]
    record["model"]["source"] = "adapter"  # version 1 wrote 0 for an adapter whose training it did not know
    (finished_run / RUN).write_text(json.dumps(record))
    loaded = RunRecord.load(finished_run).validate()
    assert loaded.get("flops.training_total") is None and "recorded as 0" in loaded.get("flops.training_unknown")
    assert load_run(finished_run / RUN).training_flops is None
    record["model"]["source"] = "checkpoint"  # a pretrained checkpoint's 0 is its cost
    (finished_run / RUN).write_text(json.dumps(record))
    assert load_run(finished_run / RUN).training_flops == 0


def test_every_committed_run_loads_and_reports_the_numbers_its_run_json_holds():
    files = sorted((REPO / "evals").rglob("run.json"))
    assert len(files) > 50
    for path in files:
        raw = json.loads(path.read_text())
        if raw.get("status") != "finished":
            continue
        run = load_run(path)
        assert (run.training_flops, run.inference_flops_per_question, run.exact, run.tolerant) == (
            raw["flops"]["training_total"], raw["flops"]["inference_per_example"], raw["metrics"]["exact"],
            raw["metrics"]["tolerant"]), path
        assert RunRecord.load(path).data["schema_version"] == SCHEMA_VERSION


def test_every_committed_adapters_model_card_is_written_from_its_run_json(tmp_path):
    from finprog.model_card import write_model_card

    adapters = [folder for folder in sorted((REPO / "evals" / "adapters").iterdir()) + sorted(
        (REPO / "finprog" / "adapters").iterdir()) if (folder / RUN).is_file()]
    assert len(adapters) >= 10
    for adapter in adapters:  # old records included: each names the options it ran with once upgraded
        copy = tmp_path / adapter.name
        copy.mkdir()
        for file in adapter.iterdir():
            (copy / file.name).symlink_to(file)
        (copy / "README.md").unlink(missing_ok=True)
        text = write_model_card(copy).read_text()
        assert f"# {adapter.name}" in text and "finprog train --model" in text, adapter


# ---------------------------------------------------------------- run.json: versions, finite numbers, kinds


def test_a_new_run_json_carries_the_schema_version(finished_run):
    assert json.loads((finished_run / RUN).read_text())["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("version, message", [
    (SCHEMA_VERSION + 1, "written by a newer finprog"),
    ("2", "field 'schema_version' must be a whole number"),
    (0, "field 'schema_version' must be a whole number"),
])
def test_a_run_json_of_an_unknown_version_gets_one_line(finished_run, tmp_path, capsys, version, message):
    record = json.loads((finished_run / RUN).read_text())
    (finished_run / RUN).write_text(json.dumps({**record, "schema_version": version}))
    one_line_error(*run_cli(capsys, "report", finished_run, "--target", "0.3", "--out", tmp_path / "r"),
                   str(finished_run / RUN), message)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field, value", [
    ("flops.training_total", math.inf), ("flops.inference_per_example", math.inf), ("flops.training_total", math.nan),
    ("timing.seconds_per_example", -math.inf), ("metrics.prompt_tokens_per_example", math.inf),
])
def test_infinite_or_nan_numbers_in_run_json_are_refused_and_no_report_is_left(finished_run, tmp_path, capsys,
                                                                              field, value):
    record = json.loads((finished_run / RUN).read_text())
    section, key = field.split(".")
    record[section][key] = value
    (finished_run / RUN).write_text(json.dumps(record))
    one_line_error(*run_cli(capsys, "report", finished_run, "--target", "0.3", "--out", tmp_path / "r"),
                   str(finished_run / RUN), f"field {field!r} must be a number")
    assert not (tmp_path / "r").exists()


def test_a_failed_report_leaves_no_folder_it_created(finished_run, tmp_path, monkeypatch):
    from finprog import plot

    def broken(*args, **kwargs):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(plot, "plot_report", broken)
    with pytest.raises(RuntimeError):
        finprog.report_runs([finished_run], target=0.3, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_resuming_a_finished_run_loads_no_model_and_changes_nothing(finished_run, tiny_checkpoint_dir, capsys,
                                                                    no_model_loads):
    before = (finished_run / RUN).read_text(), lines_of(finished_run)
    code, err = run_cli(capsys, *solve_args(tiny_checkpoint_dir, finished_run, "--resume"))
    assert code == 0 and err == ""
    assert ((finished_run / RUN).read_text(), lines_of(finished_run)) == before
    record = finprog.solve_run(finprog.SolveOptions(model=tiny_checkpoint_dir, data=DEMO, limit=3, mode="direct",
                                                    max_new_tokens=3, dtype="fp32"), finished_run, resume=True)
    assert record["status"] == "finished" and (finished_run / RUN).read_text() == before[0]


def test_resuming_a_folder_of_another_kind_names_the_kinds_in_a_short_line(adapter, finished_run, tmp_path,
                                                                           tiny_checkpoint_dir, capsys,
                                                                           no_model_loads):
    code, err = run_cli(capsys, *solve_args(tiny_checkpoint_dir, adapter, "--resume"))
    one_line_error(code, err, str(adapter), "holds a training run of `finprog train`, not a single-model run")
    assert len(err) < 400
    cascade = ["solve", "--cascade", tiny_checkpoint_dir, tiny_checkpoint_dir, "--data", DEMO, "--limit", "3",
               "--mode", "direct", "--out", finished_run, "--resume"]
    code, err = run_cli(capsys, *cascade)
    one_line_error(code, err, "holds a single-model run of `finprog solve`, not a cascade")
    assert len(err) < 400


def test_resuming_with_other_options_shows_a_short_difference(finished_run, tiny_checkpoint_dir, capsys,
                                                              no_model_loads):
    long_name = finished_run.parent / ("x" * 150) / ("y" * 150) / "demo.json"
    long_name.parent.mkdir(parents=True)
    shutil.copy(DEMO, long_name)
    args = solve_args(tiny_checkpoint_dir, finished_run, "--resume")
    args[args.index("--data") + 1] = long_name
    code, err = run_cli(capsys, *args)
    one_line_error(code, err, "was run with another config (data: ", "...")
    assert len(err) < 400


# ---------------------------------------------------------------- options: cascades, retrieval, data, numbers


@pytest.mark.parametrize("rule, message", [("", "the acceptance rule is empty"), ("  ", "the acceptance rule is empty"),
                                           ("+", "unknown acceptance rule term ''")])
def test_an_empty_acceptance_rule_is_refused(tiny_checkpoint_dir, tmp_path, capsys, no_model_loads, rule, message):
    args = ["solve", "--cascade", tiny_checkpoint_dir, tiny_checkpoint_dir, "--accept", rule, "--data", DEMO,
            "--out", tmp_path / "out"]
    one_line_error(*run_cli(capsys, *args), message)
    assert not (tmp_path / "out").exists()
    stage = finprog.SolveOptions(model=tiny_checkpoint_dir, data=DEMO)
    with pytest.raises(finprog.FinprogError, match=message):
        finprog.CascadeOptions([stage, stage], accept=rule)


def test_a_sweep_of_the_same_run_twice_is_refused(finished_run, tmp_path, capsys):
    for twice in ([finished_run, finished_run], [finished_run, finished_run.parent / ".." / finished_run.parent.name
                                                 / finished_run.name]):
        one_line_error(*run_cli(capsys, "cascade-sweep", *twice, "--rule", "logprob", "--target", "0.3",
                                "--out", tmp_path / "sweep"), "is given twice")
    assert not (tmp_path / "sweep").exists()


def pageless_records(count: int, keep_page: int | None = None) -> list[dict]:
    records = json.loads(DEMO.read_text())[:count]
    for index, record in enumerate(records):
        record["qa"]["gold_inds"] = {"text_0": "a fact"}
        if index != keep_page:
            for name in ("pre_text", "post_text", "table"):
                record.pop(name, None)
    return records


@pytest.mark.parametrize("records", [pageless_records(3), pageless_records(3, keep_page=0)],
                         ids=["no page", "one page of three"])
@pytest.mark.parametrize("json_output", [[], ["--json"]], ids=["table", "json"])
def test_retrieve_refuses_records_without_pages(tmp_path, capsys, records, json_output):
    path = tmp_path / "pageless.json"
    path.write_text(json.dumps(records))
    one_line_error(*run_cli(capsys, "retrieve", path, *json_output), str(path), "has no page")


def write_parquet(folder, rows: list[dict] | None = None, content: bytes | None = None):
    folder.mkdir()
    if content is not None:
        (folder / "part.parquet").write_bytes(content)
    else:
        import pyarrow
        import pyarrow.parquet

        table = pyarrow.table({"id": pyarrow.array([r["id"] for r in rows], pyarrow.string()),
                               "question": pyarrow.array([r["question"] for r in rows], pyarrow.string())})
        pyarrow.parquet.write_table(table, folder / "part.parquet")
    return folder


def write_state(folder, state: str, info: str | None = None):
    folder.mkdir()
    (folder / "state.json").write_text(state)
    if info is not None:
        (folder / "dataset_info.json").write_text(info)
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda f: write_parquet(f, content=b""), "cannot be read as a dataset folder"),
    (lambda f: write_parquet(f, content=b"PAR1 garbage"), "cannot be read as a dataset folder"),
    (lambda f: write_parquet(f, rows=[]), "holds no rows"),
    (lambda f: write_state(f, "garbage"), "cannot be read as a dataset folder"),
    (lambda f: write_state(f, "{}", "{}"), "cannot be read as a dataset folder"),
    (lambda f: write_state(f, json.dumps({"_data_files": [{"filename": "gone.arrow"}], "_split": None}), "{}"),
     "cannot be read as a dataset folder"),
], ids=["empty parquet", "garbage parquet", "zero rows", "garbage state", "empty state", "state of a missing file"])
def test_data_info_and_solve_refuse_unreadable_dataset_folders(tmp_path, capsys, no_model_loads, make, message,
                                                               tiny_checkpoint_dir):
    folder = make(tmp_path / "split")
    one_line_error(*run_cli(capsys, "data", "info", folder), str(folder), message)
    args = solve_args(tiny_checkpoint_dir, tmp_path / "out")
    args[args.index("--data") + 1] = folder
    one_line_error(*run_cli(capsys, *args), str(folder), message)
    assert not (tmp_path / "out").exists()
    with pytest.raises(finprog.FinprogError, match=message):
        finprog.load_finqa(folder)


def test_a_parquet_folder_with_rows_still_loads(tmp_path, capsys):
    folder = write_parquet(tmp_path / "split", rows=[{"id": "a", "question": "q?"}])
    assert finprog.load_finqa(folder)[0].question == "q?"
    assert run_cli(capsys, "data", "info", folder)[0] == 0


@pytest.mark.parametrize("spec", ["hf:", "hf:/", "hf:..", "hf:::", "hf:a b", "hf:owner/", "hf:x:../up"])
def test_a_malformed_hub_name_gets_one_line(tmp_path, capsys, spec):
    one_line_error(*run_cli(capsys, "data", "info", spec), spec, "does not name a hub dataset")
    with pytest.raises(finprog.FinprogError, match="does not name a hub dataset"):
        finprog.resolve_data(spec)


def test_data_download_into_a_file_gets_one_line(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    one_line_error(*run_cli(capsys, "data", "download", "--dir", taken), str(taken), "is a file")
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1e-4"], "--lr must be positive, got -0.0001"),
    (["--lr=-1e-4"], "--lr must be positive, got -0.0001"),
    (["--lr", "-.5"], "--lr must be positive, got -0.5"),
    (["--budget-flops", "-1e12"], "--budget-flops must be positive"),
    (["--lora-dropout", "-5e-2"], "--lora-dropout must be in [0, 1)"),
])
def test_negative_numbers_in_exponent_form_reach_the_option_check(tiny_checkpoint_dir, capsys, no_model_loads,
                                                                   args, message):
    one_line_error(*run_cli(capsys, "train", "--model", tiny_checkpoint_dir, "--train", DEMO, "--eval", DEMO, *args),
                   message)


# ---------------------------------------------------------------- the library API


def test_every_error_class_of_finprog_is_a_finprog_error():
    names = sorted(module.name for module in pkgutil.iter_modules(finprog.__path__) if module.name != "__main__")
    classes = [value for name in names for value in vars(importlib.import_module(f"finprog.{name}")).values()
               if isinstance(value, type) and issubclass(value, Exception) and value.__module__.startswith("finprog.")]
    assert len(classes) >= 15
    assert [c.__name__ for c in classes if not issubclass(c, finprog.FinprogError)] == []
    assert issubclass(finprog.FinprogError, Exception) and "FinprogError" in finprog.__all__


def test_options_take_paths_where_the_readme_says_a_path(tiny_checkpoint_dir, demo_split):
    options = finprog.SolveOptions(model=Path(tiny_checkpoint_dir), data=DEMO, exemplars=DEMO)
    assert (options.model, options.data, options.exemplars) == (tiny_checkpoint_dir, str(DEMO), str(DEMO))
    training = finprog.TrainOptions(model=Path(tiny_checkpoint_dir), train=demo_split / "train.json",
                                    eval=demo_split / "eval.json")
    assert training.train == [str(demo_split / "train.json")] and training.eval == str(demo_split / "eval.json")
    both = finprog.TrainOptions(model="m", train=(demo_split / "train.json", "dev_200"), eval="demo")
    assert both.train == [str(demo_split / "train.json"), "dev_200"]


@pytest.mark.parametrize("make, option", [
    (lambda: finprog.SolveOptions(limit="2"), "SolveOptions.limit must be a whole number or None, got '2'"),
    (lambda: finprog.SolveOptions(model=3), "SolveOptions.model must be a string"),
    (lambda: finprog.SolveOptions(limit=2.0), "SolveOptions.limit must be a whole number"),
    (lambda: finprog.SolveOptions(constrained="yes"), "SolveOptions.constrained must be True or False or None"),
    (lambda: finprog.SolveOptions(temperature="0.7"), "SolveOptions.temperature must be a number"),
    (lambda: finprog.TrainOptions(model="m", train="t", eval="e", lr="1e-4"), "TrainOptions.lr must be a number"),
    (lambda: finprog.TrainOptions(model="m", train=5, eval="e"), "TrainOptions.train must be a string or a list"),
    (lambda: finprog.TrainOptions(model="m", train=["t", 5], eval="e"), "TrainOptions.train must be"),
    (lambda: finprog.TrainOptions(model="m", train="t", eval="e", max_steps=True), "TrainOptions.max_steps must be"),
    (lambda: finprog.CascadeOptions(["a", "b"]), "CascadeOptions.stages must be a list, each SolveOptions"),
    (lambda: finprog.CascadeOptions([], accept=None), "CascadeOptions.accept must be a string"),
])
def test_options_of_the_wrong_type_name_the_option(make, option):
    with pytest.raises(finprog.FinprogError) as caught:
        make()
    assert option in str(caught.value)


@pytest.mark.parametrize("call", [
    lambda: finprog.resolve_data(5), lambda: finprog.model_config(None),
    lambda: finprog.report_runs(["x"], target=0.3, out=5), lambda: finprog.load_finqa(Path("no/such.json")),
])
def test_library_calls_with_a_wrong_argument_raise_a_finprog_error(call):
    with pytest.raises(finprog.FinprogError):
        call()


def test_data_may_be_named_by_a_path_and_downloaded_only_into_a_folder(tmp_path):
    from finprog.data import download_finqa

    assert finprog.resolve_data(DEMO)[0] == DEMO
    (tmp_path / "file").write_text("")
    with pytest.raises(finprog.FinprogError, match="cannot create the folder"):
        download_finqa(["dev"], tmp_path / "file" / "sub")


def test_run_folders_may_be_given_as_one_string(finished_run, tmp_path):
    result, files = finprog.report_runs(str(finished_run), target=0.3, out=tmp_path / "r")
    assert [row.run.path for group in result.groups for row in group.rows] == [finished_run / RUN]
    assert finprog.compare_runs(str(finished_run))["runs"][0]["run"] == str(finished_run)
    for paths in (5, [finished_run, 5], []):
        with pytest.raises(finprog.FinprogError, match="path"):
            finprog.report_runs(paths, target=0.3)
