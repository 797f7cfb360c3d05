"""snf_tf.ops.toeplitz against convolutions, autodiff Jacobians and NumPy linear algebra."""

import numpy as np
import pytest
import tensorflow as tf

from snf_tf.ops import toeplitz

# k, H, W, C; the last two have enough rows of blocks for the banded LU (3 and 7 blocks)
CASES = [(1, 2, 3, 3), (3, 4, 4, 1), (3, 3, 5, 2), (5, 4, 4, 3), (5, 2, 3, 2), (5, 6, 6, 2),
         (3, 8, 8, 2)]


def _kernel(k, c, rng):
    kernel = 0.2 * rng.standard_normal((k, k, c, c))
    kernel[k // 2, k // 2] += np.eye(c)
    return kernel


def _matrix(kernel, h, w):
    k, _, c, _ = kernel.shape
    positions, taps = toeplitz.toeplitz_indices(h, w, c, k)
    return toeplitz.conv_toeplitz(tf.constant(kernel), positions, taps, h * w * c).numpy()


@pytest.mark.parametrize("k,h,w,c", CASES)
def test_matrix_is_the_conv(k, h, w, c):
    rng = np.random.default_rng(0)
    kernel = _kernel(k, c, rng)
    x = rng.standard_normal((3, h, w, c))
    conv = tf.nn.conv2d(x, kernel, strides=1, padding="SAME").numpy().reshape(3, -1)
    np.testing.assert_allclose(x.reshape(3, -1) @ _matrix(kernel, h, w), conv, atol=1e-12)


@pytest.mark.parametrize("k,h,w,c", CASES)
def test_log_det_equals_slogdet_of_autodiff_jacobian(k, h, w, c):
    rng = np.random.default_rng(1)
    kernel = tf.constant(_kernel(k, c, rng))
    x = tf.constant(rng.standard_normal((1, h, w, c)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = tf.reshape(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), [1, -1])
    jacobian = tape.batch_jacobian(z, x).numpy().reshape(h * w * c, h * w * c)
    positions, taps = toeplitz.toeplitz_indices(h, w, c, k)
    got = toeplitz.conv_log_abs_det(kernel, positions, taps, h * w * c).numpy()
    np.testing.assert_allclose(got, np.linalg.slogdet(jacobian)[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k,h,w,c", CASES)
def test_solve_inverts_the_conv(k, h, w, c):
    rng = np.random.default_rng(2)
    kernel = tf.constant(_kernel(k, c, rng))
    x = rng.standard_normal((4, h, w, c))
    y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
    positions, taps = toeplitz.toeplitz_indices(h, w, c, k)
    got = toeplitz.conv_solve(kernel, positions, taps, h * w * c, y).numpy()
    np.testing.assert_allclose(got, x, atol=1e-9)


def test_log_det_is_differentiable_like_numpy():
    """∂ log|det T(K)| / ∂K = Σ over each tap's entries of T⁻ᵀ (projection of the NumPy inverse)."""
    rng = np.random.default_rng(3)
    k, h, w, c = 3, 3, 4, 2
    kernel = tf.Variable(_kernel(k, c, rng))
    positions, taps = toeplitz.toeplitz_indices(h, w, c, k)
    with tf.GradientTape() as tape:
        value = toeplitz.conv_log_abs_det(kernel, positions, taps, h * w * c)
    grad = tape.gradient(value, kernel).numpy().ravel()
    inv_t = np.linalg.inv(_matrix(kernel.numpy(), h, w)).T
    expected = np.zeros(k * k * c * c)
    np.add.at(expected, taps, inv_t[positions[:, 0], positions[:, 1]])
    np.testing.assert_allclose(grad, expected, rtol=1e-9, atol=1e-12)
