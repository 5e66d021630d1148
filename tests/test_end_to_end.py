"""End to end with a real model from the offline zoo (fetched on first use): `finprog solve` and `finprog compare`."""

import json

import pytest

from finprog.cli import main
from shared_data import finqa_file

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"


def test_solve_direct_on_two_records_of_the_older_release(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["solve", "--mode", "direct", "--model", MODEL, "--data", str(finqa_file("train3.json")),
                 "--limit", "2", "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["n"] == 2
    assert 0 <= summary["exact"] <= summary["tolerant"] <= 1
    assert summary["flops_per_example"] > 1e9 and summary["seconds_per_example"] > 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    # the default context is the top 5 retrieved facts: a few hundred tokens, not the page's 1,000 and more
    assert len(rows) == 2 and all(100 < r["prompt_tokens"] < 1000 and r["completion"] is not None for r in rows)
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["params"] == 134_515_008 and record["status"] == "finished"


def test_compare_direct_and_program_on_two_records(tmp_path, capsys):
    code = main(["compare", "--mode", "direct", "--mode", "program", "--model", MODEL,
                 "--data", str(finqa_file("dev_200.json")), "--limit", "2", "--shots", "2",
                 "--exemplars", str(finqa_file("train_100.json")), "--out", str(tmp_path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and [run["mode"] for run in result["runs"]] == ["direct", "program"]
    direct, program = result["runs"]
    assert program["prompt_tokens_per_example"] > direct["prompt_tokens_per_example"]  # exemplars and DSL instructions
    assert sum(program["outcomes"].values()) == 2 and program["program_accuracy"] is not None
    assert (tmp_path / "comparison.json").is_file()
