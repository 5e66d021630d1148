"""Where finprog's files live: packaged resources, the cache, and the FinQA data directory."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource(folder: str, name: str) -> Path:
    """A file shipped with finprog: `grammar/finqa.lark` or `data/demo.json`.

    In a checkout (or an editable install) the files sit in the top-level folders
    `grammar/` and `data/`; in an installed wheel they are packaged as
    `finprog/grammar/` and `finprog/demo/`.
    """
    installed = {"grammar": "grammar", "data": "demo"}[folder]
    for candidate in (_PACKAGE / installed / name, _PACKAGE.parent / folder / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"finprog resource {folder}/{name} is missing from the installation")


def cache_dir() -> Path:
    """finprog's cache: `$FINPROG_CACHE`, else `$XDG_CACHE_HOME/finprog`, else `~/.cache/finprog`."""
    if os.environ.get("FINPROG_CACHE"):
        return Path(os.environ["FINPROG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "finprog"


def finqa_dirs() -> list[Path]:
    """Folders searched for FinQA files named by split: `$FINPROG_DATA_DIR`, then the download cache."""
    dirs = [Path(os.environ["FINPROG_DATA_DIR"]).expanduser()] if os.environ.get("FINPROG_DATA_DIR") else []
    return dirs + [cache_dir() / "finqa"]


def shown(path: Path) -> str:
    """A path as a command written down for others shows it: from the current folder when inside it, else its
    name (never a machine's own absolute path)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return Path(path).name
