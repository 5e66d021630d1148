"""FinQA records: the `Example` type, loading and validating the official files, finding a split."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from finprog.errors import FinprogError
from finprog.paths import cache_dir, finqa_dirs, resource

SPLITS = ("train", "dev", "test")
DEMO = "demo"


class DataValidationError(FinprogError, ValueError):
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


PAGE_FIELDS = ("pre_text", "post_text", "table")


def has_page(example: Example) -> bool:
    """Whether the record has a report page (text or a table) for a prompt to show."""
    return bool(example.pre_text or example.post_text or example.table)


def first_without_page(examples) -> str | None:
    """The id of the first record without a page, or None when every record has one."""
    return next((e.id for e in examples if not has_page(e)), None)


def load_finqa(path: str | Path) -> list[Example]:
    """Read FinQA records: the official JSON list (either release), JSON Lines, or a `datasets` folder."""
    path = Path(path)
    examples = [_to_example(path, index, record) for index, record in enumerate(_records(path))]
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


def _records(path: Path) -> list:
    return dataset_records(path) if is_dataset_folder(path) else read_records(path)


def is_dataset_folder(path: Path) -> bool:
    """Whether `path` is a folder the `datasets` package wrote (`save_to_disk`) or one of parquet files."""
    markers = ("state.json", "dataset_dict.json")
    return path.is_dir() and (any((path / m).is_file() for m in markers) or any(path.glob("*.parquet")))


def dataset_records(folder: Path) -> list[dict]:
    """The rows of one split saved by `datasets` (`save_to_disk`, or parquet files), as official records.

    Rows may hold the official nested `qa` or flat `question`, `answer`, `program`,
    `exe_ans` and `gold_inds` columns. A columnar file holds one type per column, so an
    `exe_ans` stored as text is read back as a number unless it is "yes" or "no".
    """
    rows = _dataset_rows(folder)
    if not rows:
        raise DataValidationError(f"{folder}: holds no rows; give a dataset folder of FinQA records")
    return [_official_record(row) for row in rows]


def _dataset_rows(folder: Path) -> list[dict]:
    """The rows of a `datasets` folder as `datasets` or pyarrow read them; any failure to read them (or a folder of
    several splits) is a DataValidationError naming the folder."""
    import datasets
    import pyarrow.parquet

    try:
        if (folder / "dataset_dict.json").is_file():
            splits = list(datasets.load_from_disk(str(folder)))
        elif (folder / "state.json").is_file():
            return list(datasets.load_from_disk(str(folder)))
        else:
            return [row for file in sorted(folder.glob("*.parquet"))
                    for row in pyarrow.parquet.read_table(file).to_pylist()]
    except Exception as error:  # datasets and pyarrow fail in many ways (ArrowInvalid, FileNotFoundError, ...)
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataValidationError(f"{folder}: cannot be read as a dataset folder ({reason}); write it again "
                                  "(save_to_disk or to_parquet), or give a FinQA JSON file") from None
    raise DataValidationError(f"{folder} holds several splits; give one of the folders "
                              + ", ".join(str(folder / name) for name in splits))


QA_COLUMNS = ("question", "answer", "program", "exe_ans", "gold_inds")


def _official_record(row: dict) -> dict:
    qa = dict(row["qa"]) if isinstance(row.get("qa"), dict) else {k: row[k] for k in QA_COLUMNS if k in row}
    if isinstance(qa.get("exe_ans"), str) and qa["exe_ans"] not in ("yes", "no"):
        try:
            qa["exe_ans"] = float(qa["exe_ans"])
        except ValueError:
            pass  # left as text: scoring then reports the mismatch, as for a JSON file
    if isinstance(qa.get("gold_inds"), dict):  # a struct column has every record's keys, None where absent
        qa["gold_inds"] = {k: v for k, v in qa["gold_inds"].items() if v is not None}
    return {**{k: v for k, v in row.items() if k not in QA_COLUMNS}, "qa": qa}


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
    pageless = not any(key in record for key in PAGE_FIELDS)  # a question and program only (train_programs_6251)
    table = [] if pageless else require(record, "table", list, "table")
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


def resolve_data(spec: str | os.PathLike | None, default_split: str = "dev") -> tuple[Path, str]:
    """Turn `--data` into a file and a sentence saying which data that is.

    `spec` is a path (a file, or a `datasets` folder), a name such as `dev` or `dev_200`
    looked up as `NAME.json` in `$FINPROG_DATA_DIR` and the download cache, `demo`, or
    `hf:NAME[:SPLIT]`, a dataset on the Hugging Face hub. With no spec, the official
    `default_split` is used when it is in the cache, else the demo sample.
    """
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        raise DataValidationError(f"data must be a path or a name such as dev_200, got {spec!r}")
    spec = None if spec is None else os.fspath(spec)
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
    if spec.startswith(HUB):
        return _from_hub(spec[len(HUB):], default_split)
    path = Path(spec).expanduser()
    if path.is_file() or is_dataset_folder(path):
        return path, str(path)
    found = _find_named(spec)
    if found:
        return found, str(found)
    searched = ", ".join(str(d) for d in finqa_dirs())
    raise DataValidationError(
        f"data {spec!r} is neither a file, a dataset folder nor a split found in {searched}; "
        "give a path, run `finprog data download`, use `hf:NAME` or `demo`"
    )


HUB = "hf:"
HUB_SPLITS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}  # our name -> the hub's
_HUB_DATASET = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_HUB_SPLIT = re.compile(r"[A-Za-z0-9][\w.-]*")


def _from_hub(spec: str, default_split: str) -> tuple[Path, str]:
    """A hub dataset's split, saved once into the cache (`save_to_disk`) and read from there afterwards."""
    name, _, split = spec.partition(":")
    if not _HUB_DATASET.fullmatch(name) or split and not _HUB_SPLIT.fullmatch(split):
        raise DataValidationError(f"{HUB}{spec} does not name a hub dataset; give hf:NAME or hf:OWNER/NAME, and "
                                  ":SPLIT for a split (e.g. hf:owner/finqa:test)")
    folder = cache_dir() / "hub" / name.replace("/", "--") / (split or default_split)
    if not is_dataset_folder(folder):
        import datasets

        try:
            splits = datasets.load_dataset(name)
        except Exception as error:  # datasets fails in many ways (offline, unknown name, a loading script, ...)
            reason = " ".join(str(error).split()) or type(error).__name__
            raise DataValidationError(f"cannot load dataset {name!r} from the hub: {reason}; check the name, or "
                                      "without hub access give a local FinQA file or dataset folder") from None
        found = [s for s in ((split,) if split else HUB_SPLITS.get(default_split, (default_split,))) if s in splits]
        if not found:
            raise DataValidationError(
                f"hub dataset {name!r} has the splits {', '.join(splits)}; name one: hf:{name}:SPLIT"
            )
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted earlier save
        splits[found[0]].save_to_disk(str(partial))
        partial.replace(folder)
    return folder, f"hub dataset {name}, {split or default_split} split (saved in {folder})"


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


