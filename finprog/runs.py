"""Run records on disk: `predictions.jsonl` written line by line, and `run.json` with config, metrics, FLOPs, timing.

An interrupted run loses nothing: every finished example is already a line of
`predictions.jsonl`, and `--resume` skips those ids. `run.json` is written at the
start (status "running") and rewritten when the run ends.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from finprog.provenance import machine, now, versions

PREDICTIONS = "predictions.jsonl"
RUN = "run.json"


class RunError(ValueError):
    """A run folder cannot be used as asked (exists without --resume, or was made with another config)."""


def eval_set(name: str, ids: list[str]) -> dict:
    """Identify a set of questions: runs are comparable only when `ids_sha256` agrees."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
    return {"name": name, "n": len(ids), "ids_sha256": digest}


def open_run(out: Path, config: dict, resume: bool) -> dict | None:
    """The run.json already in `out` when resuming it (None for a new folder).

    Refuses to write over an existing run without `resume`, and to resume a run that
    was made with another config.
    """
    path = Path(out) / RUN
    if not path.exists():
        return None
    if not resume:
        raise RunError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    try:
        saved = json.loads(path.read_text())
        saved_config = saved["config"]
    except (OSError, ValueError, KeyError):
        raise RunError(f"{path} is unreadable; cannot resume this run") from None
    changed = sorted(k for k in set(saved_config) | set(config) if saved_config.get(k) != config.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved_config.get(k)!r} -> {config.get(k)!r}" for k in changed)
        raise RunError(f"{out} was run with another config ({details}); resume with the same options")
    return saved


def read_rows(path: Path) -> list[dict]:
    """The rows of a predictions file; a last line cut short by an interruption is dropped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


class RunRecorder:
    """Writes one run folder; with `resume`, continues a folder that an earlier call started."""

    def __init__(self, out: Path, record: dict, resume: bool = False):
        self.out = Path(out)
        self.record = record
        self.rows: list[dict] = []
        predictions = self.out / PREDICTIONS
        if open_run(self.out, record["config"], resume) is not None and predictions.exists():
            self.rows = read_rows(predictions)
            write_rows(predictions, self.rows)  # without a half-written last line
        self.out.mkdir(parents=True, exist_ok=True)
        self.record.update(status="running", created=now(), machine=machine(), versions=versions())
        self._write_record()
        self._file = predictions.open("a", encoding="utf-8")

    @property
    def done_ids(self) -> set[str]:
        return {row["id"] for row in self.rows}

    def add(self, row: dict) -> None:
        """Append one example's result and flush it to disk at once."""
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows.append(row)

    def finish(self, **fields) -> dict:
        """Close the predictions file and write the final run.json."""
        self._file.close()
        self.record.update(fields, status="finished", finished=now())
        self._write_record()
        return self.record

    def _write_record(self) -> None:
        (self.out / RUN).write_text(json.dumps(self.record, indent=2) + "\n")
