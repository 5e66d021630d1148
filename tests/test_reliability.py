"""Every bad input gets one line and exit status 2 before any model loads, and no computed prediction is lost."""

import json
import os
import subprocess
import sys

import pytest

from finprog import models
from finprog.cli import main
from finprog.runs import DAMAGED, LOCK, PREDICTIONS, RUN
from shared_data import REPO, finqa_file

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
def no_model_loads(monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))


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
