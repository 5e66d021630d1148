"""Loading FinQA files, bad-input errors through the CLI, and `finprog evaluate`."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from finprog import data, dsl
from finprog.cli import main
from finprog.evaluation import (
    ANSWERED, NO_NUMBER, OUTCOMES, PROGRAM_OUTCOMES, evaluate_programs, gold_value, load_predictions, metrics, score,
    score_program,
)
from shared_data import REPO, finqa_file


def run_cli(*args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_loads_both_releases_and_json_lines(tmp_path):
    current = data.load_finqa(finqa_file("dev_200.json"))
    assert len(current) == 200 and all(e.exe_ans is not None and e.program for e in current)
    older = data.load_finqa(finqa_file("train3.json"))
    assert len(older) == 22 and all(e.exe_ans is None for e in older)
    lines = tmp_path / "dev.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in json.loads(finqa_file("dev_200.json").read_text())[:5]))
    assert data.load_finqa(lines) == current[:5]


def test_older_release_gold_value_comes_from_the_program():
    first = data.load_finqa(finqa_file("train3.json"))[0]
    assert first.answer == "380" and first.program == "divide(100, 100), divide(3.8, #0)"
    assert gold_value(first) == 3.8


BAD_RECORD = {"id": "X/1", "pre_text": [], "post_text": [], "table": [["a", "1"]], "qa": {"question": "q?"}}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ('[{"id": "X/1",\n "qa": }]', "invalid JSON at line 2, column 8"),
        (json.dumps([{**BAD_RECORD, "qa": None}]), "record 0 (id 'X/1'): field 'qa' should be an object"),
        (json.dumps([BAD_RECORD, {k: v for k, v in BAD_RECORD.items() if k != "qa"} | {"id": "X/2"}]),
         "record 1 (id 'X/2'): missing field 'qa'"),
        (json.dumps([{**BAD_RECORD, "qa": {}}]), "record 0 (id 'X/1'): missing field 'qa.question'"),
        (json.dumps([{**BAD_RECORD, "table": "a | 1"}]), "field 'table' should be a list"),
        (json.dumps([{**BAD_RECORD, "table": [["a", 1]]}]), "field 'table' row 0 should be a list of strings"),
        (json.dumps([BAD_RECORD, BAD_RECORD]), "repeats the id of record 0"),
        ('{"id": "X/1"}\n{"id": ', "invalid JSON at line 2"),
    ],
)
def test_bad_files_get_one_clear_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    code, out, err = run_cli("data", "info", path, capsys=capsys)
    assert code == 2
    assert err.startswith("finprog: error: ") and str(path) in err and message in err
    assert "Traceback" not in err


def test_data_info_counts(capsys):
    code, out, _ = run_cli("data", "info", finqa_file("train3.json"), finqa_file("dev_200.json"), "--json", capsys=capsys)
    rows = json.loads(out)
    assert code == 0
    assert [(r["split"], r["records"], r["with_program"], r["with_exe_ans"]) for r in rows] == [
        ("train", 22, 22, 0),
        ("dev", 200, 200, 200),
    ]


def test_data_info_takes_split_names_as_data_does(capsys):
    code, out, _ = run_cli("data", "info", "train_2077", "--json", capsys=capsys)
    (row,) = json.loads(out)
    assert code == 0 and Path(row["file"]).name == "train_2077.json"
    assert (row["split"], row["records"], row["with_program"]) == ("train", 2077, 2077)
    code, _, err = run_cli("data", "info", "no_such_split", capsys=capsys)
    assert code == 2 and "'no_such_split' is neither a file" in err


def test_data_info_describes_a_file_of_questions_and_programs_without_pages(capsys):
    code, out, _ = run_cli("data", "info", "train_programs_6251", "--json", capsys=capsys)
    (row,) = json.loads(out)
    assert code == 0 and (row["records"], row["with_program"], row["with_page"]) == (6251, 6251, 0)


def test_a_record_with_part_of_a_page_still_needs_its_table(tmp_path, capsys):
    path = tmp_path / "half.json"
    path.write_text(json.dumps([{k: v for k, v in BAD_RECORD.items() if k != "table"}]))
    code, _, err = run_cli("data", "info", path, capsys=capsys)
    assert code == 2 and "record 0 (id 'X/1'): missing field 'table'" in err


def test_offline_download_fails_fast_with_a_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "OFFICIAL_URL", "http://127.0.0.1:9/{split}.json")
    code, _, err = run_cli("data", "download", "--split", "dev", "--dir", tmp_path, capsys=capsys)
    assert code == 2 and "put the official dev.json" in err and str(tmp_path) in err


@pytest.fixture
def upstream(tmp_path, monkeypatch):
    """A stand-in upstream folder served by file:// URL; its dev.json is the demo sample, pinned by its blob SHA-1."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    (folder / "dev.json").write_bytes((REPO / "data" / "demo.json").read_bytes())
    monkeypatch.setattr(data, "OFFICIAL_URL", folder.as_uri() + "/{split}.json")
    monkeypatch.setitem(data.OFFICIAL_BLOBS, "dev", data.git_blob_sha1(folder / "dev.json"))
    return folder


