"""Run folders: the one `RunRecord` type (schema, load, save, validate), the folder lock, and resuming predictions.

A run folder holds `run.json` (schema version, config, model, metrics, FLOPs, timing,
provenance and a status) and `predictions.jsonl`, one line per example written as it is
produced, so an interrupted run loses nothing and `--resume` skips the ids already there.
One process writes a folder at a time (`RunRecorder` holds an OS lock on it, released when
the process ends, however it ends). A run that stops on an error or Ctrl-C is marked
"failed" or "interrupted" with the reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from finprog.errors import FinprogError
from finprog.provenance import machine, now, versions

PREDICTIONS = "predictions.jsonl"
RUN = "run.json"
EVALS = "evals"  # a training run's evaluations: evals/step-NNNNNN.jsonl, the predictions of each
LOCK = ".lock"
DAMAGED = "predictions.damaged.jsonl"
KINDS = ("solve", "train", "cascade")
KIND_NAMES = {"solve": "a single-model run of `finprog solve`", "train": "a training run of `finprog train`",
              "cascade": "a cascade of `finprog solve --cascade`"}
SCHEMA_VERSION = 3
"""The format of run.json. Version 2 added `schema_version` and lets `flops.training_total` be null, an unknown
training cost, with `flops.training_unknown` saying why. A record without a version is of version 1; `RunRecord.load`
upgrades it (`_upgraded`) and refuses a version newer than this one."""
STATUSES = ("running", "finished", "failed", "interrupted")


class RunError(FinprogError, ValueError):
    """A run folder cannot be used as asked, or holds a malformed record; the message names the file and field."""


@dataclass(frozen=True)
class Field:
    """What one run.json field holds: text, a number in [low, high], a flag, an object or a list."""

    kind: type
    low: float = 0.0
    high: float = math.inf
    required: bool = True
    null: bool = False  # null allowed (program accuracy of a direct run)
    choices: tuple = ()

    def problem(self, value) -> str | None:
        if value is None and self.null:
            return None
        if self.choices and value not in self.choices:
            return f"must be {' or '.join(map(repr, self.choices))}, got {value!r}"
        if self.kind is float:
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not self.low <= value <= self.high):
                bounds = f"to {self.high:g}" if math.isfinite(self.high) else "upward, and finite"
                return f"must be a number from {self.low:g} {bounds}, got {value!r}"
        elif self.kind is str:
            if not isinstance(value, str) or not value:
                return f"must be a non-empty string, got {value!r}"
        elif self.kind is bool:
            if not isinstance(value, bool):
                return f"must be true or false, got {value!r}"
        elif not isinstance(value, self.kind):
            return f"must be {'an object' if self.kind is dict else 'a list'}, got {type(value).__name__}"
        return None


TEXT, NUMBER, FRACTION, OBJECT = Field(str), Field(float), Field(float, high=1), Field(dict)

SCHEMA = {
    # every run.json, from its first write
    "kind": Field(str, choices=KINDS),
    "status": Field(str, choices=STATUSES),
    "config": OBJECT,
    "config.mode": TEXT,
    "eval_set.name": TEXT,
    "eval_set.n": Field(float, low=1),
    "eval_set.ids_sha256": TEXT,
}
RESULTS = {
    # a finished run's too
    "model.name": TEXT,
    "model.params": Field(float, low=1),
    "config.technique": TEXT,
    "config.shots": Field(float, required=False),
    "config.constrained": Field(bool, required=False),
    "config.samples": Field(float, low=1, required=False),
    "config.quant": Field(str, required=False),
    "metrics.n": Field(float, low=1),
    "metrics.exact": FRACTION,
    "metrics.tolerant": FRACTION,
    "metrics.program_accuracy": Field(float, high=1, null=True),
    "metrics.outcomes": OBJECT,
    "metrics.prompt_tokens_per_example": NUMBER,
    "metrics.new_tokens_per_example": NUMBER,
    "flops.training_total": Field(float, null=True),  # null: unknown, and `flops.training_unknown` says why
    "flops.training_unknown": Field(str, required=False),
    "flops.inference_per_example": Field(float, low=1),
    "flops.inference_per_example_executed": NUMBER,
    "timing.seconds_per_example": NUMBER,
}
CASCADE = {
    # a finished cascade's too
    "config.cascade": Field(list),
    "config.accept": TEXT,
    "model.stages": Field(list),
    "answered_by": OBJECT,
}
CURVE_POINT = {"train_flops": NUMBER, "exact": FRACTION, "tolerant": FRACTION}


@dataclass
class RunRecord:
    """One run.json: `data` is its JSON object, `path` the file."""

    path: Path
    data: dict

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """Read a run.json (or the one in a run folder); unreadable text or JSON raises RunError naming the file."""
        path = Path(path)
        path = path / RUN if path.is_dir() else path
        try:
            text = read_text(path, RunError)
            data = json.loads(text)
        except OSError as error:
            raise RunError(f"{path}: cannot read: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise RunError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
        if not isinstance(data, dict):
            raise RunError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls(path, _upgraded(path, data))

    @classmethod
    def trained(cls, model: str) -> RunRecord | None:
        """The finished record of the `finprog train` run that wrote the checkpoint folder `model` (or finprog's
        trained adapter of that name), if it is one."""
        from finprog.models import model_folder

        path = model_folder(model) / RUN
        if not path.is_file():
            return None
        record = cls.load(path)
        return record.validate() if record.data.get("kind") == "train" else None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def status(self) -> object:
        return self.data.get("status")

    def save(self) -> None:
        """Write run.json through a temporary file, so a crash leaves the old or the new record, never half of one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        replace_file(self.path, json.dumps(self.data, indent=2) + "\n")

    def validate(self, finished: bool = True) -> RunRecord:
        """Check the schema (with `finished`, a finished run's results too); RunError names the file and field."""
        if finished and self.status != "finished":
            raise RunError(f"{self.path}: the run is not finished (status {self.status!r}); "
                           "continue it with --resume, or leave it out")
        self._check(self.data, SCHEMA)
        if finished:
            self._check(self.data, RESULTS)
            self._check_training_cost()
            if self.data["kind"] == "train":
                self._check_curve()
            if self.data["kind"] == "cascade":
                self._check(self.data, CASCADE)
        return self

    def get(self, name: str, default: object = None) -> object:
        """The value of a dotted field (`metrics.exact`), or `default` when it is absent."""
        value = self.data
        for key in name.split("."):
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return value

    def _check(self, data: object, schema: dict[str, Field], prefix: str = "") -> None:
        missing = object()
        for name, spec in schema.items():
            value, keys = data, name.split(".")
            for depth, key in enumerate(keys):
                if not isinstance(value, dict):
                    self._fail(prefix, ".".join(keys[:depth]), f"must be an object, got {type(value).__name__}")
                value = value.get(key, missing)
                if value is missing:
                    break
            if value is missing:
                if spec.required:
                    self._fail(prefix, name, "is missing")
                continue
            problem = spec.problem(value)
            if problem:
                self._fail(prefix, name, problem)

    def _check_training_cost(self) -> None:
        """An unknown training cost (null) says why, and a training run always knows its own."""
        if self.get("flops.training_total") is not None:
            return
        if self.data["kind"] == "train":
            self._fail("", "flops.training_total", "is null, but a training run counts its own training FLOPs")
        if self.get("flops.training_unknown") is None:
            self._fail("", "flops.training_total", "is null (unknown) without 'flops.training_unknown' saying why")

    def _check_curve(self) -> None:
        curve = self.data.get("curve")
        if curve is None:
            self._fail("", "curve", "is missing")
        if not isinstance(curve, list) or not curve:
            self._fail("", "curve", "must be a non-empty list of evaluations for a training run")
        for index, point in enumerate(curve):
            self._check(point, CURVE_POINT, prefix=f"curve[{index}]")
            if index and point["train_flops"] < curve[index - 1]["train_flops"]:
                self._fail(f"curve[{index}]", "train_flops", "is smaller than the one before it")

    def _fail(self, prefix: str, name: str, problem: str):
        full = ".".join(part for part in (prefix, name) if part)
        raise RunError(f"{self.path}: field {full!r} {problem}")


