"""FinQA records: the `Example` type, loading and validating the official files, finding a split."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from finprog.paths import finqa_dirs, resource

SPLITS = ("train", "dev", "test")
DEMO = "demo"


class DataValidationError(ValueError):
    """A FinQA file or record is unusable; the message names the file, record and field."""


@dataclass(frozen=True)
class Example:
    """One FinQA question over one report page (text before and after a table)."""

    id: str
    pre_text: list[str]
    post_text: list[str]
    table: list[list[str]]
    question: str
    answer: str = ""
    program: str | None = None
    exe_ans: float | str | None = None
    gold_inds: dict[str, str] = field(default_factory=dict)


def load_finqa(path: str | Path) -> list[Example]:
    """Read a FinQA file: the official JSON list (either release) or JSON Lines, one record per line."""
    path = Path(path)
    examples = [_to_example(path, index, record) for index, record in enumerate(read_records(path))]
    seen: dict[str, int] = {}
    for index, example in enumerate(examples):
        if example.id in seen:
            raise DataValidationError(
                f"{path}: record {index} (id {example.id!r}) repeats the id of record {seen[example.id]}"
            )
        seen[example.id] = index
    return examples


def read_records(path: Path, error: type[ValueError] = DataValidationError) -> list:
    """The raw JSON records of a file holding a JSON list, or JSON Lines (one object per line).

    A missing file or invalid JSON raises `error` with the file, line and column.
    """
    from finprog.runs import read_text

    if not path.is_file():
        raise error(f"{path}: no such file")
    text = read_text(path, error)
    if text.lstrip().startswith("{") and "\n" in text.strip() and not _is_json_lines(text):
        raise error(f"{path}: holds one JSON object; expected a JSON list of records, or one JSON object per line")
    if text.lstrip().startswith("["):
        lines = [(1, text)]
    else:
        lines = [(lineno, line) for lineno, line in enumerate(text.splitlines(), start=1) if line.strip()]
    records = []
    for first_line, chunk in lines:
        try:
            records.append(json.loads(chunk))
        except json.JSONDecodeError as problem:
            raise error(
                f"{path}: invalid JSON at line {first_line + problem.lineno - 1}, column {problem.colno}: {problem.msg}"
                + ("" if len(lines) == 1 and first_line == 1 else " (expected a JSON list or one JSON object per line)")
            ) from None
    return records[0] if text.lstrip().startswith("[") else records


def _is_json_lines(text: str) -> bool:
    try:
        json.loads(text.strip().splitlines()[0])
        return True
    except json.JSONDecodeError:
        return False


def _to_example(path: Path, index: int, record: object) -> Example:
    where = f"{path}: record {index}"
    if not isinstance(record, dict):
        raise DataValidationError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "id" in record:
        where += f" (id {record['id']!r})"
    else:
        raise DataValidationError(f"{where}: missing field 'id'")

    def require(mapping: dict, key: str, kind: type | tuple, label: str):
        if key not in mapping:
            raise DataValidationError(f"{where}: missing field {label!r}")
        if not isinstance(mapping[key], kind):
            raise DataValidationError(
                f"{where}: field {label!r} should be {_kind_name(kind)}, got {type(mapping[key]).__name__}"
            )
        return mapping[key]

    qa = require(record, "qa", dict, "qa")
    table = require(record, "table", list, "table")
    for row_index, row in enumerate(table):
        if not isinstance(row, list) or not all(isinstance(cell, str) for cell in row):
            raise DataValidationError(
                f"{where}: field 'table' row {row_index} should be a list of strings, got {row!r:.80}"
            )
    program = qa.get("program")
    if program is not None and not isinstance(program, str):
        raise DataValidationError(f"{where}: field 'qa.program' should be a string")
    exe_ans = qa.get("exe_ans")
    if exe_ans is not None and not isinstance(exe_ans, (int, float, str)):
        raise DataValidationError(f"{where}: field 'qa.exe_ans' should be a number or 'yes'/'no'")
    gold_inds = qa.get("gold_inds") or {}
    return Example(
        id=str(record["id"]),
        pre_text=_text_lines(record.get("pre_text", []), where, "pre_text"),
        post_text=_text_lines(record.get("post_text", []), where, "post_text"),
        table=table,
        question=require(qa, "question", str, "qa.question"),
        answer=str(qa.get("answer", "")),
        program=program or None,
        exe_ans=float(exe_ans) if isinstance(exe_ans, int) else exe_ans,
        gold_inds=dict(gold_inds) if isinstance(gold_inds, dict) else {},
    )


def _text_lines(value: object, where: str, label: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
        raise DataValidationError(f"{where}: field {label!r} should be a list of strings")
    return value


def _kind_name(kind: type | tuple) -> str:
    names = {dict: "an object", list: "a list", str: "a string"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def resolve_data(spec: str | None, default_split: str = "dev") -> tuple[Path, str]:
    """Turn `--data` into a file and a sentence saying which data that is.

    `spec` is a path, a name such as `dev` or `dev_200` looked up as `NAME.json` in
    `$FINPROG_DATA_DIR` and the download cache, or `demo`. With no spec, the official
    `default_split` is used when it is in the cache, else the demo sample.
    """
    if spec is None:
        found = _find_named(default_split)
        if found:
            return found, f"official FinQA {default_split} split ({found})"
        return resource("data", "demo.json"), (
            f"the built-in demo sample (official {default_split} split not found; "
            "`finprog data download` fetches it)"
        )
    if spec == DEMO:
        return resource("data", "demo.json"), "the built-in demo sample"
    path = Path(spec).expanduser()
    if path.is_file():
        return path, str(path)
    found = _find_named(spec)
    if found:
        return found, str(found)
    searched = ", ".join(str(d) for d in finqa_dirs())
    raise DataValidationError(
        f"data {spec!r} is neither a file nor a split found in {searched}; "
        "give a path, run `finprog data download`, or use `demo`"
    )


def _find_named(name: str) -> Path | None:
    for folder in finqa_dirs():
        candidate = folder / f"{name}.json"
        if candidate.is_file():
            return candidate
    return None


def split_of(path: Path) -> str:
    """The split a FinQA file belongs to, read from its name (`dev_200.json` -> `dev`)."""
    stem = path.stem.lower()
    if stem.startswith("private_test"):
        return "private_test"
    for split in SPLITS:
        if stem.startswith(split):
            return split
    return DEMO if stem == DEMO else "unknown"


OFFICIAL_URL = "https://raw.githubusercontent.com/czyssrs/FinQA/main/dataset/{split}.json"
OFFICIAL_COUNTS = {"train": 6251, "dev": 883, "test": 1147}


def download_finqa(splits: list[str], directory: Path, timeout: float = 20.0) -> Path:
    """Fetch official FinQA splits into `directory`, check record counts, write `manifest.json` (sha256)."""
    import hashlib
    import urllib.error
    import urllib.request

    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for split in splits:
        url = OFFICIAL_URL.format(split=split)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise DataValidationError(
                f"cannot download FinQA {split} from {url} ({getattr(error, 'reason', error)}). "
                f"Offline, put the official {split}.json from the FinQA repository (dataset/) into {directory} "
                "by hand, or point FINPROG_DATA_DIR at a folder that holds it."
            ) from None
        target = directory / f"{split}.json"
        target.write_bytes(payload)
        count = len(load_finqa(target))
        if count != OFFICIAL_COUNTS[split]:
            target.unlink()
            raise DataValidationError(f"{url}: {count} records, expected {OFFICIAL_COUNTS[split]}; file discarded")
        manifest[split] = {"url": url, "records": count, "sha256": hashlib.sha256(payload).hexdigest()}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest_path


def describe(paths: list[Path]) -> list[dict]:
    """What `finprog data info` shows for each FinQA file: split, counts, fields present."""
    rows = []
    for path in paths:
        examples = load_finqa(path)
        records = read_records(path)
        fields = sorted({key for record in records for key in record})
        qa_fields = sorted({key for record in records for key in record["qa"]})
        rows.append(
            {
                "file": str(path),
                "split": split_of(path),
                "records": len(examples),
                "with_program": sum(e.program is not None for e in examples),
                "with_exe_ans": sum(e.exe_ans is not None for e in examples),
                "yes_no_answers": sum(e.exe_ans in ("yes", "no") for e in examples),
                "fields": fields,
                "qa_fields": qa_fields,
            }
        )
    return rows
