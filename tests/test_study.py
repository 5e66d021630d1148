"""Studies: declared cells, predicted against measured FLOPs, resuming after a kill, changed declarations, executors,
and bad study files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finprog import study as studies
from finprog.cli import main
from finprog.paths import shown
from finprog.runs import PREDICTIONS, RUN, read_rows

STUDY = """
name = "tiny"
targets = [0.1, 0.5]
[solve]
data = "{eval}"
max_new_tokens = 4
dtype = "fp32"
[train]
train = ["{train}"]
eval = "{eval}"
eval_limit = 2
eval_batch_size = 2
max_new_tokens = 4
batch_size = 4
lr = 1e-3
dtype = "fp32"
[cells.prompted]
model = "{model}"
mode = "direct"
[cells.trained]
model = "{model}"
train = {{ method = "lora", max_steps = 2, eval_every = 1 }}
test.free = {{ limit = 3 }}
"""


def write_study(folder: Path, checkpoint: str, split: Path, text: str = STUDY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.toml"
    path.write_text(text.format(model=checkpoint, train=split / "train.json", eval=split / "eval.json"))
    return path


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_two_cell_study_runs_records_predicted_and_measured_flops_and_reports(
        tmp_path, tiny_checkpoint_dir, demo_split, capsys):
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split)
    code, out, _ = run_cli(capsys, "study", path, "--dry-run")
    assert code == 0 and "prompted" in out and "trained" in out and out.count("pending") == 2
    result = studies.run_study(path)
    assert result["ran"] == ["prompted", "trained"] and result["failed"] == []
    runs = tmp_path / "study" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["prompted", "trained", "trained_test_free"]
    record = json.loads((tmp_path / "study" / "study.json").read_text())["cells"]
    trained = record["trained"]
    assert trained["predicted"]["training"] == trained["measured"]["training"] > 0  # every step counted as it ran
    for cell in record.values():  # new tokens predicted from the gold replies, measured from a random model
        assert cell["predicted"]["inference"] > 0 and cell["measured"]["inference"] > 0
    assert trained["declaration"]["train"]["max_steps"] == 2 and trained["declaration"]["test"] == {
        "free": {"data": str(demo_split / "eval.json"), "max_new_tokens": 4, "dtype": "fp32", "limit": 3}}
    test_run = json.loads((runs / "trained_test_free" / RUN).read_text())
    assert test_run["config"]["model"] == os.path.relpath(runs / "trained") and test_run["metrics"]["n"] == 3
    assert test_run["flops"]["training_total"] == trained["measured"]["training"]  # the test solve carries it
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    assert {row["name"] for group in report["groups"] for row in group["rows"]} == {
        "prompted", "trained", "trained_test_free"}
    assert (tmp_path / "study" / "report.md").is_file() and (tmp_path / "study" / "report.png").is_file()
    code, out, _ = run_cli(capsys, "study", path, "--dry-run")  # done cells: measured beside predicted, no time left
    assert code == 0 and out.count(" done ") == 2 and "1.0000" in out
    assert studies.run_study(path)["ran"] == []  # a finished cell is never rerun


def test_an_exported_adapter_may_be_asked_again_and_its_card_quotes_every_solve_of_it(tmp_path, tiny_checkpoint_dir, demo_split):
    exported = STUDY.split("[cells.prompted]")[0] + """[cells.trained]