def test_download_keeps_a_file_whose_git_blob_sha1_matches(tmp_path, upstream, capsys):
    target = tmp_path / "cache"
    code, out, _ = run_cli("data", "download", "--split", "dev", "--dir", target, capsys=capsys)
    assert code == 0 and "manifest" in out
    assert (target / "dev.json").read_bytes() == (upstream / "dev.json").read_bytes()
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["dev"]["git_blob_sha1"] == data.OFFICIAL_BLOBS["dev"]
    assert sorted(p.name for p in target.iterdir()) == ["dev.json", "manifest.json"]


def test_download_with_the_wrong_git_blob_sha1_keeps_nothing(tmp_path, upstream, capsys):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "dev.json").write_text("an earlier good file")
    (upstream / "dev.json").write_bytes((upstream / "dev.json").read_bytes().replace(b"revenue", b"Revenue", 1))
    code, _, err = run_cli("data", "download", "--split", "dev", "--dir", target, capsys=capsys)
    assert code == 2 and "git blob SHA-1" in err and data.OFFICIAL_BLOBS["dev"] in err and "nothing was kept" in err
    assert sorted(p.name for p in target.iterdir()) == ["dev.json"]
    assert (target / "dev.json").read_text() == "an earlier good file"


def test_git_blob_sha1_is_the_id_git_gives_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"")
    assert data.git_blob_sha1(path) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob
    path.write_bytes(b"hello\n")
    assert data.git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `echo hello | git hash-object --stdin`


def test_demo_sample_covers_every_operation():
    demo = data.load_finqa(REPO / "data" / "demo.json")
    ops = {step.op for e in demo for step in dsl.parse(e.program).steps}
    assert ops == set(dsl.ARITHMETIC_OPS + dsl.TABLE_OPS)
    assert all(gold_value(e) == dsl.execute(dsl.parse(e.program), e.table) for e in demo)


def official_predictions(records, transform):
    return [{"id": r["id"], "predicted": transform(r)} for r in records]


def test_evaluate_gold_programs_in_official_format_score_100(tmp_path, capsys):
    records = json.loads(finqa_file("test_100.json").read_text())
    predictions = official_predictions(records, lambda r: dsl.tokens(dsl.parse(r["qa"]["program"])))
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(predictions))
    code, out, _ = run_cli("evaluate", path, finqa_file("test_100.json"), "--json", capsys=capsys)
    result = json.loads(out)
    assert code == 0
    assert result["n"] == 100 and result["execution_accuracy"] == 1.0 and result["program_accuracy"] == 1.0
    assert result["missing"] == {"no_gold": [], "no_prediction": []}


