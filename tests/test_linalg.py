"""snf_tf.ops.linalg against NumPy: log|det| of banded matrices, value and gradient."""

import numpy as np
import pytest
import tensorflow as tf

from snf_tf.ops.linalg import banded_log_abs_det, log_abs_det_qr


def _banded(n, bandwidth, rng, diagonal=1.0):
    a = rng.standard_normal((n, n))
    rows, cols = np.indices((n, n))
    a[np.abs(rows - cols) > bandwidth] = 0.0
    a[rows == cols] *= diagonal  # diagonal=0: no pivot on the diagonal, row exchanges are needed
    return a


CASES = [(12, 3, 1.0), (13, 3, 0.0), (40, 5, 1.0), (41, 7, 0.0), (30, 1, 0.0), (9, 4, 1.0)]


@pytest.mark.parametrize("n,bandwidth,diagonal", CASES)
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_banded_log_det_and_gradient_equal_numpy(n, bandwidth, diagonal, traced):
    a = _banded(n, bandwidth, np.random.default_rng(n + bandwidth), diagonal)

    def value_and_grad(matrix):
        with tf.GradientTape() as tape:
            tape.watch(matrix)
            value = banded_log_abs_det(matrix, bandwidth)
        return value, tape.gradient(value, matrix)

    run = tf.function(value_and_grad) if traced else value_and_grad
    value, grad = run(tf.constant(a))
    np.testing.assert_allclose(value.numpy(), np.linalg.slogdet(a)[1], rtol=1e-12, atol=1e-12)
    # ∂ log|det A| / ∂A = A⁻ᵀ on the band; entries off the band are taken as zero, not read.
    on_band = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= bandwidth
    np.testing.assert_allclose(grad.numpy()[on_band], np.linalg.inv(a).T[on_band], rtol=1e-9,
                               atol=1e-11)


def test_banded_log_det_weighted_gradient_through_later_blocks():
    """A loss that scales the log-det: the upstream gradient reaches every block step."""
    a = _banded(25, 4, np.random.default_rng(7), 0.3)
    matrix = tf.constant(a)
    with tf.GradientTape() as tape:
        tape.watch(matrix)
        value = 2.5 * banded_log_abs_det(matrix, 4)
    on_band = np.abs(np.subtract.outer(np.arange(25), np.arange(25))) <= 4
    np.testing.assert_allclose(tape.gradient(value, matrix).numpy()[on_band],
                               2.5 * np.linalg.inv(a).T[on_band], rtol=1e-9, atol=1e-11)


def test_banded_log_det_of_singular_matrix_is_minus_inf_like_slogdet():
    a = _banded(20, 3, np.random.default_rng(3))
    a[:, 11] = 0.0
    assert np.isneginf(banded_log_abs_det(tf.constant(a), 3).numpy())
    assert np.isneginf(tf.linalg.slogdet(tf.constant(a))[1].numpy())


def test_banded_log_det_of_non_finite_matrix_is_nan():
    a = _banded(20, 3, np.random.default_rng(4))
    a[5, 6] = np.nan
    assert np.isnan(banded_log_abs_det(tf.constant(a), 3).numpy())


def test_banded_log_det_in_float32_matches_float64():
    a = _banded(60, 6, np.random.default_rng(5))
    got = banded_log_abs_det(tf.constant(a, tf.float32), 6).numpy()
    np.testing.assert_allclose(got, np.linalg.slogdet(a)[1], rtol=1e-5)


def test_qr_log_det_equals_slogdet():
    a = np.random.default_rng(6).standard_normal((7, 7))
    np.testing.assert_allclose(log_abs_det_qr(tf.constant(a)).numpy(), np.linalg.slogdet(a)[1],
                               rtol=1e-12)
