"""The tolerance helpers of tests/tolerances.py against their closed forms: the float32 rounding
bound holds for the worst sums and dot products NumPy computes, and a measured spread is scaled
by SPREAD_MULTIPLE above its float32 floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tolerances import (
    EPS32,
    SPREAD_MULTIPLE,
    differences,
    drift_tolerance,
    matmul_bound,
    max_difference,
    reduction_bound,
    relative_spread,
)


def test_eps32_is_float32s_machine_epsilon():
    assert EPS32 == 2.0**-23
    assert np.float32(1) + np.float32(EPS32) > 1
    assert np.float32(1) + np.float32(EPS32 / 2) == 1


@pytest.mark.parametrize("terms", [2, 100, 10_000, 1_000_000])
def test_reduction_bound_holds_for_float32_sums_and_dot_products(terms):
    rng = np.random.default_rng(terms)
    for trial in range(5):
        # Positive terms make every partial sum as large as it gets; mixed signs cancel.
        low = 0.0 if trial % 2 == 0 else -1.0
        x = rng.uniform(low, 1.0, terms).astype(np.float32)
        y = rng.uniform(low, 1.0, terms).astype(np.float32)
        exact_sum = math.fsum(x.astype(np.float64))
        products = x.astype(np.float64) * y
        exact_dot = math.fsum(products)
        computed = {
            "pairwise sum": (np.sum(x), exact_sum, np.sum(np.abs(x), dtype=np.float64)),
            "sequential sum": (np.cumsum(x)[-1], exact_sum, np.sum(np.abs(x), dtype=np.float64)),
            "dot product": (np.dot(x, y), exact_dot, np.sum(np.abs(products))),
        }
        for name, (value, exact, magnitude) in computed.items():
            error = abs(float(value) - exact)
            assert error <= reduction_bound(terms, magnitude), (name, trial, error)


def test_reduction_bound_is_linear_in_terms_and_magnitude():
    assert reduction_bound(1, 1.0) == EPS32
    assert reduction_bound(2048, 3.0) == 2048 * 3.0 * 2.0**-23


def test_a_bound_on_the_largest_term_alone_does_not_hold():
    # Why the magnitude is the sum of the absolute values: 2**24 + 16 ones summed in order in
    # float32 stop growing at 2**24, an error of 16, far above n * eps * max|x| (about 2).
    terms = 2**24 + 16
    total = float(np.cumsum(np.ones(terms, np.float32))[-1])
    assert total == 2.0**24
    assert terms - total > 4 * reduction_bound(terms, 1.0)
    assert terms - total <= reduction_bound(terms, float(terms))


def test_matmul_bound_holds_for_float32_dense_layers():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (64, 1024)).astype(np.float32)
    w = rng.normal(0, 0.1, (1024, 32)).astype(np.float32)
    b = rng.normal(0, 1, 32).astype(np.float32)
    exact = x.astype(np.float64) @ w + b
    bound = matmul_bound(x, w, b)
    assert bound.shape == exact.shape
    for computed in (x @ w + b, np.einsum("ij,jk->ik", x, w) + b):
        assert np.all(np.abs(computed - exact) <= bound)
    # Element-wise: inputs twice as large, bounds twice as large (exact: powers of two).
    np.testing.assert_array_equal(matmul_bound(2 * x, w, 0 * b), 2 * matmul_bound(x, w, 0 * b))


def test_drift_tolerance_is_the_spread_times_its_multiple_above_a_float32_floor():
    assert SPREAD_MULTIPLE == 10.0
    assert drift_tolerance(1e-4, 12, 2.0) == pytest.approx(1e-3)
    # No measured spread (two bit-identical orders): one rounding of the values per step.
    assert drift_tolerance(0.0, 12, 2.0) == 12 * 2.0 * EPS32
    floor = drift_tolerance(0.0, 3, 1.0)
    assert drift_tolerance(floor / SPREAD_MULTIPLE / 2, 3, 1.0) == floor
    assert drift_tolerance(floor, 3, 1.0) == SPREAD_MULTIPLE * floor


def test_differences_and_relative_spread():
    first = {"a": np.float32([1.0, 2.0, 3.0]), "b": np.zeros((0,), np.float32)}
    second = {"a": np.float32([1.0, 2.5, 2.0]), "b": np.zeros((0,), np.float32)}
    assert differences(first, second) == {"a": 1.0, "b": 0.0}
    assert max_difference(first, second) == 1.0
    with pytest.raises(AssertionError):
        differences(first, {"a": first["a"]})
    assert relative_spread([2.0, 3.3], [2.0, 3.0]) == pytest.approx(0.1)
    assert relative_spread([1.0, 1.0], [1.0, 4.0]) == pytest.approx(0.75)
