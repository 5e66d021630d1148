"""Training on a tiny random checkpoint: LoRA, full and QLoRA end to end, the FLOPs of the curve, resume, bad input."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import build_tiny_model, build_tiny_tokenizer
from finprog import export, flops, models, prompts, training
from finprog.data import Example, load_finqa
from finprog.report import load_run
from finprog.runs import PREDICTIONS, RunError
from finprog.solve import SolveOptions, solve
from finprog.training import TrainingError, TrainOptions, train
from shared_data import REPO

DEMO = REPO / "data" / "demo.json"


@pytest.fixture
def checkpoint(tiny_checkpoint_dir):
    return tiny_checkpoint_dir


@pytest.fixture
def files(demo_split):
    return demo_split


pytestmark = pytest.mark.usefixtures("one_thread")


def options(checkpoint, files, **changes):
    base = dict(model=checkpoint, train=str(files / "train.json"), eval=str(files / "eval.json"), mode="direct",
                max_steps=4, eval_every=2, batch_size=8, eval_limit=3, eval_batch_size=3, max_new_tokens=4,
                max_prompt_tokens=None, lr=1e-3)
    return TrainOptions(**{**base, **changes})


def encoded_examples(opts, checkpoint) -> tuple[list, flops.ModelShape]:
    """The training examples as the loop encodes them, and the model's shape: what a FLOP count is made of."""
    tokenizer = models.load_tokenizer(checkpoint)
    encoded = [training.encode(e, tokenizer, opts, prompts.ExemplarRetriever([]))
               for path in opts.train for e in load_finqa(path)]
    return encoded, flops.ModelShape.from_config(models.model_config(checkpoint))


def step_cost(opts, checkpoint) -> tuple[int, int]:
    """FLOPs and real tokens of one step over all training examples in one batch, counted apart from the loop
    (logits over the longest reply and one more position)."""
    encoded, shape = encoded_examples(opts, checkpoint)
    cost = flops.training_step_flops(shape, max(e.length for e in encoded), len(encoded), method=opts.method,
                                     lora_rank=opts.lora_r, targets=opts.lora_targets,
                                     logits=max(len(e.target) for e in encoded) + 1)
    return cost, sum(e.length for e in encoded)


