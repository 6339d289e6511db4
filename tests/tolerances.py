"""Where the numerical tolerances of the tests come from.

Three kinds of comparison, each with its own bound:

- **Exact by construction** (integers, copies, bit-identical deterministic reruns): compared
  with ``==`` / ``np.array_equal``, no tolerance.
- **One float32 computation against a closed form or a NumPy reference**: a rounding bound,
  float32's epsilon times the size of the computation (:func:`reduction_bound`: a sum or dot
  product of ``n`` terms is within ``n * eps * sum|term|`` of the exact value, in any order of
  summation). Tests state ``n`` and the magnitude next to their tolerance.
- **Multi-step training compared with a mathematically equal training** (two replicas against
  one device, a resumed run against an uninterrupted one): gradient descent amplifies round-off
  by a factor that depends on the model, the step count and on which kernels (and so which
  summation orders) the machine's oneDNN picks, so no fixed tolerance holds on every CPU. The
  tolerance is measured at test time instead: the same training run a second, legitimately
  equivalent way (another summation order: the batch permuted, or oneDNN's kernels replaced
  by Eigen's) shows how far round-off alone moves the result on this machine, and the test
  allows :data:`SPREAD_MULTIPLE` times that spread (:func:`drift_tolerance`), never less than
  a float32 floor. A real bug (unaveraged gradients, unsynchronised batch norm, a wrong loss
  scale) changes the first step by far more than round-off does, so it still fails.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23, the float32 unit round-off times 2

# How many times the measured round-off spread of an equivalent computation a comparison
# allows. Two orders of summation of the same training differ by a random-walk-like amount
# whose size varies by a few times between pairs of orders (measured on an AMD EPYC: the
# two-replica difference was 0.03x to 0.7x the oneDNN-vs-Eigen spread over the 12-step
# reference pretraining); 10x covers that variation, while the smallest bug tried moves the
# weights by more than 100x the spread.
SPREAD_MULTIPLE = 10.0

# The environment of a run whose kernels sum in another order than the default: with oneDNN off
# TensorFlow uses Eigen's convolutions, matrix products and reductions.
ONEDNN_OFF = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def reduction_bound(terms: int, magnitude: float) -> float:
    """Worst-case float32 rounding error of a sum (or dot product) of ``terms`` values whose
    absolute values sum to at most ``magnitude``: ``terms * eps * magnitude``, in any order of
    summation. Each of the ``terms - 1`` additions rounds by at most ``u = eps / 2`` times its
    partial sum (each product of a dot product by ``u`` times itself), and no partial sum exceeds
    ``magnitude``; so the error is within ``gamma_n * magnitude``, ``gamma_n = n u / (1 - n u)``
    (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 3.1 and 4.2), which is
    below ``n * eps * magnitude`` while ``n u < 1/2``. ``n`` values of at most ``m`` have
    ``magnitude <= n * m``."""
    return terms * EPS32 * magnitude


def differences(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, float]:
    """The largest absolute element difference of each array of two ``{name: array}`` sets."""
    assert first.keys() == second.keys(), sorted(first.keys() ^ second.keys())[:5]
    return {
        name: float(np.max(np.abs(value.astype(np.float64) - second[name]))) if value.size else 0.0
        for name, value in first.items()
    }


def max_difference(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    """The largest absolute element difference between two ``{name: array}`` sets."""
    return max(differences(first, second).values(), default=0.0)


def matmul_bound(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise worst-case float32 rounding error of a dense layer ``x @ w + b``, whatever
    the kernel and its order of summation: :func:`reduction_bound` of each output's
    ``x.shape[-1] + 1`` terms (the bias is one more), whose absolute values sum to
    ``|x| @ |w| + |b|``."""
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w) + np.abs(b)
    return reduction_bound(x.shape[-1] + 1, magnitude)


def relative_spread(values, reference) -> float:
    """The largest relative difference ``|value / reference - 1|`` of two equal-length series
    (e.g. the per-step losses of two equivalent trainings)."""
    return float(np.max(np.abs(np.asarray(values, np.float64) / np.asarray(reference) - 1)))


def drift_tolerance(spread: float, steps: int, magnitude: float) -> float:
    """Tolerance of a ``steps``-step training against an equivalent one: :data:`SPREAD_MULTIPLE`
    times the measured ``spread`` of two equivalent computations, floored at one float32
    rounding of values of size ``magnitude`` per step (what even a perfectly conditioned
    training differs by when its sums are reordered)."""
    return max(SPREAD_MULTIPLE * spread, steps * EPS32 * magnitude)
