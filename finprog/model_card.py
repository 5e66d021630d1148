"""The Hugging Face model card (README.md) of an exported adapter, written from its run.json and its test runs.

The front matter (base_model, library_name: peft, datasets, metrics and the model-index of its
results) is huggingface_hub's `ModelCardData`; the text says how it was trained, what it scored
with 95% intervals, its training FLOPs and the exact command that makes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path

from finprog import models
from finprog.data import resolve_data
from finprog.labels import TECHNIQUE_NAMES, format_flops, format_interval
from finprog.paths import shown
from finprog.runs import RUN, RunRecord
from finprog.stats import wilson_interval
from finprog.training import TrainOptions

CARD = "README.md"
# TrainOptions fields that are no `finprog train` option, and the flags of those a flag turns off
_NOT_OPTIONS = {"model", "train", "eval", "technique", "quant"}
_OFF_FLAGS = {"eval_at_start": "--no-eval-at-start", "chat_template": "--no-chat-template"}


def write_model_card(folder: str | Path, made_by: str | None = None, tests: Sequence[dict] = ()) -> Path:
    """Write `folder`/README.md for the adapter there, from its run.json (the training run) and the run.json
    records of `tests` (solves of this adapter); `made_by` is the command that made the folder, if not
    `finprog train` and `finprog export-adapter`."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    record = RunRecord.load(folder / RUN).data  # an older record upgraded: every option it ran with named
    adapter = json.loads((folder / models.ADAPTER_CONFIG).read_text())
    config = record["config"]
    zoo = models.ZOO.get(config["model"])
    results = [_result(run) for run in (record, *tests)]
    data = ModelCardData(
        base_model=zoo.origin if zoo else shown(adapter["base_model_name_or_path"]), library_name="peft",
        pipeline_tag="text-generation", datasets=["FinQA"], metrics=["exact_match"],
        tags=["finqa", config["technique"], f"{config['mode']}-generation"], model_name=folder.name,
        eval_results=[EvalResult(task_type="text-generation", task_name=f"FinQA {config['mode']} generation",
                                 dataset_type="finqa", dataset_name=r["data"], dataset_split=r["split"],
                                 metric_type="exact_match", metric_value=round(100 * r["exact"], 1),
                                 metric_name=f"exact EmAcc, {r['facts']}, {r['decoding']} decoding, 95% interval "
                                             f"{format_interval(r['interval'])}")
                      for r in results],
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_text(folder, record, adapter, results, made_by, zoo)}")
    card.save(folder / CARD)
    return folder / CARD


def train_command(config: dict) -> str:
    """The `finprog train` command of a run.json config: its data and model, and every option not at its default."""
    defaults = {f.name: f.default for f in fields(TrainOptions) if f.init and f.default is not MISSING}
    if config.get("lora_alpha") == 2 * config.get("lora_r", 0):
        defaults["lora_alpha"] = config["lora_alpha"]
    words = ["finprog train --model", config["model"], "--train", *map(_data_name, config["train"]),
             "--eval", _data_name(config["eval"])]
    unsaid = []  # None where the option's default is a value: no flag says it
    for name, value in config.items():
        if name in _NOT_OPTIONS or (name in defaults and value == defaults[name]):
            continue
        flag = _OFF_FLAGS.get(name, "--" + name.replace("_", "-"))
        if value is None:
            unsaid.append(f"{name}=None")
        else:
            words += [flag] if isinstance(value, bool) else [flag, f"{value:g}" if isinstance(value, float)
                                                             else str(value)]
    return " ".join(words) + (f"  # and, with no flag for it: {', '.join(unsaid)}" if unsaid else "")


def _data_name(path: str) -> str:
    """A split's name where it resolves to this file (portable), else the path as recorded."""
    try:
        found, _ = resolve_data(Path(path).stem)
    except ValueError:
        return path
    return Path(path).stem if found.resolve() == Path(path).resolve() else path


def _shown(folder: Path) -> str:
    """How `--model` names the folder: a shipped adapter by name, else by its path."""
    return folder.name if folder.resolve().parent == models.ADAPTERS_DIR else shown(folder)


