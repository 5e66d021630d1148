"""Where the tests find the genuine FinQA sample files: `$FINPROG_DATA_DIR`, else ../shared/finqa."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def finqa_file(name: str) -> Path:
    """A FinQA sample file such as `dev_200.json`; the test is skipped when the samples are absent."""
    folder = Path(os.environ.get("FINPROG_DATA_DIR", REPO.parent / "shared" / "finqa"))
    path = folder / name
    if not path.is_file():
        pytest.skip(f"FinQA sample {path} not found (set FINPROG_DATA_DIR)")
    return path
