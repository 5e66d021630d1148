"""The commands through `finprog.cli.main`: train, report, flops and models, on tiny models and synthetic runs."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from finprog import export, flopcheck, flops, models, training
from finprog.cli import _build_parser, main
from finprog.solve import DEFAULT_MODEL, PROMPTED_MODEL
from test_report import SET_B, write_run


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_option_of_every_command_has_help_text():
    def parsers(parser):
        yield parser
        for action in parser._actions:  # argparse keeps subcommands only here
            for sub in (action.choices or {}).values() if isinstance(action, argparse._SubParsersAction) else ():
                yield from parsers(sub)

    bare = [f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            for parser in parsers(_build_parser()) for action in parser._actions
            if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert bare == []
    assert len(list(parsers(_build_parser()))) == 17  # finprog, 12 commands, data's and models' 2 actions each


# ---------------------------------------------------------------- train


class Captured(Exception):
    """Raised by the stand-in for `training.train`, carrying what the command passed it."""


def train_options(monkeypatch, *args) -> tuple[training.TrainOptions, object, dict]:
    """The TrainOptions, run folder and flags that `finprog train ARGS` hands to `training.train`."""
    def capture(options, out, **flags):
        raise Captured(options, out, flags)

    monkeypatch.setattr(training, "train", capture)
    with pytest.raises(Captured) as caught:
        main(["train", *map(str, args)])
    return caught.value.args


def test_train_passes_every_option_to_the_library(monkeypatch, tmp_path):
    options, out, flags = train_options(
        monkeypatch, "--model", "m", "--method", "full", "--mode", "direct", "--train", "a.json", "b.json",
        "--eval", "e.json", "--eval-every", 3, "--eval-limit", 7, "--no-eval-at-start", "--eval-batch-size", 2,
        "--max-steps", 9, "--budget-flops", 1e15, "--target", "30%", "--target-metric", "tolerant", "--lr", 1e-4,
        "--warmup-steps", 2, "--lr-schedule", "cosine", "--weight-decay", 0.1, "--batch-size", 5,
        "--micro-batch-size", 2, "--gradient-checkpointing", "--lora-r", 4,
        "--lora-alpha", 16, "--lora-dropout", 0.1, "--lora-targets", "all-linear", "--max-prompt-tokens", 300,
        "--max-new-tokens", 12, "--no-chat-template", "--dtype", "bf16", "--seed", 7, "--out", tmp_path / "run",
        "--resume", "--json",
    )
    expected = dict(
        model="m", method="full", mode="direct", train=["a.json", "b.json"], eval="e.json", eval_every=3,
        eval_limit=7, eval_at_start=False, eval_batch_size=2, max_steps=9, epochs=None, budget_flops=1e15,
        target=0.3, target_metric="tolerant", lr=1e-4, warmup_steps=2, lr_schedule="cosine", weight_decay=0.1,
        batch_size=5, micro_batch_size=2, gradient_checkpointing=True, lora_r=4, lora_alpha=16, lora_dropout=0.1, lora_targets="all-linear",
        max_prompt_tokens=300, max_new_tokens=12, chat_template=False, dtype="bf16", seed=7, shots=0,
    )
    assert {name: getattr(options, name) for name in expected} == expected
    assert out == tmp_path / "run" and flags == {"resume": True, "progress": False}


def test_train_defaults_and_epochs(monkeypatch):
    options, out, flags = train_options(monkeypatch, "--model", "org/m", "--train", "t", "--eval", "e",
                                        "--epochs", 2.5, "--prompt", "instructed", "--shots", 2)
    defaults = training.TrainOptions(model="org/m", train="t", eval="e", epochs=2.5, prompt="instructed", shots=2)
    assert options == defaults and str(out) == "runs/org--m_lora_program" and flags == {"resume": False, "progress": True}
    assert options.dtype == "auto" and options.eval_batch_size is None  # as solve: the hardware decides


def test_train_runs_a_tiny_model_and_prints_its_summary(tiny_checkpoint_dir, demo_split, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, "train", "--model", tiny_checkpoint_dir, "--train", demo_split / "train.json", "--eval", demo_split / "eval.json",
        "--mode", "direct", "--max-steps", 2, "--batch-size", 4, "--eval-limit", 2, "--eval-batch-size", 2,
        "--max-new-tokens", 4, "--lr", 1e-3, "--out", tmp_path / "run", "--json",
    )
    summary = json.loads(out)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert code == 0 and record["status"] == "finished" and [p["step"] for p in record["curve"]] == [0, 2]
    assert summary["exact"] == record["metrics"]["exact"]
    code, _, err = run_cli(capsys, "train", "--model", tiny_checkpoint_dir, "--train", demo_split / "train.json",
                           "--eval", demo_split / "train.json", "--out", tmp_path / "again")
    assert code == 2 and err.startswith("finprog: error: ") and "Traceback" not in err


def test_export_adapter_writes_a_bf16_adapter_and_refuses_what_it_cannot_export(
        tiny_checkpoint_dir, demo_split, tmp_path, capsys, monkeypatch):
    def train_tiny(method, out):
        code, _, _ = run_cli(capsys, "train", "--model", tiny_checkpoint_dir, "--train", demo_split / "train.json",
                             "--eval", demo_split / "eval.json", "--mode", "direct", "--method", method,
                             "--max-steps", 1, "--batch-size", 2, "--eval-limit", 1, "--no-eval-at-start",
                             "--max-new-tokens", 2, "--out", out, "--json")
        assert code == 0

    train_tiny("lora", tmp_path / "lora")
    code, out, _ = run_cli(capsys, "export-adapter", tmp_path / "lora", tmp_path / "adapters" / "tiny", "--json")
    result = json.loads(out)
    trained = json.loads((tmp_path / "lora" / "run.json").read_text())
    assert code == 0 and result["dtype"] == "bf16" and result["training_flops"] == trained["flops"]["training_total"]
    assert json.loads((tmp_path / "adapters" / "tiny" / "run.json").read_text()) == trained
    code, out, _ = run_cli(capsys, "export-adapter", tmp_path / "lora", tmp_path / "again")
    assert code == 0 and "in bf16" in out and f"finprog solve --model {tmp_path / 'again'}" in out

    train_tiny("full", tmp_path / "full")
    monkeypatch.setattr(export, "EXPORT_MAX_BYTES", 1000)
    refusals = [(tmp_path / "full", "is a full fine-tuning run"), (tmp_path / "lora", "above the export limit"),
                (tmp_path / "nothing", "is not a `finprog train` run folder")]
    for run, message in refusals:
        code, out, err = run_cli(capsys, "export-adapter", run, tmp_path / "refused")
        assert code == 2 and message in err and len(err.splitlines()) == 1 and out == ""
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("base", ["/no/such/base-model", "nobody-here/no-such-model"])
def test_solve_with_an_adapter_whose_base_is_missing_says_so_in_one_line(
        base, fresh_tiny_llama, tmp_path, capsys, no_model_loads):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    get_peft_model(fresh_tiny_llama, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    code, _, err = run_cli(capsys, "solve", "--model", adapter, "--data", "demo", "--limit", 1,
                           "--out", tmp_path / "run", "--json")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"finprog: error: adapter {adapter} names base model {base!r}, which is unusable")


def test_train_on_records_without_pages_in_program_mode_names_the_first(
        tiny_checkpoint_dir, demo_split, tmp_path, capsys, no_model_loads):
    records = [{"id": f"no-page-{i}", "qa": {"question": "What is the change?", "program": "subtract(5, 3)",
                                             "exe_ans": 2.0}} for i in range(2)]  # as train_programs_6251 holds them
    (tmp_path / "programs.json").write_text(json.dumps(records))
    code, _, err = run_cli(capsys, "train", "--model", tiny_checkpoint_dir, "--train", tmp_path / "programs.json",
                           "--eval", demo_split / "eval.json", "--out", tmp_path / "run")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "programs.json: record 'no-page-0' has no page (no text, no table)" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- report


def test_report_prints_the_table_and_writes_its_files(tmp_path, capsys):
    write_run(tmp_path / "runs" / "few", exact=0.2, inference=1e12)
    write_run(tmp_path / "runs" / "lora", exact=0.4, training=3e16, curve=[(0, 0.1), (3e16, 0.4)])
    write_run(tmp_path / "runs" / "other", exact=0.5, ids=SET_B)
    code, out, _ = run_cli(capsys, "report", tmp_path / "runs", "--target", "30", "--questions", 100,
                           "--out", tmp_path / "report")
    assert code == 0 and "lora" in out and "few" in out and "wrote" in out
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["report.md", "report.png"]
    code, out, _ = run_cli(capsys, "report", tmp_path / "runs" / "lora", "--target", "0.3", "--metric", "tolerant",
                           "--out", tmp_path / "report", "--json")
    result = json.loads(out)
    assert code == 0 and result["metric"] == "tolerant" and result["questions"] == 1147
    code, _, err = run_cli(capsys, "report", tmp_path / "runs", "--target", "150%")
    assert code == 2 and "target" in err and "Traceback" not in err


def test_report_takes_several_targets(tmp_path, capsys):
    write_run(tmp_path / "runs" / "few", exact=0.2, inference=5e11)
    write_run(tmp_path / "runs" / "lora", exact=0.4, training=3e16, curve=[(0, 0.1), (3e16, 0.4)])
    code, out, _ = run_cli(capsys, "report", tmp_path / "runs", "--target", "0.1", "20%", "30", "--questions", 100,
                           "--out", tmp_path / "report")
    header = next(line for line in out.splitlines() if line.startswith("run "))
    assert code == 0 and re.search(r"FLOPs to 10\.0% +FLOPs to 20\.0% +FLOPs to 30\.0% ", header)
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("Cheapest")] == [
        f"Cheapest to reach {percent}.0% exact EmAcc" for percent in (10, 20, 30)]
    assert "Targets 10.0%, 20.0% and 30.0%" in (tmp_path / "report" / "report.md").read_text()
    code, out, _ = run_cli(capsys, "report", tmp_path / "runs", "--target", "30", "10", "--out", tmp_path / "report",
                           "--json")
    group = json.loads(out)["groups"][0]
    assert code == 0 and [entry["target"] for entry in group["to_targets"]] == [0.1, 0.3]
    assert [entry["cheapest"].split("/")[-2] for entry in group["to_targets"]] == ["few", "lora"]
    code, _, err = run_cli(capsys, "report", tmp_path / "runs", "--target", "20", "abc")
    assert code == 2 and "target 'abc' is not a number" in err and "Traceback" not in err


# ---------------------------------------------------------------- flops


def test_flops_prints_the_summary_of_a_checkpoint(tiny_checkpoint_dir, capsys):
    code, out, _ = run_cli(capsys, "flops", tiny_checkpoint_dir, "--prompt-tokens", 64, "--new-tokens", 8,
                           "--method", "full", "--gradient-checkpointing", "--json")
    shape = flops.ModelShape.from_config(models.model_config(tiny_checkpoint_dir))
    assert code == 0 and json.loads(out) == flops.summary(shape, 64, 8, "full", gradient_checkpointing=True)
    code, out, _ = run_cli(capsys, "flops", tiny_checkpoint_dir, "--lora-r", 4, "--lora-targets", "all-linear",
                           "--check", "--train-tokens", 16, "--prompt-tokens", 16, "--new-tokens", 2)
    assert code == 0 and "lora r=4 on" in out and "training step" in out
    assert flopcheck.format_check(flopcheck.check(tiny_checkpoint_dir, prompt_tokens=16, new_tokens=2,
                                                  train_tokens=16, lora_rank=4, targets="all-linear")) in out
    code, _, err = run_cli(capsys, "flops", "no-such-model")
    assert code == 2 and "no-such-model" in err and "Traceback" not in err


# ---------------------------------------------------------------- models


def test_models_lists_the_zoo_and_fetches_by_name(monkeypatch, capsys):
    code, out, _ = run_cli(capsys, "models", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [row["name"] for row in listed["zoo"]] == list(models.ZOO)
    default = {row["name"]: row for row in listed["adapters"]}[DEFAULT_MODEL]  # solve's default ships with finprog
    assert default["base"] == PROMPTED_MODEL and default["training_flops"] > 0
    assert {r["dataset"] for r in default["results"]} == {"test_100", "dev_200"}
    code, out, _ = run_cli(capsys, "models", "list")
    assert code == 0 and all(name in out for name in models.ZOO) and "licence" in out.splitlines()[0]
    assert f"{DEFAULT_MODEL}: lora on {PROMPTED_MODEL}" in out

    monkeypatch.setattr(models, "fetch", lambda name: f"/cache/{name}")
    code, out, _ = run_cli(capsys, "models", "fetch", "all")
    assert code == 0 and out.splitlines() == [f"{name}: /cache/{name}" for name in models.ZOO]
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "models", "fetch", "no-such-model")
    assert code == 2 and "no-such-model" in err and "Traceback" not in err