def test_lora_run_records_a_curve_whose_flops_are_the_sum_of_its_steps(tmp_path, checkpoint, files):
    opts = options(checkpoint, files)
    record = train(opts, tmp_path / "run", progress=False)
    cost, tokens = step_cost(opts, checkpoint)
    curve = record["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4]
    assert [p["train_flops"] for p in curve] == [0, 2 * cost, 4 * cost]
    assert [p["tokens"] for p in curve] == [0, 2 * tokens, 4 * tokens]
    assert curve[0]["train_loss"] is None and all(p["train_loss"] > 0 for p in curve[1:])
    assert all(p["eval_flops"] > 0 and sum(p["outcomes"].values()) == 3 for p in curve)
    assert record["flops"]["training_total"] == 4 * cost
    assert record["flops"]["evaluation_total"] == sum(p["eval_flops"] for p in curve)
    assert record["metrics"]["exact"] == curve[-1]["exact"] and record["metrics"]["n"] == 3
    assert record["config"]["technique"] == "lora" and record["config"]["quant"] == "none"
    assert record["model"]["trainable"] < record["model"]["params"] and record["stopped"] == "steps"
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == record
    assert sorted(p.name for p in (tmp_path / "run" / "evals").iterdir()) == [
        "step-000000.jsonl", "step-000002.jsonl", "step-000004.jsonl"]
    assert not (tmp_path / "run" / training.CHECKPOINT).exists()
    summary = load_run(tmp_path / "run" / "run.json")  # the report reads it
    assert summary.kind == "train" and summary.training_flops == 4 * cost and len(summary.curve) == 3


def test_a_trained_adapter_loads_and_solve_reproduces_its_final_evaluation(tmp_path, checkpoint, files):
    opts = options(checkpoint, files, max_steps=2, eval_every=None, eval_at_start=False, max_prompt_tokens=300,
                   dtype="fp32")  # as solve loads it: bf16 rounding would part a random model's outputs
    train(opts, tmp_path / "run", progress=False)
    loaded = models.load_model(tmp_path / "run", dtype="fp32")
    assert loaded.adapter == (tmp_path / "run").resolve() and loaded.name == checkpoint
    solved = solve(SolveOptions(str(tmp_path / "run"), mode="direct", data=opts.eval, limit=3, batch_size=3,
                                max_new_tokens=4, dtype="fp32"), tmp_path / "solve", progress=False)
    config = solved["config"]
    assert (config["shots"], config["max_prompt_tokens"], config["constrained"]) == (0, 300, False)  # as trained
    trained = [json.loads(line) for line in (tmp_path / "run" / PREDICTIONS).read_text().splitlines()]
    again = [json.loads(line) for line in (tmp_path / "solve" / PREDICTIONS).read_text().splitlines()]
    assert sorted((r["id"], r["completion"]) for r in trained) == sorted((r["id"], r["completion"]) for r in again)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert solved["metrics"]["exact"] == record["metrics"]["exact"]
    assert solved["config"]["technique"] == "lora"
    assert solved["flops"]["training_total"] == record["flops"]["training_total"] > 0


def test_an_exported_adapter_is_bf16_and_solves_with_its_training_flops(tmp_path, checkpoint, files, monkeypatch):
    from safetensors import safe_open

    def dtypes(folder) -> list[str]:
        with safe_open(folder / "adapter_model.safetensors", "pt") as weights:
            return [str(weights.get_tensor(name).dtype) for name in weights.keys()]

    opts = options(checkpoint, files, max_steps=2, eval_every=None, eval_at_start=False, max_prompt_tokens=300,
                   dtype="fp32")
    record = train(opts, tmp_path / "run", progress=False)
    result = export.export_adapter(tmp_path / "run", tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "run.json"]
    assert dtypes(tmp_path / "run") == ["torch.float32"] * 8  # A and B of q_proj and v_proj in 2 layers
    assert dtypes(tmp_path / "export") == ["torch.bfloat16"] * 8 and result["tensors"] == 8
    assert result["training_flops"] == record["flops"]["training_total"] > 0
    solved = solve(SolveOptions(str(tmp_path / "export"), mode="direct", data=opts.eval, limit=2, batch_size=2,
                                max_new_tokens=4, dtype="fp32"), tmp_path / "solve", progress=False)
    assert (solved["model"]["source"], solved["model"]["base"]) == ("adapter", Path(checkpoint).name)
    assert solved["flops"]["training_total"] == record["flops"]["training_total"]
    assert (solved["config"]["technique"], solved["config"]["max_prompt_tokens"]) == ("lora", 300)  # as trained
    with pytest.raises(TrainingError, match="already exists and is not an empty folder"):
        export.export_adapter(tmp_path / "run", tmp_path / "export")
    monkeypatch.setattr(export, "EXPORT_MAX_BYTES", result["bytes"] // 2)
    with pytest.raises(TrainingError, match=r"MB in bf16, above the export limit"):
        export.export_adapter(tmp_path / "run", tmp_path / "too_big")
    assert not (tmp_path / "too_big").exists()
    with pytest.raises(TrainingError, match="is not a `finprog train` run folder"):
        export.export_adapter(tmp_path / "solve", tmp_path / "again")


def test_an_exported_adapters_model_card_has_hub_front_matter_and_the_command_that_trains_it(
        tmp_path, checkpoint, files, monkeypatch):
    from huggingface_hub import metadata_load

    from finprog import cli, model_card
    from finprog.labels import format_flops

    opts = options(checkpoint, files, max_steps=2, eval_every=None, eval_at_start=False, lr_schedule="cosine",
                   warmup_steps=1, lora_r=4, lora_targets="all-linear", keep_best=True, dtype="fp32",
                   max_prompt_tokens=300)
    record = train(opts, tmp_path / "run", progress=False)
    export.export_adapter(tmp_path / "run", tmp_path / "export")
    tests = [dict(record, eval_set={**record["eval_set"], "name": "test_3"}, config={"constrained": True}),
             dict(record, eval_set={**record["eval_set"], "name": "test_5"}, config={"samples": 5, "temperature": 0.7})]
    card = model_card.write_model_card(tmp_path / "export", "finprog study x.toml", tests)
    meta = metadata_load(card)
    assert (meta["base_model"], meta["library_name"], meta["metrics"]) == (Path(checkpoint).name, "peft", ["exact_match"])
    (results,) = [entry["results"] for entry in meta["model-index"]]
    value = round(100 * record["metrics"]["exact"], 1)  # the hub groups results by task, dataset type and split
    assert [(r["dataset"]["name"], [m["value"] for m in r["metrics"]]) for r in results] == [
        ("eval", [value]), ("test_3", [value, value])]
    assert "constrained decoding" in results[1]["metrics"][0]["name"]
    assert "sampled (5 at temperature 0.7, majority vote) decoding" in results[1]["metrics"][1]["name"]
    text = card.read_text()
    assert "| test_5 | whole page | sampled (5 at temperature 0.7, majority vote) |" in text
    assert "finprog study x.toml" in text and format_flops(record["flops"]["training_total"]) in text
    # the card's train command makes the same configuration
    command = model_card.train_command(record["config"])
    parsed = {}
    monkeypatch.setattr(training, "train", lambda options, out, **_: parsed.update(options=options) or record)
    monkeypatch.setattr(training, "summary_lines", lambda _: [])
    assert cli.main(command.split()[1:] + ["--out", str(tmp_path / "again")]) == 0
    assert vars(parsed["options"]) == vars(opts)
    assert model_card.train_command({**record["config"], "max_prompt_tokens": None}).endswith(
        "  # and, with no flag for it: max_prompt_tokens=None")
    # an adapter exported before run.json had a schema version or named its prompt: the card says what it ran with
    legacy = json.loads((tmp_path / "export" / "run.json").read_text())
    del legacy["schema_version"], legacy["config"]["prompt"]
    (tmp_path / "export" / "run.json").write_text(json.dumps(legacy))
    assert "(instructed prompts)" in model_card.write_model_card(tmp_path / "export").read_text()


def test_full_fine_tuning_saves_a_checkpoint_that_loads(tmp_path, checkpoint, files):
    opts = options(checkpoint, files, method="full", mode="program", max_steps=2, eval_every=None,
                   eval_at_start=False, batch_size=4, max_new_tokens=6)
    record = train(opts, tmp_path / "run", progress=False)
    encoded, shape = encoded_examples(opts, checkpoint)
    steps = [[encoded[i] for i in training.batch_indices(8, opts, step, rank=0, world=1)] for step in (0, 1)]
    assert sorted(id(e) for batch in steps for e in batch) == sorted(id(e) for e in encoded)  # one epoch
    assert record["flops"]["training_total"] == sum(training.step_flops(shape, batch, opts) for batch in steps)
    assert record["config"]["technique"] == "full" and record["curve"][-1]["outcomes"]
    assert record["model"]["trainable"] == record["model"]["params"]
    assert models.resolve_model(tmp_path / "run").kind == "checkpoint"
    with pytest.raises(TrainingError, match="is a full fine-tuning run: it holds a whole model, not an adapter"):
        export.export_adapter(tmp_path / "run", tmp_path / "export")
    loaded = models.load_model(tmp_path / "run", dtype="fp32")
    original = models.load_model(checkpoint, dtype="fp32")
    changed = [name for name, p in loaded.model.named_parameters()
               if not p.equal(original.model.get_parameter(name))]
    assert "model.layers.0.mlp.down_proj.weight" in changed


def _four_bit_runs() -> str | None:
    """Why 4-bit bitsandbytes cannot run here, or None when it can."""
    import torch

    try:
        models.check_bitsandbytes("4bit", torch.device("cpu"), torch.bfloat16)
    except models.QuantizationUnavailableError as error:
        return str(error)
    return None


def test_qlora_trains_on_a_4_bit_base(tmp_path, checkpoint, files):
    reason = _four_bit_runs()
    if reason:
        pytest.skip(f"QLoRA needs 4-bit bitsandbytes: {reason}")
    opts = options(checkpoint, files, method="qlora", max_steps=2, eval_every=None, eval_at_start=False)
    record = train(opts, tmp_path / "run", progress=False)
    assert record["config"]["quant"] == "4bit" and record["model"]["trainable"] > 0
    assert record["flops"]["training_total"] == 2 * step_cost(opts, checkpoint)[0]
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == checkpoint
    assert models.load_model(tmp_path / "run", dtype="fp32", quant="4bit").adapter is not None


def test_loss_falls_when_overfitting_two_examples(tmp_path, checkpoint, files):
    two = json.loads((files / "train.json").read_text())[:2]
    (tmp_path / "two.json").write_text(json.dumps(two))
    opts = options(checkpoint, files, train=str(tmp_path / "two.json"), max_steps=24, eval_every=8,
                   eval_at_start=False, eval_limit=1, lr=3e-3)
    curve = train(opts, tmp_path / "run", progress=False)["curve"]
    assert curve[-1]["train_loss"] < 0.5 * curve[0]["train_loss"]


def interrupt_at_step_3(opts, out, monkeypatch) -> None:
    """Start a run and stop it with Ctrl-C in its step 3, after the checkpoint of step 2."""
    real_step, calls = training.training_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(opts, out, progress=False)
    monkeypatch.setattr(training, "training_step", real_step)
    assert (out / training.CHECKPOINT).is_file()


def test_resume_continues_from_the_checkpoint_and_counts_flops_once(tmp_path, checkpoint, files, monkeypatch):
    opts = options(checkpoint, files, batch_size=4)
    straight = train(opts, tmp_path / "straight", progress=False)
    interrupt_at_step_3(opts, tmp_path / "run", monkeypatch)
    with pytest.raises(RunError, match="--resume"):
        train(opts, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="lr: 0.001 -> 0.002"):
        train(options(checkpoint, files, batch_size=4, lr=2e-3), tmp_path / "run", resume=True, progress=False)

    resumed = train(opts, tmp_path / "run", resume=True, progress=False)
    keys = ("step", "tokens", "train_flops", "exact", "tolerant", "outcomes")
    assert [[p[k] for k in keys] for p in resumed["curve"]] == [[p[k] for k in keys] for p in straight["curve"]]
    assert [p["train_loss"] for p in resumed["curve"][1:]] == pytest.approx(
        [p["train_loss"] for p in straight["curve"][1:]], rel=1e-4)
    assert resumed["flops"]["training_total"] == straight["flops"]["training_total"]
    assert train(opts, tmp_path / "run", resume=True, progress=False) == resumed  # finished: nothing to do


def test_checkpoints_between_evaluations_let_a_resume_repeat_only_the_steps_after_them(
        tmp_path, checkpoint, files, monkeypatch):
    opts = options(checkpoint, files, batch_size=4, eval_every=4, checkpoint_every=1)
    straight = train(opts, tmp_path / "straight", progress=False)
    interrupt_at_step_3(opts, tmp_path / "run", monkeypatch)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["checkpoint_step"] == 3
    steps, real_step = [], training.training_step
    monkeypatch.setattr(training, "training_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    resumed = train(opts, tmp_path / "run", resume=True, progress=False)
    assert len(steps) == 1  # step 4 only
    keys = ("step", "tokens", "train_flops", "exact", "outcomes")
    assert [[p[k] for k in keys] for p in resumed["curve"]] == [[p[k] for k in keys] for p in straight["curve"]]
    assert resumed["curve"][-1]["train_loss"] == pytest.approx(straight["curve"][-1]["train_loss"], rel=1e-4)
    with pytest.raises(TrainingError, match="--checkpoint-every must be at least 1"):
        options(checkpoint, files, checkpoint_every=0)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:len(data) // 2], "cannot be read \\((OSError|RuntimeError)"),
    (lambda data: b"", "cannot be read \\(EOFError\\)"),
    (lambda data: b"{}", "cannot be read \\(UnpicklingError"),
])
def test_a_damaged_checkpoint_is_refused_in_one_line_before_the_model_loads_and_the_folder_is_kept(
        tmp_path, checkpoint, files, monkeypatch, damage, message):
    opts = options(checkpoint, files, batch_size=4)
    interrupt_at_step_3(opts, tmp_path / "run", monkeypatch)
    saved = tmp_path / "run" / training.CHECKPOINT
    saved.write_bytes(damage(saved.read_bytes()))
    def files():
        return {path.name: path.read_bytes() for path in (tmp_path / "run").rglob("*")
                if path.is_file() and path.name != "run.json"}

    before, record = files(), json.loads((tmp_path / "run" / "run.json").read_text())
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(RunError, match=message) as error:
        train(opts, tmp_path / "run", resume=True, progress=False)
    assert "\n" not in str(error.value) and "move it aside to train this run again from step 0" in str(error.value)
    after = json.loads((tmp_path / "run" / "run.json").read_text())
    assert files() == before and after["reason"].endswith(str(error.value))  # the run says why it stopped
    assert (after["curve"], after["checkpoint_step"]) == (record["curve"], record["checkpoint_step"])


def test_keep_best_keeps_the_best_evaluations_weights_across_a_resume(tmp_path, checkpoint, files, monkeypatch):
    from safetensors.torch import load_file

    real, scores = training.evaluate_model, iter([0.2, 0.5, 0.5])  # steps 0, 2 and 4: a tie keeps the first

    def scored(*args, **kwargs):  # a random model scores 0: give each evaluation an exact EmAcc of our own
        rows, result, cost = real(*args, **kwargs)
        return rows, {**result, "exact": next(scores)}, cost

    monkeypatch.setattr(training, "evaluate_model", scored)
    opts = options(checkpoint, files, batch_size=4, keep_best=True, dtype="fp32")
    interrupt_at_step_3(opts, tmp_path / "run", monkeypatch)
    assert (tmp_path / "run" / training.BEST).is_file()
    record = train(opts, tmp_path / "run", resume=True, progress=False)
    assert [p["exact"] for p in record["curve"]] == [0.2, 0.5, 0.5]
    assert (record["steps"], record["model_step"], record["metrics"]["exact"]) == (4, 2, 0.5)
    assert record["flops"]["training_total"] == record["curve"][-1]["train_flops"]  # every step run is paid for
    assert (tmp_path / "run" / PREDICTIONS).read_text() == (tmp_path / "run" / "evals" / "step-000002.jsonl").read_text()
    assert not (tmp_path / "run" / training.BEST).exists() and not (tmp_path / "run" / training.CHECKPOINT).exists()
    assert "kept the weights of step 2, its best evaluation" in training.summary_lines(record)

    monkeypatch.setattr(training, "evaluate_model", real)
    two = train(options(checkpoint, files, batch_size=4, max_steps=2, dtype="fp32"), tmp_path / "two", progress=False)
    assert two["model_step"] == 2
    kept, after_two = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("run", "two"))
    assert kept.keys() == after_two.keys() and all(kept[k].equal(after_two[k]) for k in kept)


