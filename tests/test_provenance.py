"""Provenance: the machine line names the CPU's vector capability, without importing torch."""

from __future__ import annotations

import subprocess
import sys

from finprog import provenance

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16
processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16
"""


def test_machine_names_the_bf16_instructions_the_cpu_has(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    monkeypatch.setattr(provenance, "CPUINFO", str(info))
    described = provenance.machine()
    assert described.startswith("AMD EPYC 9R14 96-Core Processor, ")
    assert "AVX512-BF16 yes, AMX-BF16 no" in described

    info.write_text(CPUINFO.replace(" avx512f avx512_bf16", ""))
    assert "AVX512-BF16 no, AMX-BF16 no" in provenance.machine()


def test_machine_leaves_out_flags_it_cannot_read(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "CPUINFO", str(tmp_path / "absent"))
    assert "BF16" not in provenance.machine()


def test_torch_capability_is_named_only_when_torch_is_loaded():
    code = ("import sys; from finprog.provenance import machine; m = machine(); "
            "assert 'torch' not in sys.modules and 'capability' not in m, m; "
            "import torch; print(machine())")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import torch

    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in shown


def test_a_record_written_with_torch_loaded_names_the_same_machine_as_a_line_written_without():
    without = "AMD EPYC 9R14 96-Core Processor, 2 cores, Linux, AVX512-BF16 yes, AMX-BF16 no"
    loaded = "AMD EPYC 9R14 96-Core Processor, 2 cores, Linux, torch CPU capability AVX512, AVX512-BF16 yes, AMX-BF16 no"
    assert provenance.same_machine(loaded, without) and provenance.same_machine(without, loaded)
    assert not provenance.same_machine(loaded, without.replace("AVX512-BF16 yes", "AVX512-BF16 no"))
    assert not provenance.same_machine(loaded, without.replace("2 cores", "4 cores"))