def test_program_accuracy_needs_equivalence_execution_accuracy_only_the_value():
    example = data.load_finqa(finqa_file("dev_200.json"))[0]
    gold = dsl.parse(example.program)
    assert score_program(example.program, example).program_correct is True
    rewritten = example.program.replace("const_100", "100")
    if rewritten != example.program:
        outcome = score_program(rewritten, example)
        assert outcome.outcome == "correct" and outcome.program_correct is False
    assert score_program("add(1, 2", example).outcome == "parse_error"
    assert score_program(None, example).outcome == "no_program"
    assert score_program(None, example).program_correct is False  # counts against program accuracy
    assert score_program("divide(1, 0)", example).error_kind == "division_by_zero"
    assert score_program(dsl.format(gold) + ", add(#0, 1)", example).outcome in ("wrong_value", "execution_error")


def test_demo_predictions(capsys):
    code, out, _ = run_cli("evaluate", REPO / "data" / "demo_predictions.jsonl", "demo", "--json", capsys=capsys)
    result = json.loads(out)
    assert code == 0 and result["n"] == 13
    assert result["outcomes"] == {"correct": 7, "wrong_value": 2, "execution_error": 2, "parse_error": 1, "no_program": 1}
    assert result["execution_accuracy"] == pytest.approx(7 / 13) and result["program_accuracy"] == pytest.approx(6 / 13)


def test_program_accuracy_has_one_definition_over_predictions_with_a_gold_program():
    gold = data.load_finqa(REPO / "data" / "demo.json")[:4]
    predicted = {e.id: e.program for e in gold[:3]} | {gold[3].id: "add(1, 2"}
    gold[0] = dataclasses.replace(gold[0], program=None)  # a record without a gold program is not graded
    evaluated = evaluate_programs(predicted, gold)
    rows = [score(e, predicted[e.id], "program") | {"prompt_tokens": 1, "new_tokens": 1} for e in gold]
    assert evaluated.n == 4 and evaluated.execution_accuracy == 3 / 4
    assert evaluated.program_accuracy == metrics(rows, "program")["program_accuracy"] == 2 / 3
    assert evaluate_programs({gold[0].id: gold[0].program}, gold).program_accuracy is None


def test_direct_outcomes_are_named_beside_the_program_outcomes():
    example = data.load_finqa(REPO / "data" / "demo.json")[0]
    assert score(example, "about 13.6%", "direct")["outcome"] == ANSWERED
    assert score(example, "I cannot tell", "direct")["outcome"] == NO_NUMBER
    assert set(OUTCOMES) == set(PROGRAM_OUTCOMES) | {ANSWERED, NO_NUMBER}


def test_missing_ids_are_reported_not_scored(tmp_path):
    gold = data.load_finqa(REPO / "data" / "demo.json")
    predictions = {gold[0].id: gold[0].program, "nope": "add(1, 2)"}
    result = evaluate_programs(predictions, gold)
    assert result.n == 1 and result.execution_accuracy == 1.0
    assert result.missing["no_gold"] == ["nope"] and len(result.missing["no_prediction"]) == 12


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"program": "add(1, 2)"}', "entry 0: missing field 'id'"),
        ('{"id": "a", "program": 5}', "entry 0: field 'program' should be text or null"),
        ('[{"id": "a"}]', "entry 0: missing field 'program'"),
        ('{"id": "a", "program": "x"}\n{', "invalid JSON at line 2"),
    ],
)
def test_bad_prediction_files(tmp_path, capsys, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    code, _, err = run_cli("evaluate", path, "demo", capsys=capsys)
    assert code == 2 and message in err and str(path) in err


def test_broken_official_tokens_score_as_parse_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"id": "a", "predicted": ["add(", "1", "EOF"]}]))
    assert isinstance(load_predictions(path)["a"], dsl.ProgramParseError)