def _asked_with(folder: Path) -> list[str]:
    """How `finprog solve` asks it: as it was trained, except for the measured settings of its SOLVE_DEFAULTS."""
    defaults = models.read_solve_defaults(folder)
    if not defaults:
        return ["Use it with finprog, which asks it as it was trained (run.json holds the training options):", ""]
    said = ", ".join(f"{name} {value}" for name, value in defaults.items() if name != "why")
    why = defaults["why"]
    return [f"Use it with finprog, which asks it as it was trained (run.json holds the training options), except "
            f"for the measured settings of {models.SOLVE_DEFAULTS} ({said}): {why}.", ""]


def _result(record: dict) -> dict:
    exact, n, name = record["metrics"]["exact"], record["metrics"]["n"], record["eval_set"]["name"]
    return {"data": name, "split": "validation" if name.startswith("dev") else "test" if name.startswith("test")
            else None, "n": n, "exact": exact, "interval": wilson_interval(round(exact * n), n),
            "decoding": _decoding(record["config"]), "inference_flops": record["flops"].get("inference_per_example"),
            "facts": _facts(record["config"])}


def _decoding(config: dict) -> str:
    """How a record's programs were decoded: greedy (free or grammar-constrained), or sampled and voted on."""
    samples = config.get("samples", 1)
    if samples > 1:
        return f"sampled ({samples} at temperature {config['temperature']:g}, majority vote)"
    return "constrained" if config.get("constrained") else "free"


def _facts(config: dict) -> str:
    """The context a record's model was shown: the ranker's top k facts, the gold facts, or the whole page."""
    context = config.get("context", "page")
    return {"retrieved": f"top {config.get('top_k')} facts", "gold": "gold facts"}.get(context, "whole page")


def _text(folder: Path, record: dict, adapter: dict, results: list[dict], made_by: str | None,
          zoo: models.ZooModel | None) -> str:
    config, steps = record["config"], record.get("steps")
    weights = folder / "adapter_model.safetensors"
    technique = TECHNIQUE_NAMES.get(config["technique"], config["technique"])
    targets = adapter["target_modules"]
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
    base = f"{zoo.origin} (finprog's zoo model `{zoo.name}`: {zoo.description})" if zoo else f"`{config['model']}`"
    epochs = record["curve"][-1]["epoch"] if record.get("curve") else None
    kept = record.get("model_step")
    lines = [
        f"# {folder.name}", "",
        f"A {technique} adapter (rank {adapter['r']}, alpha {adapter['lora_alpha']}, on {targets}; "
        f"{weights.stat().st_size / 1e6:.1f} MB) for {base}, which writes FinQA "
        f"{'programs' if config['mode'] == 'program' else 'answers'} from the facts finprog retrieves from a "
        f"report page and the question ({config['prompt']} prompts).", "",
        f"- Training: {steps} steps of {config['batch_size']} sequences on {', '.join(map(_data_name, config['train']))}"
        + (f" ({epochs:.2f} epochs)" if epochs is not None else "")
        + f", AdamW at {config['lr']:g} with {config['warmup_steps']} warmup steps and a {config['lr_schedule']} "
        f"schedule, {config['dtype']}"
        + (f"; the weights of step {kept}, its best evaluation on {record['eval_set']['name']}"
           if config.get("keep_best") and kept is not None else "")
        + f". **{format_flops(record['flops']['training_total'])} training FLOPs** (finprog's count of every step "
        f"as it ran). Machine: {record.get('machine', 'not recorded')}.", "",
        "| questions | context | decoding | n | exact EmAcc | 95% interval | GFLOPs per question |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['data']} | {r['facts']} | {r['decoding']} | {r['n']} | {100 * r['exact']:.1f}% "
          f"| {format_interval(r['interval'])} "
          f"| {'-' if r['inference_flops'] is None else format(r['inference_flops'] / 1e9, ',.0f')} |"
          for r in results),
        "",
        f"The first row is the training run's own evaluation{' of the kept step' if kept is not None else ''}.", "",
        *_asked_with(folder),
        "```bash", f"finprog solve --model {_shown(folder)}", "```", "",
        "Made by:", "", "```bash", made_by or f"{train_command(config)}\nfinprog export-adapter RUN {folder.name}", "```",
    ]
    if made_by:
        lines += ["", "which trains it as this command alone would:", "", "```bash", train_command(config), "```"]
    return "\n".join(lines) + "\n"