OFFICIAL_COMMIT = "0f16e2867befa6840783e58be38c9efb9229d742"  # czyssrs/FinQA, 2022-06-05
OFFICIAL_URL = f"https://raw.githubusercontent.com/czyssrs/FinQA/{OFFICIAL_COMMIT}/dataset/{{split}}.json"
OFFICIAL_BLOBS = {  # git blob SHA-1 of each file at that commit (train 6,251 / dev 883 / test 1,147 records)
    "train": "a6c2c5a60f9abe3fba5a793cc4d9e1dee2e09209",
    "dev": "970f239f591c782b17df420c0d343b780737f3da",
    "test": "59958c7c3bb3b21f4dff6bc912a0fe0ae710aee0",
}


def download_finqa(splits: list[str], directory: Path, timeout: float = 20.0) -> Path:
    """Fetch official FinQA splits at the pinned commit into `directory`; write `manifest.json`.

    Each file is downloaded under a temporary name, checked against its git blob SHA-1
    and only then renamed into place, so a failed or tampered download leaves nothing
    behind (and an earlier good file stays).
    """
    import urllib.error
    import urllib.request

    if directory.exists() and not directory.is_dir():
        raise DataValidationError(f"--dir {directory} is a file; give a folder to download FinQA into")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataValidationError(f"--dir {directory}: cannot create the folder ({error.strerror}); give a folder "
                                  "that can be written") from None
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for split in splits:
        url = OFFICIAL_URL.format(split=split)
        partial = directory / f".{split}.json.partial"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
                shutil.copyfileobj(response, out)
            found = git_blob_sha1(partial)
            if found != OFFICIAL_BLOBS[split]:
                raise DataValidationError(
                    f"{url}: git blob SHA-1 {found}, expected {OFFICIAL_BLOBS[split]}: not FinQA's {split}.json "
                    f"at commit {OFFICIAL_COMMIT[:12]}; nothing was kept"
                )
            partial.replace(directory / f"{split}.json")
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise DataValidationError(
                f"cannot download FinQA {split} from {url} ({getattr(error, 'reason', error)}). "
                f"Offline, put the official {split}.json from the FinQA repository (dataset/) into {directory} "
                "by hand, or point FINPROG_DATA_DIR at a folder that holds it."
            ) from None
        finally:
            partial.unlink(missing_ok=True)
        manifest[split] = {"url": url, "git_blob_sha1": found}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest_path


def git_blob_sha1(path: Path) -> str:
    """The SHA-1 git gives a file's contents: sha1 of `b"blob <size>\\0"` and the bytes."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as contents:
        for chunk in iter(lambda: contents.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(paths: list[Path]) -> list[dict]:
    """What `finprog data info` shows for each FinQA file: split, counts, fields present."""
    rows = []
    for path in paths:
        examples = load_finqa(path)
        records = _records(path)
        fields = sorted({key for record in records for key in record})
        qa_fields = sorted({key for record in records for key in record["qa"]})
        rows.append(
            {
                "file": str(path),
                "split": split_of(path),
                "records": len(examples),
                "with_program": sum(e.program is not None for e in examples),
                "with_exe_ans": sum(e.exe_ans is not None for e in examples),
                "with_page": sum(map(has_page, examples)),
                "yes_no_answers": sum(e.exe_ans in ("yes", "no") for e in examples),
                "fields": fields,
                "qa_fields": qa_fields,
            }
        )
    return rows
