"""The library API: lazy names (no torch on import), and the README's example run on a tiny model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import finprog
from shared_data import REPO

README_EXAMPLE = re.compile(r"## Use as a library\n.*?```python\n(.*?)```", re.S)
SETTINGS = re.compile(r"^MODEL, TRAIN, DEV, runs = .*$", re.M)


def test_import_and_the_light_names_load_no_torch():
    light = ["load_finqa", "resolve_data", "parse", "execute", "evaluate_programs", "score", "ModelShape",
             "count_flops", "report_runs", "format_table", "compare_runs"]
    code = (f"import sys, finprog; [getattr(finprog, name) for name in {light!r}]; "
            "sys.exit(sorted({'torch', 'transformers', 'matplotlib'} & set(sys.modules)) or None)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_name_resolves_and_unknown_names_fail():
    assert set(finprog.__all__) <= set(dir(finprog))
    for name in finprog.__all__:
        assert getattr(finprog, name) is not None
    assert finprog.solve_run.__module__ == "finprog.solve" and finprog.report_runs.__module__ == "finprog.report"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        finprog.nothing


def test_the_readme_example_runs_on_a_tiny_model(tiny_checkpoint_dir, demo_split, tmp_path, monkeypatch, capsys):
    example = README_EXAMPLE.search((REPO / "README.md").read_text()).group(1)
    settings = (f"MODEL, TRAIN, DEV, runs = {tiny_checkpoint_dir!r}, {str(demo_split / 'train.json')!r}, "
                f"{str(demo_split / 'eval.json')!r}, Path({str(tmp_path / 'runs')!r})")
    assert SETTINGS.search(example)
    monkeypatch.chdir(tmp_path)
    exec(SETTINGS.sub(lambda _: settings, example), {})

    out = capsys.readouterr().out
    assert "'execution_accuracy': 1.0, 'program_accuracy': 1.0" in out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["direct", "lora", "program", "report"]
    assert (tmp_path / "runs" / "report" / "report.png").is_file()
    assert json.loads((tmp_path / "runs" / "lora" / "run.json").read_text())["curve"][-1]["step"] == 4
    assert "lora" in out and "training_step" in out
