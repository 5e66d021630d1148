"""Where a result came from: date, machine and package versions, for run records and benchmark output."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata

PACKAGES = ("finprog", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "lark", "sympy")


def machine() -> str:
    """CPU model and core count (and the GPU when torch is already loaded and sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    described = f"{cpu}, {os.cpu_count()} cores, {platform.system()}"
    torch = __import__("sys").modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        described += f", {torch.cuda.get_device_name(0)}"
    return described


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape a result (absent ones are left out)."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def header() -> str:
    """One comment line for benchmark output: date, machine, versions."""
    packages = ", ".join(f"{k} {v}" for k, v in versions().items())
    return f"# {now()} | {machine()} | {packages}"
