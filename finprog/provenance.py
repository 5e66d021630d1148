"""Where a result came from: date, machine and package versions, for run records and benchmark output."""

from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from importlib import metadata

PACKAGES = ("finprog", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "lark", "sympy")


CPUINFO = "/proc/cpuinfo"
BF16_FLAGS = (("AVX512-BF16", "avx512_bf16"), ("AMX-BF16", "amx_bf16"))  # (shown as, cpuinfo flag)


def machine() -> str:
    """CPU model, core count and vector capability (and the GPU when torch is already loaded and sees one)."""
    cpu, flags = _cpuinfo()
    described = f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    torch = sys.modules.get("torch")
    if torch is not None:
        described += f", torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    if flags:  # what `--dtype auto` and CPU speed hinge on: the same model name has shipped with and without these
        described += ", " + ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in BF16_FLAGS)
    if torch is not None and torch.cuda.is_available():
        described += f", {torch.cuda.get_device_name(0)}"
    return described


def same_machine(recorded: str, here: str) -> bool:
    """Whether a run record's machine line names this machine, with or without torch's CPU capability (which
    follows from the CPU, and is named only where torch was loaded when the line was written)."""
    return _without_torch(recorded) == _without_torch(here)


def _without_torch(described: str) -> str:
    return re.sub(r", torch CPU capability [^,]*", "", described)


def _cpuinfo() -> tuple[str, set[str]]:
    """The first CPU's model name and instruction-set flags from /proc/cpuinfo (empty where there is none)."""
    model, flags = "", set()
    try:
        with open(CPUINFO) as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, flags


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