def test_micro_batches_make_the_batch_update_and_count_their_own_flops(tmp_path, checkpoint, files):
    whole = options(checkpoint, files, method="full", dtype="fp32", max_steps=2, eval_every=None, eval_at_start=False)
    micro = options(checkpoint, files, method="full", dtype="fp32", max_steps=2, eval_every=None, eval_at_start=False,
                    micro_batch_size=3)
    records = [train(opts, tmp_path / name, progress=False) for opts, name in ((whole, "whole"), (micro, "micro"))]
    weights = [models.load_model(tmp_path / name, dtype="fp32").model.state_dict() for name in ("whole", "micro")]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        assert value == pytest.approx(weights[1][name], abs=1e-4), name  # the same two updates (Adam moves 2e-3)
    assert records[0]["curve"][-1]["train_loss"] == pytest.approx(records[1]["curve"][-1]["train_loss"], rel=1e-5)

    encoded, shape = encoded_examples(micro, checkpoint)  # one batch of 8: micro-batches of 3, 3 and 2
    chunks = training.micro_batches(encoded, micro)
    assert [len(c) for c in chunks] == [3, 3, 2] and sorted(map(id, encoded)) == sorted(id(e) for c in chunks for e in c)
    cost = sum(flops.training_step_flops(shape, max(e.length for e in c), len(c), method="full",
                                         logits=max(len(e.target) for e in c) + 1) for c in chunks)
    assert records[1]["flops"]["training_total"] == 2 * cost < records[0]["flops"]["training_total"]


