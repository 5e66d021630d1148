"""evals/gpu_check.py in its dry mode: every check runs (or is skipped, with the reason) and lands in the report;
evals/gpu_wheels.py: what travels to the GPU machine stays inside one call's limit."""

import importlib.abc
import importlib.util
import json
import sys
import tomllib

import pytest
import torch
from packaging.requirements import Requirement

from shared_data import REPO, finqa_file


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "evals" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("gpu_check")


class Absent(importlib.abc.MetaPathFinder):
    """Makes packages unimportable, as on a machine that lacks them."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named '{name}' (absent on the GPU machine)")


def missing_on_the_gpu_machine() -> set[str]:
    """finprog's dependencies, as import names, that the GPU machine neither has nor gets carried."""
    gpu_wheels = load_script("gpu_wheels")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {Requirement(line).name for line in declared} - set(gpu_wheels.THERE) - set(gpu_wheels.CARRIED)
    return {name.replace("-", "_") for name in names}


def test_dry_run_passes_every_check_with_only_the_packages_the_gpu_machine_will_have(gpu_check, tmp_path,
                                                                                      monkeypatch):
    dev, train = finqa_file("dev_200.json"), finqa_file("train_100.json")
    absent = missing_on_the_gpu_machine()
    for name in [name for name in sys.modules if name.partition(".")[0] in absent]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Absent(absent), *sys.meta_path])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread synchronisation would cost more than the work
    try:
        status = gpu_check.main(["--sizes", "dry", "--out", str(tmp_path), "--dev", str(dev), "--train", str(train)])
    finally:
        torch.set_num_threads(threads)

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {check["check"]: check for check in report["checks"]}
    assert list(checks) == list(gpu_check.CHECKS)
    failed = {name: check.get("error") or check["numbers"] for name, check in checks.items() if check["status"] == "fail"}
    assert not failed and status == 0
    skipped = {name for name, check in checks.items() if check["status"] == "skipped"}
    assert skipped == (set() if torch.cuda.device_count() >= 2 else {"data parallel"})
    assert checks["data parallel"].get("reason", "").startswith("needs 2 GPUs")
    batching = checks["batched vs batch-1"]["numbers"]
    assert batching["fp32_compared"] == batching["bf16_compared"] == 2 and batching["fp32_first_lines_differ"] == 0
    assert checks["train lora"]["numbers"]["loss_second_half"] < checks["train lora"]["numbers"]["loss_first_half"]
    assert report["environment"]["plan"]["name"] == "dry" and report["environment"]["versions"]["torch"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    for name, check in checks.items():
        assert f"| {name} | {check['status']} |" in markdown


def test_a_failing_check_is_recorded_and_the_next_one_runs(gpu_check):
    def broken(ctx):
        raise ValueError("no such file")

    def not_here(ctx):
        raise gpu_check.Skipped("needs 2 GPUs")

    results = [gpu_check.run_check(name, check, ctx=None) for name, check in
               (("broken", broken), ("not here", not_here), ("fine", lambda ctx: {"passed": True, "x": 1}))]
    assert [r["status"] for r in results] == ["fail", "skipped", "pass"]
    assert results[0]["error"] == "ValueError: no such file" and "Traceback" in results[0]["traceback"]
    assert results[1]["reason"] == "needs 2 GPUs" and results[2]["numbers"] == {"x": 1}


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="measures a git checkout")
def test_the_checkout_leaves_room_in_the_call_for_the_wheels():
    gpu_wheels = load_script("gpu_wheels")
    wheels_and_data = 28 * 2**20  # gpu_carry/ as evals/gpu_wheels.py measured it: 27.6 MiB
    assert gpu_wheels.checkout_bytes() + wheels_and_data <= gpu_wheels.LIMIT