V1_UNKNOWN_TRAINING = ("recorded as 0 by a finprog that did not yet mark unknown training costs: the adapter had no "
                       "run.json of its `finprog train` run")


def _upgraded(path: Path, data: dict) -> dict:
    """`data` in the format of SCHEMA_VERSION: a newer version is refused, and version 1 is upgraded.

    Version 1 recorded 0 training FLOPs for a run of an adapter without the run.json of its
    training (its cost unknown); such a record now says so instead. A training record names every
    option of LEGACY_TRAIN_CONFIG, with what it ran with where it was written before the option.
    """
    version = data.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RunError(f"{path}: field 'schema_version' must be a whole number from 1, got {version!r}")
    if version > SCHEMA_VERSION:
        raise RunError(f"{path}: run.json of schema version {version}, written by a newer finprog; this one reads "
                       f"versions up to {SCHEMA_VERSION}: upgrade finprog to read it")
    if version == 1:
        data = _with_legacy_config(data)
        cost = data.get("flops")
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        stages = model.get("stages") if isinstance(model.get("stages"), list) else []
        sources = [model.get("source")] + [stage.get("source") for stage in stages if isinstance(stage, dict)]
        if data.get("kind") != "train" and "adapter" in sources and isinstance(cost, dict) \
                and cost.get("training_total") == 0:
            data = {**data, "flops": {**cost, "training_total": None, "training_unknown": V1_UNKNOWN_TRAINING}}
    if data.get("kind") == "train" and isinstance(data.get("config"), dict):
        config = data["config"]
        data = {**data, "config": {**config, **{k: v for k, v in LEGACY_TRAIN_CONFIG.items() if k not in config}}}
    return {**data, "schema_version": SCHEMA_VERSION}


