"""The dense matrix of a 'same'-padded, stride-1 conv, and its exact log-det and solve.

For an NHWC input flattened row-major (index ``(i·W + j)·C + c``), ``vec(conv(x, K)) = vec(x) @ T``
with ``T[in, out] = K[a, b, c_in, c_out]`` whenever input pixel ``(i + a − p, j + b − p)`` feeds
output pixel ``(i, j)``. ``T`` is built by scattering kernel values into precomputed indices, which
is differentiable in ``K`` (the exact-gradient baseline backpropagates through ``slogdet(T)``).
"""

import numpy as np
import tensorflow as tf

from snf_tf.ops.linalg import banded_log_abs_det

__all__ = ["toeplitz_indices", "conv_toeplitz", "conv_log_abs_det", "conv_solve"]


def toeplitz_indices(height, width, channels, kernel_size):
    """Static ``(positions [nnz, 2], taps [nnz])`` for ``T[positions] = K.flatten()[taps]``."""
    k, p, c = kernel_size, kernel_size // 2, channels
    i, j, a, b, ci, co = np.meshgrid(
        np.arange(height), np.arange(width), np.arange(k), np.arange(k),
        np.arange(c), np.arange(c), indexing="ij",
    )
    ii, jj = i + a - p, j + b - p
    valid = (ii >= 0) & (ii < height) & (jj >= 0) & (jj < width)
    rows = (ii * width + jj) * c + ci
    cols = (i * width + j) * c + co
    taps = ((a * k + b) * c + ci) * c + co
    positions = np.stack([rows[valid], cols[valid]], axis=1).astype(np.int64)
    return positions, taps[valid].astype(np.int64)


def conv_toeplitz(kernel, positions, taps, size):
    """Dense ``[size, size]`` matrix ``T`` with ``vec(conv(x, kernel)) = vec(x) @ T``."""
    values = tf.gather(tf.reshape(kernel, [-1]), taps)
    return tf.scatter_nd(positions, values, [size, size])


def conv_log_abs_det(kernel, positions, taps, size):
    """``log|det T(kernel)|`` (differentiable in ``kernel``; no XLA kernel).

    ``T`` is banded — rows and columns of pixels farther apart than the kernel reaches do not meet,
    ``|row − col| ≤ (p·W + p)·C + C − 1`` — so the determinant is taken by banded LU
    (:func:`snf_tf.ops.linalg.banded_log_abs_det`): the same value and gradient as a dense
    ``slogdet`` at a fraction of its cost, which grows with the band, not with D³ (RESULTS.md,
    "Whole-model speed: the exact conv log-det by banded LU").
    """
    bandwidth = int(np.max(np.abs(positions[:, 0] - positions[:, 1]))) if len(positions) else 0
    return banded_log_abs_det(conv_toeplitz(kernel, positions, taps, size), bandwidth)


def conv_solve(kernel, positions, taps, size, y):
    """``x`` with ``conv(x, kernel) = y`` for NHWC ``y``: one dense solve with ``T``."""
    matrix = conv_toeplitz(kernel, positions, taps, size)
    flat = tf.reshape(y, [-1, size])
    x = tf.linalg.solve(matrix, tf.transpose(flat), adjoint=True)
    return tf.reshape(tf.transpose(x), tf.shape(y))
