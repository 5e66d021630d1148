"""An exported adapter: a finished LoRA or QLoRA run's adapter in bf16, with its run.json and model card, in a
folder small enough to commit that `finprog solve --model` loads as it loads the run folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from finprog import models
from finprog.model_card import write_model_card
from finprog.models import ADAPTER_CONFIG
from finprog.runs import RUN, RunRecord
from finprog.training import ADAPTER_WEIGHTS, TrainingError

EXPORT_MAX_BYTES = 25_000_000  # an exported adapter small enough to commit


def export_adapter(run: str | Path, dest: str | Path, made_by: str | None = None) -> dict:
    """Write a finished LoRA or QLoRA run's adapter into `dest` as bf16 safetensors, with its adapter_config.json
    and run.json (so `finprog solve --model dest` carries the training FLOPs and is prompted as it was trained),
    and a model card (`model_card.write_model_card`; `made_by`: the command that made it, if not `finprog train`).

    Refuses a run that is not a finished `finprog train` run, a full fine-tuning run, an adapter that
    `finprog solve` would refuse (`models.check_adapter`), one above EXPORT_MAX_BYTES in bf16, and a
    `dest` that already holds files. The files are written into a scratch folder beside `dest`,
    which becomes `dest` only when they are all there. Returns what was written.
    """
    import torch
    from safetensors.torch import load_file, save

    run, dest = Path(run), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TrainingError(f"{dest} already exists and is not an empty folder; choose a new folder to export into")
    record = _exportable_run(run)
    models.resolve_model(run)  # the config, the weights' header and the base model, as solve checks them
    weights = {name: tensor.to(torch.bfloat16) for name, tensor in load_file(run / ADAPTER_WEIGHTS).items()}
    size = sum(tensor.numel() * tensor.element_size() for tensor in weights.values())
    if size > EXPORT_MAX_BYTES:
        raise TrainingError(f"{run}: the adapter is {size / 1e6:.1f} MB in bf16, above the export limit of "
                            f"{EXPORT_MAX_BYTES / 1e6:g} MB; train a smaller one (--lora-r, --lora-targets)")
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted earlier export
    partial.mkdir(parents=True)
    (partial / ADAPTER_WEIGHTS).write_bytes(save(weights, metadata={"format": "pt"}))  # mode as the other files'
    for name in (ADAPTER_CONFIG, RUN):
        shutil.copyfile(run / name, partial / name)
    partial.replace(dest)
    files = [dest / name for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, RUN)]
    files.append(write_model_card(dest, made_by))
    return {"run": str(run), "dest": str(dest), "files": list(map(str, files)), "bytes": files[0].stat().st_size,
            "tensors": len(weights), "dtype": "bf16", "training_flops": record.data["flops"]["training_total"]}


def _exportable_run(run: Path) -> RunRecord:
    """The record of a finished LoRA or QLoRA `finprog train` run in `run` whose adapter weights are there."""
    record = RunRecord.trained(run) if run.is_dir() else None
    if record is None:
        raise TrainingError(f"{run} is not a `finprog train` run folder (no run.json of a training run in it); "
                            "give the folder that `finprog train --out` wrote")
    method = record.data["config"]["method"]
    if method == "full":
        raise TrainingError(f"{run} is a full fine-tuning run: it holds a whole model, not an adapter; "
                            "only lora and qlora runs export an adapter")
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (run / name).is_file()]
    if missing:
        raise TrainingError(f"{run}: the {method} run's adapter is incomplete, {' and '.join(missing)} missing")
    return record
