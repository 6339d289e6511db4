"""The benchmark helpers that name the machine and time a run to an accuracy: the CPU kind read
from /proc/cpuinfo text, the variants of bench/time_to_accuracy.py and where a kNN curve first
reaches the target."""

from __future__ import annotations

import machine
import time_to_accuracy

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_the_machine_kind_follows_the_bfloat16_units():
    assert machine.cpu_model(EPYC) == "AMD EPYC 9R14"
    assert machine.machine_kind(machine.cpu_flags(EPYC)) == "avx512_bf16"
    assert machine.machine_kind(machine.cpu_flags(XEON)) == "amx"
    assert machine.machine_kind(machine.cpu_flags("flags : fpu sse avx2")) == "no_bf16_units"
    assert machine.cpu_flags("model name : x") == set()


def test_describe_machine_reads_a_cpuinfo_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(XEON)
    described = machine.describe_machine(str(path))
    assert described["cpu"] == "Intel(R) Xeon(R) Platinum 8488C"
    assert described["amx"] and described["avx512_bf16"]
    assert described["cores"] >= 1
    assert "AMX" in machine.machine_line(described)


def test_variants_name_a_revision_and_extra_flags():
    assert time_to_accuracy.parse_variant("today") == ("today", None, ())
    assert time_to_accuracy.parse_variant("before=9684ed2") == ("before", "9684ed2", ())
    assert time_to_accuracy.parse_variant("sgd=abc: --optimizer=momentum --seed=1") == (
        "sgd",
        "abc",
        ("--optimizer=momentum", "--seed=1"),
    )


def test_the_first_crossing_is_the_earliest_step_at_or_above_the_target():
    points = [(30.0, 468, 0.779), (10.0, 0, 0.41), (40.0, 702, 0.80), (50.0, 936, 0.81)]
    assert time_to_accuracy.first_crossing(points, 0.80) == (40.0, 702, 0.80)
    assert time_to_accuracy.first_crossing(points, 0.9) is None