LEGACY_CONFIG = {"context": "page", "prompt": "instructed"}
"""Options that runs of version 1 may lack, and what they ran with: the whole page (before retrieval) and the
instructed prompt (before bare prompts); a solve also ran without the shared-prefix cache."""
LEGACY_SOLVE_CONFIG = {**LEGACY_CONFIG, "prefix_cache": False}


LEGACY_TRAIN_CONFIG = {"keep_best": False, "lr_schedule": "constant", "micro_batch_size": None,
                       "checkpoint_every": None}
"""Training options that older training records may lack, and what they ran with: the last step's weights (before
version 3), a constant rate after the warmup, whole batches, checkpoints only at evaluations."""


def _with_legacy_config(data: dict) -> dict:
    """A version-1 record whose config (a cascade: each stage's) names every option of LEGACY_SOLVE_CONFIG, or of
    LEGACY_CONFIG for a training run."""
    config = data.get("config")
    if not isinstance(config, dict):
        return data
    legacy = LEGACY_CONFIG if data.get("kind") == "train" else LEGACY_SOLVE_CONFIG
    if isinstance(config.get("stages"), list):
        stages = [{**legacy, **stage} if isinstance(stage, dict) else stage for stage in config["stages"]]
        return {**data, "config": {**config, "stages": stages}}
    return {**data, "config": {**legacy, **config}}


def evaluation_file(folder: Path, step: int) -> Path:
    """The predictions of a training run's evaluation at `step`."""
    return folder / EVALS / f"step-{step:06d}.jsonl"


def finished_run(folder: str | Path) -> RunRecord | None:
    """The checked record of the finished run in `folder`; None when the folder holds no run or an unfinished one."""
    path = Path(folder) / RUN
    record = RunRecord.load(path) if path.is_file() else None
    return record.validate() if record and record.status == "finished" else None


def read_text(path: Path, error: type[Exception]) -> str:
    """A file's UTF-8 text; bytes that are not UTF-8 raise `error` naming the file and byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte {problem.start}: {data[problem.start:problem.start + 1]!r}); "
                    "save it as UTF-8") from None


def replace_file(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def path_list(paths, option: str) -> list[Path]:
    """One path (a str or os.PathLike) or an iterable of them, as Paths: a string is one path, never its letters."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    try:
        items = list(items)
    except TypeError:
        items = [items]
    if not items:
        raise RunError(f"{option}: no path given; give one or more")
    if not all(isinstance(item, (str, os.PathLike)) for item in items):
        raise RunError(f"{option} must be a path or a list of paths, got {paths!r}")
    return [Path(item) for item in items]


