"""finprog as a user installs it: a wheel built from this checkout, in a fresh environment, run from elsewhere."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ("finprog", "grammar", "data")  # the folders pyproject.toml packages


@pytest.mark.slow
def test_solve_with_no_model_answers_with_the_shipped_adapter_from_an_installed_wheel(tmp_path):
    source = tmp_path / "source"  # built from a copy: a build leaves build/ behind, and the next build ships it
    for folder in PACKAGED:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / file, source / file)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]  # offline if it can
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
                    "--wheel-dir", tmp_path / "wheel", source], check=True, cwd=tmp_path)
    # the environment borrows torch and the other dependencies; finprog itself comes only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", tmp_path / "venv"], check=True)
    bin_dir = tmp_path / "venv" / "bin"
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-deps",
                    *(tmp_path / "wheel").glob("finprog-*.whl")], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run([bin_dir / "python", "-c", "import finprog; print(finprog.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert Path(found).is_relative_to(tmp_path / "venv")
    solved = subprocess.run([bin_dir / "finprog", "solve", "--limit", "2", "--out", "run"], cwd=elsewhere,
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert solved.returncode == 0, solved.stderr
    record = json.loads((elsewhere / "run" / "run.json").read_text())
    assert record["status"] == "finished" and record["eval_set"]["n"] == 2
    assert record["model"] == {**record["model"], "name": "qwen2.5-coder-0.5b_lora_2ep", "source": "adapter",
                                               "base": "qwen2.5-coder-0.5b"}