def test_full_fine_tuning_in_bf16_trains_fp32_weights_in_mixed_precision(tmp_path, checkpoint, files):
    import torch
    from accelerate import Accelerator

    opts = options(checkpoint, files, method="full", dtype="bf16", lr=1e-5)
    assert training.mixed_precision(opts, "cpu") == torch.bfloat16
    loaded, model = training.trainable_model(opts, training.validate(opts), "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    trainable = list(model.parameters())
    before = [p.detach().clone() for p in trainable]
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(trainable, lr=opts.lr))
    encoded, _ = encoded_examples(opts, checkpoint)
    batch = [training.collate(encoded, loaded.tokenizer.pad_token_id, "cpu")]
    with pytest.MonkeyPatch.context() as patch:  # the forward runs in bf16: every linear layer sees bf16 inputs
        seen = set()
        forward = torch.nn.Linear.forward
        patch.setattr(torch.nn.Linear, "forward", lambda self, x: seen.add(forward(self, x).dtype) or forward(self, x))
        training.training_step(accelerator, model, optimizer, trainable, batch, opts, rate=1e-5, autocast=torch.bfloat16)
    assert seen == {torch.bfloat16}
    moved = sum(int((p != b).sum()) for p, b in zip(trainable, before)) / sum(b.numel() for b in before)
    assert moved > 0.9  # in bf16 weights, a step of 1e-5 moves few of them: most updates round away

    record = train(replace(opts, max_steps=1, eval_every=None, eval_at_start=False), tmp_path / "run", progress=False)
    assert (record["model"]["dtype"], record["model"]["compute_dtype"]) == ("torch.float32", "torch.bfloat16")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"  # saved as it computes and answers
    with pytest.raises(TrainingError, match="fp16 would round most weight updates away"):
        options(checkpoint, files, method="full", dtype="fp16")