def test_light_commands_do_not_import_torch():
    code = "import sys, finprog.cli as c; c.main(['evaluate', 'data/demo_predictions.jsonl', 'demo', '--json']); " \
           "import finprog.data, finprog.dsl, finprog.operands, finprog.answers, finprog.evaluation, finprog.flops, " \
           "finprog.report, finprog.retrieval; " \
           "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def dev_records(indices=(0, 1, 2, 28)):
    records = json.loads(finqa_file("dev_200.json").read_text())
    return [records[i] for i in indices]


def flat(record):
    """A record as hub datasets often hold it: qa's fields as top-level columns, exe_ans as text."""
    qa = record["qa"]
    return {"id": record["id"], "pre_text": record["pre_text"], "post_text": record["post_text"],
            "table": record["table"], "question": qa["question"], "answer": qa["answer"],
            "program": qa["program"], "exe_ans": str(qa["exe_ans"]), "gold_inds": qa["gold_inds"]}


def from_json(records, tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    return data.load_finqa(path)


def test_dataset_folders_load_like_the_json_file(tmp_path, capsys):
    import datasets

    expected = from_json(dev_records(), tmp_path)
    nested = datasets.Dataset.from_list(dev_records((0, 1, 2)))  # one column type: yes/no and numbers do not mix
    nested.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "parquet").mkdir()
    datasets.Dataset.from_list([flat(r) for r in dev_records()]).to_parquet(str(tmp_path / "parquet" / "dev.parquet"))
    assert data.load_finqa(tmp_path / "saved") == expected[:3]
    assert data.load_finqa(tmp_path / "parquet") == expected
    assert expected[3].exe_ans in ("yes", "no") and isinstance(expected[0].exe_ans, float)

    gold = [{"id": r["id"], "program": r["qa"]["program"]} for r in dev_records()]
    (tmp_path / "predictions.jsonl").write_text("\n".join(json.dumps(g) for g in gold))
    code, out, _ = run_cli("evaluate", tmp_path / "predictions.jsonl", tmp_path / "parquet", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["n"] == 4 and json.loads(out)["execution_accuracy"] == 1.0
    code, out, _ = run_cli("data", "info", tmp_path / "saved", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)[0]["records"] == 3


def test_a_folder_of_several_splits_asks_for_one(tmp_path, capsys):
    import datasets

    splits = datasets.DatasetDict({"validation": datasets.Dataset.from_list(dev_records((0,)))})
    splits.save_to_disk(str(tmp_path / "finqa"))
    code, _, err = run_cli("evaluate", REPO / "data" / "demo_predictions.jsonl", tmp_path / "finqa", capsys=capsys)
    assert code == 2 and "holds several splits" in err and str(tmp_path / "finqa" / "validation") in err


def test_a_hub_dataset_is_fetched_once_and_its_split_chosen(tmp_path, monkeypatch, capsys):
    import datasets

    calls = []

    def load_dataset(name):
        calls.append(name)
        if name != "someone/finqa":
            raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return datasets.DatasetDict({"train": datasets.Dataset.from_list([flat(r) for r in dev_records((1,))]),
                                     "validation": datasets.Dataset.from_list([flat(r) for r in dev_records()])})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setenv("FINPROG_CACHE", str(tmp_path / "cache"))
    path, described = data.resolve_data("hf:someone/finqa")  # dev is the hub's "validation"
    assert data.load_finqa(path) == from_json(dev_records(), tmp_path) and "someone/finqa" in described
    assert data.resolve_data("hf:someone/finqa")[0] == path and calls == ["someone/finqa"]
    assert [e.id for e in data.load_finqa(data.resolve_data("hf:someone/finqa:train")[0])] == [dev_records()[1]["id"]]

    with pytest.raises(data.DataValidationError, match="has the splits train, validation; name one"):
        data.resolve_data("hf:someone/finqa", default_split="test")
    code, _, err = run_cli("evaluate", REPO / "data" / "demo_predictions.jsonl", "hf:nobody/nothing", capsys=capsys)
    assert code == 2 and "cannot load dataset 'nobody/nothing' from the hub" in err and "Traceback" not in err