model = "{model}"
train = {{ method = "lora", max_steps = 2, eval_every = 1 }}
export = "adapter"
test.free = {{ limit = 3 }}
"""
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, exported)
    assert studies.run_study(path)["ran"] == ["trained"]
    path.write_text(path.read_text() + '[cells.asked-again]\nmodel = "adapter"\nlimit = 2\n')  # once it exists
    result = studies.run_study(path)
    assert result["ran"] == ["asked-again"]
    assert [Path(card).resolve() for card in result["cards"]] == [tmp_path / "study" / "adapter" / "README.md"]
    card = (tmp_path / "study" / "adapter" / "README.md").read_text()
    assert card.count("| eval | top 5 facts | free |") == 3  # the training's evaluation, its test run, the other solve
    assert "| 3 |" in card and "| 2 |" in card

    trained = (tmp_path / "study" / "runs" / "trained" / RUN).read_text()
    path.write_text(path.read_text().replace("test.free = { limit = 3 }", "test.free = { limit = 3 }\n"
                                             "test.top4 = { limit = 2, top_k = 4 }"))  # a new solve: no retraining
    assert studies.run_study(path)["ran"] == ["trained"]
    assert (tmp_path / "study" / "runs" / "trained" / RUN).read_text() == trained
    assert "| eval | top 4 facts | free | 2 |" in (tmp_path / "study" / "adapter" / "README.md").read_text()


def test_declared_comparisons_wait_for_their_runs_then_are_written_with_paired_tests(
        tmp_path, tiny_checkpoint_dir, demo_split):
    text = ('compare = [["prompted", "shorter"]]\n' + STUDY.split("[cells.trained]")[0]
            + '[cells.shorter]\nmodel = "{model}"\nmode = "direct"\nmax_new_tokens = 2\n')
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, text)
    paired = tmp_path / "study" / "paired.txt"
    studies.run_cell(str(path), "prompted")
    assert str(paired) in studies.run_study(path, report_only=True)["report"]
    runs = tmp_path / "study" / "runs"
    assert paired.read_text().splitlines()[2:] == [
        f"finprog compare {shown(runs / 'prompted')} {shown(runs / 'shorter')}", "  waiting for shorter to finish"]
    studies.run_study(path)
    text = paired.read_text()
    assert "waiting" not in text and "exact: right only in prompted " in text and "exact McNemar p = " in text


def test_a_cell_runs_as_its_study_read_the_file_though_the_file_has_changed_since(
        tmp_path, tiny_checkpoint_dir, demo_split):
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split)
    study = studies.load_study(path)
    path.write_text('compare = [["prompted", "undeclared"]]\n'
                    + study.text.replace('mode = "direct"', 'mode = "direct"\nmax_new_tokens = 1'))
    with pytest.raises(studies.StudyError, match="'undeclared' is neither a run of this study"):
        studies.load_study(path)
    studies.run_cell(str(path), "prompted", study.text)
    record = json.loads((tmp_path / "study" / "runs" / "prompted" / RUN).read_text())
    assert record["status"] == "finished" and record["config"]["max_new_tokens"] == 4


def test_a_changed_declaration_is_refused_until_rerun(tmp_path, tiny_checkpoint_dir, demo_split, capsys):
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split,
                       STUDY.split("[cells.trained]")[0])
    studies.run_study(path)
    first = (tmp_path / "study" / "runs" / "prompted" / PREDICTIONS).read_text()
    path.write_text(path.read_text().replace('mode = "direct"', 'mode = "direct"\nlimit = 2'))
    capsys.readouterr()
    code, _, err = run_cli(capsys, "study", path)
    assert code == 2 and err.count("\n") == 1
    assert "cell 'prompted' was run with other options (solve.limit)" in err and "--rerun prompted" in err
    code, out, _ = run_cli(capsys, "study", path, "--dry-run")
    assert code == 0 and "changed (solve.limit)" in out
    for dry_run in ((), ("--dry-run",)):  # a name that is no cell is refused before anything is removed
        code, _, err = run_cli(capsys, "study", path, "--rerun", "promted", *dry_run)
        assert code == 2 and "--rerun 'promted' is not a cell of this study; cells: prompted" in err
    assert (tmp_path / "study" / "runs" / "prompted" / PREDICTIONS).read_text() == first
    assert studies.run_study(path, rerun=("prompted",))["ran"] == ["prompted"]
    again = (tmp_path / "study" / "runs" / "prompted" / PREDICTIONS).read_text()
    assert len(again.splitlines()) == 2 and len(first.splitlines()) == 5


def test_declaring_the_value_a_run_inherited_asks_for_no_new_run(tmp_path, tiny_checkpoint_dir, demo_split):
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, STUDY.split("[cells.trained]")[0])
    studies.run_study(path)
    ran = json.loads((tmp_path / "study" / "runs" / "prompted" / RUN).read_text())["config"]["top_k"]
    path.write_text(path.read_text().replace('mode = "direct"', f'mode = "direct"\ntop_k = {ran}'))
    assert studies.run_study(path)["ran"] == []
    path.write_text(path.read_text().replace(f"top_k = {ran}", f"top_k = {ran + 1}"))
    with pytest.raises(studies.StudyError, match=r"other options \(solve.top_k\)"):
        studies.run_study(path)


def test_a_training_option_that_leaves_the_updates_alone_may_change(tmp_path, tiny_checkpoint_dir, demo_split):
    """Checkpoints and micro-batches (training.RUNTIME_OPTIONS) change how a run is saved and stepped, not its result."""
    trained_only = STUDY.replace('[cells.prompted]\nmodel = "{model}"\nmode = "direct"\n', "").replace(
        "test.free = {{ limit = 3 }}\n", "")
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, trained_only)
    assert studies.run_study(path)["ran"] == ["trained"]
    path.write_text(path.read_text().replace("eval_every = 1 }", "eval_every = 1, checkpoint_every = 1 }"))
    assert studies.run_study(path)["ran"] == []
    record = json.loads((tmp_path / "study" / "study.json").read_text())["cells"]["trained"]
    assert record["declaration"]["train"]["checkpoint_every"] == 1
    path.write_text(path.read_text().replace("checkpoint_every = 1 }", "checkpoint_every = 1, lr = 1e-2 }"))
    with pytest.raises(studies.StudyError, match=r"other options \(train.lr\)"):
        studies.run_study(path)
    path.write_text(path.read_text().replace("checkpoint_every = 1, lr = 1e-2 }", "checkpoint_every = 2 }"))
    (tmp_path / "study" / "study.json").unlink()  # adopted from its runs' own configs: the same rule
    assert [p.status for p in studies.plan(studies.load_study(path), predict_flops=False)] == ["done"]


def test_an_export_added_to_a_trained_cell_exports_its_adapter_without_training_again(
        tmp_path, tiny_checkpoint_dir, demo_split):
    trained_only = STUDY.replace('[cells.prompted]\nmodel = "{model}"\nmode = "direct"\n', "")
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, trained_only)
    assert studies.run_study(path)["ran"] == ["trained"]
    runs = tmp_path / "study" / "runs"
    before = {run.name: (run / RUN).read_text() for run in runs.iterdir()}
    path.write_text(path.read_text().replace("test.free", 'export = "adapter"\ntest.free'))
    assert studies.run_study(path)["ran"] == ["trained"]
    assert {run.name: (run / RUN).read_text() for run in runs.iterdir()} == before
    assert (tmp_path / "study" / "adapter" / "adapter_model.safetensors").is_file()


def test_runs_made_before_the_study_are_adopted_when_their_config_matches(
        tmp_path, tiny_checkpoint_dir, demo_split, capsys):
    """A run folder moved into a study, with no study.json yet: done if its config has the declared values."""
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, STUDY.split("[cells.trained]")[0])
    studies.run_study(path)
    (tmp_path / "study" / "study.json").unlink()
    planned = studies.plan(studies.load_study(path), predict_flops=False)
    assert [(p.cell.name, p.status) for p in planned] == [("prompted", "done")]
    path.write_text(path.read_text().replace('mode = "direct"', 'mode = "program"'))
    planned = studies.plan(studies.load_study(path), predict_flops=False)
    assert [(p.status, p.changed) for p in planned] == [("changed", ["mode"])]


def test_submitits_local_executor_runs_the_cells(tmp_path, tiny_checkpoint_dir, demo_split):
    pytest.importorskip("submitit")
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, STUDY.split("[cells.trained]")[0])
    result = studies.run_study(path, executor="submitit-local")
    assert result["ran"] == ["prompted"] and result["failed"] == []
    assert any((tmp_path / "study" / "jobs").iterdir())  # submitit's own job files
    assert json.loads((tmp_path / "study" / "runs" / "prompted" / RUN).read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_study_killed_during_its_second_cell_finishes_on_a_rerun_with_no_row_lost_or_redone(
        tmp_path, tiny_checkpoint_dir, demo_split):
    text = STUDY.split("[cells.trained]")[0].replace("max_new_tokens = 4", "max_new_tokens = 48")
    text += f'[cells.second]\nmodel = "{tiny_checkpoint_dir}"\nmode = "program"\nconstrained = false\n'
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, text)
    second = tmp_path / "study" / "runs" / "second" / PREDICTIONS
    command = [sys.executable, "-m", "finprog", "study", str(path)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (second.is_file() and read_rows(second)) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the study and its cell's process, as a lost terminal or job would
    process.wait()
    before = read_rows(second)
    assert 1 <= len(before) < 5, "the kill came after the second cell had finished: nothing was tested"
    assert json.loads((second.parent / RUN).read_text())["status"] == "running"
    assert subprocess.run(command, capture_output=True).returncode == 0
    after = read_rows(second)
    assert [row["id"] for row in after] == list(dict.fromkeys(row["id"] for row in after)) and len(after) == 5
    assert after[:len(before)] == before  # the rows written before the kill are kept, not redone


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "cell killed"])
def test_a_study_stopped_during_a_cell_starts_no_further_cell(tmp_path, tiny_checkpoint_dir, demo_split, stop):
    text = STUDY.split("[cells.trained]")[0].replace("max_new_tokens = 4", "max_new_tokens = 48")
    text = text.replace('mode = "direct"', 'mode = "program"\nconstrained = false')
    text += f'[cells.later]\nmodel = "{tiny_checkpoint_dir}"\nmode = "direct"\n'
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, text)
    first = tmp_path / "study" / "runs" / "prompted"
    process = subprocess.Popen([sys.executable, "-m", "finprog", "study", str(path)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ((first / PREDICTIONS).is_file() and read_rows(first / PREDICTIONS)) and time.monotonic() < deadline:
        time.sleep(0.02)
    if stop == "ctrl-c":  # a terminal's Ctrl-C reaches the study and its cell's process
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(int((first / ".lock").read_text().split()[0]), signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    assert len(read_rows(first / PREDICTIONS)) < 5, "the stop came after the first cell had finished: nothing was tested"
    assert not (tmp_path / "study" / "runs" / "later").exists(), err
    assert process.returncode == (130 if stop == "ctrl-c" else 1)
    if stop == "cell killed":
        assert "prompted: not finished: its process was killed" in err and "later: not started" in err


@pytest.mark.parametrize(("change", "message"), [
    ("mystery = 1\n", "mystery: is not a study key"),
    ('questions = "many"\n', "questions: must be int, got str"),
    ('\n[cells.x]\nmodel = "{model}"\nlimit = "2"', "cells.x (with [solve]): "),
    ('\n[cells.x]\nmodel = "no-such-model"', "cells.x: unknown model 'no-such-model'"),
    ('\n[cells.x]\nmodel = "{model}"\ntrain = {{ method = "magic" }}', "unknown training method 'magic'"),
    ('\n[cells.x]\nmodel = "{model}"\nsparkle = true', "unknown option 'sparkle'"),
    ('\n[cells.x]\nmodel = "{model}"\n[cells.x]\nmodel = "{model}"', "not valid TOML"),
    ('\n[techniques.x]\nmode = "direct"', "models: is missing"),
    ('\n[cells.x]\nmodel = "{model}"\ntrain = {{ method = "lora", lr = "fast" }}', "TrainOptions.lr must be"),
    ('\n[cells.x]\nmodel = "{model}"\ndata = "no_such_split"', "data 'no_such_split' is neither a file"),
    ('compare = [["prompted"]]\n', "compare[0]: must list two or more runs, got ['prompted']"),
    ('compare = [["prompted", "nowhere"]]\n', "compare[0]: 'nowhere' is neither a run of this study nor a run folder"),
    ('models = ["{model}"]\n|\n[techniques.prompted]\nmode = "direct"\n[cells.checkpoint_prompted]\n'
     'model = "{model}"', "declares cell 'checkpoint_prompted' a second time"),
])
def test_bad_study_files_get_one_line_naming_the_file_and_key(tmp_path, tiny_checkpoint_dir, demo_split, capsys,
                                                              change, message, monkeypatch):
    import finprog.models

    monkeypatch.setattr(finprog.models, "load_model", None)  # nothing may load a model
    top, _, tail = change.rpartition("|") if "|" in change else (
        ("", "", change) if change.startswith("\n") else (change, "", ""))  # keys before the tables, tables after
    text = top + STUDY.split("[cells.prompted]")[0] + '[cells.prompted]\nmodel = "{model}"\n' + tail
    folder = tmp_path / "study"
    checkpoint = tmp_path / "checkpoint"
    checkpoint.symlink_to(tiny_checkpoint_dir)
    path = write_study(folder, str(checkpoint), demo_split, text)
    code, out, err = run_cli(capsys, "study", path, "--dry-run")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"finprog: error: {path}: ") and message.format(model=checkpoint) in err


def test_a_study_loads_and_plans_while_a_full_fine_tuning_run_is_unfinished(tmp_path, tiny_checkpoint_dir, demo_split):
    """A full fine-tuning cell's test solves name its run folder, which holds an unfinished record until it ends."""
    text = 'compare = [["trained", "trained"]]\n' + STUDY.replace('"lora"', '"full"')
    path = write_study(tmp_path / "study", tiny_checkpoint_dir, demo_split, text)
    studies.run_study(path)
    record = tmp_path / "study" / "runs" / "trained" / RUN
    record.write_text(record.read_text().replace('"status": "finished"', '"status": "interrupted"'))
    study = studies.load_study(path)
    planned = {item.cell.name: item for item in studies.plan(study)}
    assert planned["trained"].status == "partial" and planned["trained"].predicted["training"] > 0
    assert Path(planned["trained"].cell.runs[1].options.model).resolve() == record.parent.resolve()
    (paired,) = studies.write_comparisons(study)  # an unfinished curve is compared as far as it has come
    lines = paired.read_text().splitlines()
    assert lines[3:5] == ["  waiting for trained, trained to finish",
                          "the curves step by step (exact EmAcc at the training FLOPs of the step):"]
    assert [line.split(":")[0] for line in lines[5::2]] == ["  step 0", "  step 1", "  step 2"]