def test_one_training_step_in_micro_batches_takes_the_whole_batchs_loss(checkpoint, files):
    import torch
    from accelerate import Accelerator

    opts = options(checkpoint, files, method="lora", dtype="fp32")
    loaded, model = training.trainable_model(opts, training.validate(opts), "cpu")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(trainable, lr=opts.lr))
    encoded, _ = encoded_examples(opts, checkpoint)
    pad = loaded.tokenizer.pad_token_id
    whole = training.training_step(accelerator, model, optimizer, trainable, [training.collate(encoded, pad, "cpu")],
                                   opts, rate=0.0)  # a zero rate: the weights stay put
    halves = [training.collate(encoded[:3], pad, "cpu"), training.collate(encoded[3:], pad, "cpu")]
    parts = training.training_step(accelerator, model, optimizer, trainable, halves, opts, rate=0.0)
    assert parts == pytest.approx(whole, rel=1e-5) and whole > 0


def test_a_resumed_run_may_change_how_its_steps_run_and_says_so(tmp_path, checkpoint, files, monkeypatch):
    opts = options(checkpoint, files, batch_size=4)
    straight = train(opts, tmp_path / "straight", progress=False)
    interrupt_at_step_3(opts, tmp_path / "run", monkeypatch)
    smaller = options(checkpoint, files, batch_size=4, micro_batch_size=1)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "training_step", stop)  # stopped again in its first resumed step
    with pytest.raises(KeyboardInterrupt):
        train(smaller, tmp_path / "run", resume=True, progress=False)
    monkeypatch.undo()
    interrupted = json.loads((tmp_path / "run" / "run.json").read_text())
    assert interrupted["status"] == "interrupted" and [p["step"] for p in interrupted["curve"]] == [0, 2]

    resumed = train(smaller, tmp_path / "run", resume=True, progress=False)
    assert resumed["config"]["micro_batch_size"] == 1
    assert resumed["config_changes"] == [{"from_step": 2, "micro_batch_size": [None, 1]}]
    assert [p["step"] for p in resumed["curve"]] == [0, 2, 4]
    assert [p["train_loss"] for p in resumed["curve"][1:]] == pytest.approx(
        [p["train_loss"] for p in straight["curve"][1:]], rel=1e-3)
    assert resumed["curve"][1]["train_flops"] == straight["curve"][1]["train_flops"]  # steps 1-2 ran whole
    assert resumed["flops"]["training_total"] < straight["flops"]["training_total"]  # steps 3-4 without padding