def eval_set(name: str, ids: list[str]) -> dict:
    """Identify a set of questions: runs are comparable only when `ids_sha256` agrees."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
    return {"name": name, "n": len(ids), "ids_sha256": digest}


def lock(out: Path):
    """Hold the OS lock of run folder `out` until the returned file is closed or the process ends.

    A folder another process holds raises RunError naming that process.
    """
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunError(f"{out} is in use by another finprog process (pid {holder}); wait for it to end, "
                       "or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def open_run(out: Path, kind: str, config: dict, resume: bool, may_change: tuple[str, ...] = ()) -> RunRecord | None:
    """The record already in `out` when resuming it (None for a new folder).

    Refuses to write over an existing run without `resume` (saying how it ended), to resume
    a run of another kind, and one that was made with another config (but for the keys in
    `may_change`).
    """
    path = Path(out) / RUN
    if not path.exists():
        return None
    if not resume:
        status = _status_of(path)
        raise RunError(f"{out} already holds a run{status}; pass --resume to continue it, or choose another --out")
    saved = RunRecord.load(path)
    if saved.data.get("kind") != kind:
        held = KIND_NAMES.get(saved.data.get("kind"), f"a run of kind {saved.data.get('kind')!r}")
        raise RunError(f"{out} holds {held}, not {KIND_NAMES[kind]}; resume it with the command that made it, "
                       "or choose another --out")
    saved_config = saved.data.get("config")
    if not isinstance(saved_config, dict):
        raise RunError(f"{path}: field 'config' is missing; cannot resume this run")
    changed = sorted(k for k in set(saved_config) | set(config)
                     if saved_config.get(k) != config.get(k) and k not in may_change)
    if changed:
        details = ", ".join(f"{k}: {_brief(saved_config.get(k))} -> {_brief(config.get(k))}" for k in changed)
        raise RunError(f"{out} was run with another config ({details}); resume with the same options")
    return saved


def _brief(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def finished_record(out: Path, kind: str, config: dict, resume: bool) -> dict | None:
    """The record of the finished run in `out` when resuming would only repeat it (every prediction is there), else
    None; refuses what `open_run` refuses."""
    saved = open_run(out, kind, config, resume)
    predictions = Path(out) / PREDICTIONS
    if saved is None or saved.status != "finished" or not predictions.is_file():
        return None
    done = {row["id"] for row in read_rows(predictions)}
    return saved.data if len(done) == saved.get("eval_set.n") else None


def _status_of(path: Path) -> str:
    try:
        record = RunRecord.load(path)
    except RunError:
        return ""
    reason = record.data.get("reason")
    return f" ({record.status}{': ' + reason if reason else ''})" if record.status else ""


def read_rows(path: Path, damaged: Path | None = None) -> list[dict]:
    """The rows of a predictions file; a line that is not a JSON object with an id is left out.

    Such lines (one cut short by an interruption, or damaged) are appended to `damaged` when
    given, and each is named in a warning with its line number; only their examples are redone.
    """
    rows, bad = [], []
    for number, line in enumerate(read_text(path, RunError).splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            rows.append(row)
        elif line.strip():
            bad.append((number, line))
    if bad and damaged is not None:
        with damaged.open("a", encoding="utf-8") as file:
            file.writelines(line + "\n" for _, line in bad)
        for number, _ in bad:
            print(f"finprog: warning: {path} line {number} is not a whole prediction; set aside in {damaged}, "
                  "its example will be run again", file=sys.stderr)
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write a predictions file whole, crash-safe (see `replace_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, "".join(json.dumps(row) + "\n" for row in rows))


class RunRecorder:
    """Writes one run folder under its lock; with `resume`, continues a folder that an earlier call started."""

    def __init__(self, out: Path, record: dict, resume: bool = False, may_change: tuple[str, ...] = ()):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise RunError(f"--out {out} is a file; give a folder for the run")
        self._lock = lock(self.out)
        try:
            saved = open_run(self.out, record["kind"], record["config"], resume, may_change)
        except RunError:
            self._lock.close()
            raise
        self.record = RunRecord(self.out / RUN, record)
        self.rows: list[dict] = []
        predictions = self.out / PREDICTIONS
        if saved is not None and predictions.exists():
            self.rows = list({row["id"]: row for row in read_rows(predictions, self.out / DAMAGED)}.values())
            write_rows(predictions, self.rows)  # without damaged lines or repeats
        record.update(schema_version=SCHEMA_VERSION, status="running", created=now(), machine=machine(),
                      versions=versions())
        self.record.save()
        self._file = predictions.open("a", encoding="utf-8")

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """An error or Ctrl-C inside the `with` block marks the run failed or interrupted."""
        if error is not None and not self._file.closed:
            self.fail(error)

    @property
    def done_ids(self) -> set[str]:
        return {row["id"] for row in self.rows}

    def add(self, row: dict) -> None:
        """Append one example's result and flush it to disk at once."""
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows.append(row)

    def update(self, **fields) -> None:
        """Add fields to run.json now (the run stays running)."""
        self.record.data.update(fields)
        self.record.save()

    def finish(self, **fields) -> dict:
        """Close the predictions file, write the final run.json, release the folder."""
        self._close(**{**fields, "status": "finished", "finished": now()})
        return self.record.data

    def fail(self, error: BaseException) -> None:
        """Mark the run failed (an error) or interrupted (Ctrl-C), with the reason, and release the folder."""
        interrupted = isinstance(error, KeyboardInterrupt)
        reason = "interrupted (Ctrl-C)" if interrupted else f"{type(error).__name__}: {error}"
        self._close(status="interrupted" if interrupted else "failed", reason=reason, ended=now())

    def _close(self, **fields) -> None:
        self._file.close()
        self.record.data.update(fields)
        self.record.save()
        self._lock.close()
