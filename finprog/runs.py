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


class RunRecorder:
    """Writes one run folder; with `resume`, continues a folder that an earlier call started."""

    def __init__(self, out: Path, record: dict, resume: bool = False):
        self.out = Path(out)
        self.record = record
        self.rows: list[dict] = []
        predictions = self.out / PREDICTIONS
        if predictions.exists() and not resume:
            raise RunError(f"{self.out} already holds a run; pass --resume to continue it, or choose another --out")
        if resume and predictions.exists():
            self._check_same_config()
            self.rows = _read_rows(predictions)
            predictions.write_text("".join(json.dumps(row) + "\n" for row in self.rows), encoding="utf-8")
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

    def _check_same_config(self) -> None:
        path = self.out / RUN
        try:
            saved = json.loads(path.read_text())["config"]
        except (OSError, ValueError, KeyError):
            raise RunError(f"{path} is missing or unreadable; cannot resume this run") from None
        changed = sorted(k for k in set(saved) | set(self.record["config"]) if saved.get(k) != self.record["config"].get(k))
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {self.record['config'].get(k)!r}" for k in changed)
            raise RunError(f"{self.out} was run with another config ({details}); resume with the same options")


def _read_rows(path: Path) -> list[dict]:
    """Finished rows; a last line cut short by an interruption is dropped (its example runs again)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