DATA_PARALLEL = """
import json, sys
from pathlib import Path
from finprog.training import TrainOptions, train
train(TrainOptions(**json.loads(sys.argv[1])), Path(sys.argv[2]), progress=False)
"""


@pytest.mark.slow  # starts two Python processes that each load torch
def test_two_processes_train_data_parallel_and_their_flops_add_up(tmp_path, checkpoint, files):
    import torch

    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    opts = options(checkpoint, files, method="full", max_steps=2, eval_every=None, eval_at_start=False, batch_size=2,
                   micro_batch_size=1, eval_limit=2)  # gradients shared once per step, after the last micro-batch
    fields = {k: v for k, v in vars(opts).items() if k not in ("technique", "quant")}
    (tmp_path / "train.py").write_text(DATA_PARALLEL)
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "train.py"), json.dumps(fields), str(tmp_path / "run")],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    encoded, shape = encoded_examples(opts, checkpoint)
    batches = [[encoded[i] for i in training.batch_indices(8, opts, step, rank, world=2)]
               for step in (0, 1) for rank in (0, 1)]
    assert sorted(id(e) for batch in batches for e in batch) == sorted(id(e) for e in encoded)  # one epoch
    assert record["flops"]["training_total"] == sum(training.step_flops(shape, batch, opts) for batch in batches)
    assert record["tokens"] == sum(e.length for e in encoded) and record["status"] == "finished"


