"""The machine a benchmark ran on: CPU model, core count and the matrix instructions that set the
bfloat16 peak (Intel AMX, AVX512-BF16). Every figure in BENCHMARKS.md names its machine kind, and
speeds are only compared within one kind."""

from __future__ import annotations

import os
import platform

CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str) -> set[str]:
    """The instruction-set flags of the first processor listed in ``cpuinfo`` (the text of
    ``/proc/cpuinfo``)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


def cpu_model(cpuinfo: str) -> str:
    """The ``model name`` of the first processor in ``cpuinfo`` (the machine's architecture when
    there is none)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name":
            return value.strip()
    return platform.machine()


def machine_kind(flags: set[str]) -> str:
    """``amx`` (Intel AMX tiles with bfloat16), ``avx512_bf16`` (AVX512 bfloat16 dot products,
    no AMX) or ``no_bf16_units``: the kinds of machine whose bfloat16 peaks differ."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "no_bf16_units"


def describe_machine(cpuinfo_path: str = CPUINFO) -> dict:
    """``{"cpu", "kind", "amx", "avx512_bf16", "cores"}`` of this machine."""
    try:
        with open(cpuinfo_path, encoding="utf-8") as handle:
            cpuinfo = handle.read()
    except OSError:
        cpuinfo = ""
    flags = cpu_flags(cpuinfo)
    return {
        "cpu": cpu_model(cpuinfo),
        "kind": machine_kind(flags),
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "cores": len(os.sched_getaffinity(0)),
    }


def machine_line(machine: dict) -> str:
    """One line naming the machine, e.g. ``AMD EPYC, 2 cores, AVX512-BF16 (no AMX)``."""
    units = {
        "amx": "AMX",
        "avx512_bf16": "AVX512-BF16 (no AMX)",
        "no_bf16_units": "no AMX, no AVX512-BF16",
    }[machine["kind"]]
    return f"{machine['cpu']}, {machine['cores']} cores, {units}"
