"""The op breakdown of bench/throughput.py read from a real TF profiler trace: a function whose
time is dominated by one large matmul must be attributed to MatMul, and the shares of the
listed op types never add up to more than the whole."""

from __future__ import annotations

import pytest
import tensorflow as tf
import throughput


def test_op_breakdown_attributes_a_matmul_heavy_function_to_matmul(tmp_path):
    a = tf.random.stateless_normal([768, 768], seed=[1, 2])

    @tf.function
    def work(x: tf.Tensor) -> tf.Tensor:
        for _ in range(4):
            x = tf.matmul(x, a) * 1e-2 + 1.0  # 2 cheap element-wise ops per matmul
        return x

    work(a).numpy()  # trace outside the profile
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(3):
        work(a).numpy()
    tf.profiler.experimental.stop()
    breakdown = dict(throughput.op_breakdown(str(tmp_path)))
    assert breakdown, "no TensorFlow op events found in the trace"
    top = max(breakdown, key=breakdown.get)
    assert top in ("MatMul", "_MklMatMul"), breakdown  # oneDNN renames the kernel
    assert breakdown[top] > 0.5, breakdown
    assert len(breakdown) < 15  # MatMul, Mul, AddV2 and little else: every type is listed
    # Bound: fewer than 15 fractions, each rounded to 4 decimals: 15 * 5e-5 = 7.5e-4.
    assert sum(breakdown.values()) == pytest.approx(1.0, abs=1e-3)
    assert not set(breakdown) & throughput.CONTAINER_OPS