def test_target_and_budget_stop_training(tmp_path, checkpoint, files, monkeypatch):
    real_evaluate, accuracies = training.evaluate_model, iter([0.0, 0.5, 1.0])

    def improving(*args, **kwargs):  # a tiny random model never answers right: pretend it learns
        rows, result, cost = real_evaluate(*args, **kwargs)
        return rows, {**result, "exact": next(accuracies)}, cost

    monkeypatch.setattr(training, "evaluate_model", improving)
    record = train(options(checkpoint, files, eval_every=1, max_steps=5, target=0.75), tmp_path / "target",
                   progress=False)
    monkeypatch.setattr(training, "evaluate_model", real_evaluate)
    assert record["stopped"] == "target" and record["steps"] == 2 and len(record["curve"]) == 3
    reached = record["curve"][2]
    assert record["target"] == {"metric": "exact", "value": 0.75, "reached": True, "step": 2, "exact": 1.0,
                                "tokens": reached["tokens"], "train_flops": reached["train_flops"]}

    step = record["curve"][1]["train_flops"]
    budget = train(options(checkpoint, files, eval_every=1, budget_flops=1.5 * step, target=0.4), tmp_path / "budget",
                   progress=False)
    assert budget["stopped"] == "budget" and budget["steps"] == 1 and budget["flops"]["training_total"] == step
    assert budget["target"]["reached"] is False


def test_prompts_are_cut_to_the_limit_the_same_way_for_training_and_evaluation(checkpoint):
    tokenizer = models.load_tokenizer(checkpoint)
    example = load_finqa(DEMO)[0]
    retriever = prompts.ExemplarRetriever([])
    full = TrainOptions(model=checkpoint, train="demo", eval="demo", mode="direct", max_prompt_tokens=None)
    cut = TrainOptions(model=checkpoint, train="demo", eval="demo", mode="direct", max_prompt_tokens=300)
    whole = training.encode(example, tokenizer, full, retriever)
    short = training.encode(example, tokenizer, cut, retriever)
    assert len(whole.prompt) > 300 >= len(short.prompt) and short.target == whole.target
    assert tokenizer.decode(short.target) == "0.13636\n"  # the templated reply: exe_ans, then the turn's end
    evaluated = tokenizer(prompts.build_prompt(example, tokenizer, cut, retriever), add_special_tokens=False)
    assert evaluated["input_ids"] == short.prompt
    batch = training.collate([short, whole], tokenizer.pad_token_id, "cpu")
    padding = whole.length - short.length
    assert batch["input_ids"].shape == (2, whole.length)
    assert batch["input_ids"][0].tolist() == [tokenizer.pad_token_id] * padding + short.prompt + short.target
    assert batch["attention_mask"][0].tolist() == [0] * padding + [1] * short.length
    assert batch["position_ids"][0].tolist() == [0] * padding + list(range(short.length))
    assert batch["labels"].tolist() == [short.target, whole.target]  # the reply window: the same replies here


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_the_reply_loss_equals_the_loss_over_every_position_with_labels_on_the_reply_alone(architecture):
    """Left padding, position ids and logits over the reply window only give the loss and gradients of the
    whole right-padded batch with the prompt's labels masked (what `labels=` in transformers computes)."""
    import torch

    model = build_tiny_model(architecture, build_tiny_tokenizer())
    short, long = training.Encoded([5, 6, 7], [8, 9]), training.Encoded([5, 6, 7, 10, 11, 12], [13, 14, 15])
    pad = 0
    width = long.length
    right = torch.tensor([e.prompt + e.target + [pad] * (width - e.length) for e in (short, long)])
    labels = torch.tensor([[-100] * len(e.prompt) + e.target + [-100] * (width - e.length) for e in (short, long)])

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    expected, expected_grads = gradients(model(input_ids=right, attention_mask=right.ne(pad).long(), labels=labels).loss)
    got, grads = gradients(training.reply_loss(model, training.collate([short, long], pad, "cpu")))
    assert got == pytest.approx(expected, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, expected_grads))


@pytest.mark.parametrize("schedule, rates", [
    ("constant", [0.25, 0.5, 0.75, 1, 1, 1, 1, 1]),
    ("linear", [0.25, 0.5, 0.75, 1, 0.8, 0.6, 0.4, 0.2]),
    ("cosine", [0.25, 0.5, 0.75, 1, 0.9045, 0.6545, 0.3455, 0.0955]),
])
def test_learning_rate_warms_up_then_holds_or_decays_to_zero_at_the_step_limit(schedule, rates):
    options = TrainOptions(model="m", train="t", eval="e", lr=2.0, warmup_steps=3, lr_schedule=schedule)
    got = [training.learning_rate(options, step, total_steps=8) for step in range(8)]
    assert got == pytest.approx([2 * rate for rate in rates], abs=1e-4)


def test_fit_context_drops_the_least_relevant_sentences_first():
    example = Example(id="x", pre_text=["alpha revenue rose .", "unrelated filler text ."],
                      post_text=["more filler .", "revenue in 2008 was 5 ."],
                      table=[["h", "1"], ["a", "2"], ["b", "3"]], question="what was revenue in 2008 ?")

    def size(e):
        return sum(len(t) for t in e.pre_text + e.post_text) + 10 * len(e.table)

    assert prompts.fit_context(example, lambda e: size(e) <= 1000) is example
    kept = prompts.fit_context(example, lambda e: size(e) <= 30 + 20 + 30)
    assert kept.pre_text == ["alpha revenue rose ."] and kept.post_text == ["revenue in 2008 was 5 ."]
    assert kept.table == example.table
    bare = prompts.fit_context(example, lambda e: size(e) <= 20)
    assert bare.pre_text == bare.post_text == [] and bare.table == [["h", "1"], ["a", "2"]]
    assert prompts.fit_context(example, lambda e: False).table == [["h", "1"]]


def test_several_training_files_are_trained_on_in_order(tmp_path, checkpoint, files):
    records = json.loads((files / "train.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(records[:3]))
    (tmp_path / "b.json").write_text(json.dumps(records[3:]))
    data = training.validate(options(checkpoint, files, train=[str(tmp_path / "a.json"), str(tmp_path / "b.json")]))
    assert [e.id for e in data.train] == [r["id"] for r in records]
    assert data.train_paths == [tmp_path / "a.json", tmp_path / "b.json"]


@pytest.mark.parametrize("case, message", [
    ("method", "unknown training method 'dora'"),
    ("schedule", "unknown learning-rate schedule 'step'"),
    ("micro_batch", "--micro-batch-size \\(9\\) cannot exceed --batch-size \\(8\\)"),
    ("no_programs", "8 of 8 training records have no gold program"),
    ("shared_ids", "shares 5 id"),
    ("repeated_ids", "8 id\\(s\\) occur more than once"),
    ("budget", "does not pay for one training step"),
    ("adapter", "is a PEFT adapter"),
])
def test_bad_input_fails_before_any_model_loads(tmp_path, checkpoint, files, no_model_loads, case, message):
    changes = {}
    if case == "method":
        changes["method"] = "dora"
    elif case == "schedule":
        changes["lr_schedule"] = "step"
    elif case == "micro_batch":
        changes["micro_batch_size"] = 9
    elif case == "no_programs":
        records = json.loads((files / "train.json").read_text())
        for record in records:
            del record["qa"]["program"]
        (tmp_path / "direct_only.json").write_text(json.dumps(records))
        changes.update(mode="program", train=str(tmp_path / "direct_only.json"))
    elif case == "shared_ids":
        changes["train"] = str(DEMO)
    elif case == "repeated_ids":
        changes["train"] = [str(files / "train.json")] * 2
    elif case == "budget":
        changes["budget_flops"] = 1e6
    else:
        import torch
        from safetensors.torch import save_file

        (tmp_path / "adapter").mkdir()
        config = {"base_model_name_or_path": checkpoint, "peft_type": "LORA", "r": 2, "lora_alpha": 4,
                  "target_modules": ["q_proj"]}
        (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
        save_file({"lora_A.weight": torch.zeros(2, 4)}, tmp_path / "adapter" / "adapter_model.safetensors")
        changes["model"] = str(tmp_path / "adapter")
    with pytest.raises(TrainingError, match=message):
        train(options(checkpoint, files, **changes), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
