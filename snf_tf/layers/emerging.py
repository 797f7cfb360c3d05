r"""Emerging convolutions: a 1×1 conv and two masked autoregressive 2×2 convs with flips.

Hoogeboom, van den Berg, Welling, *Emerging Convolutions for Generative Normalizing Flows*,
ICML 2019; the baseline ``Emerging(C)`` of Keller et al., *Self Normalizing Flows*, ICML 2021
(``docs/paper.md``).
"""

import keras
import numpy as np
import tensorflow as tf

from snf_tf.layers.base import FlowLayer, warn_if_singular
from snf_tf.layers.glow import Conv1x1

__all__ = ["EmergingConv2D"]


class _SquareARConv2D(FlowLayer):
    r"""Square autoregressive 2×2 conv: each output pixel sees the input pixels above/left of it.

    .. math::
        z_{i,j} = x_{i,j} K_{11} + x_{i,j-1} K_{10} + x_{i-1,j} K_{01} + x_{i-1,j-1} K_{00} + b,

    (zero outside the image; HWIO kernel, ``x_{i,j}`` a row vector of C channels) — the reference's
    conv with padding 1 followed by cropping the last row and column. The current-pixel tap
    ``K_{11}`` is masked upper-triangular in ``[in, out]`` (output channel ``o`` sees input
    channels ``c ≤ o``), so the Jacobian is triangular in raster order and
    ``log|det| = H·W·Σ_c log|K_{11}[c, c]|``.
    """

    input_rank = 4
    needs_known_shape = True
    constant_jacobian = True

    def _build_for_shape(self, event_shape):
        channels = event_shape[-1]
        mask = np.ones((2, 2, channels, channels))
        mask[1, 1] = np.triu(np.ones((channels, channels)))
        self._mask = mask

        def kernel_init(shape, dtype=None):
            # Reference: randn / sqrt(C·C·4), plus 1 on the diagonal of the last tap.
            noise = keras.initializers.RandomNormal(stddev=1.0 / np.sqrt(4 * channels ** 2))(
                shape, dtype=dtype)
            eye = np.zeros(shape)
            eye[1, 1] = np.eye(channels)
            # Masked entries never act; store them as 0 so the weight reads as what it does.
            return (noise + tf.cast(eye, noise.dtype)) * tf.cast(mask, noise.dtype)

        self.kernel = self.add_weight(name="kernel", shape=(2, 2, channels, channels),
                                      initializer=kernel_init)
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")

    def masked_kernel(self):
        kernel = tf.convert_to_tensor(self.kernel)
        return kernel * tf.cast(self._mask, kernel.dtype)

    def exact_log_abs_det(self, event_shape=None):
        diagonal = tf.linalg.diag_part(tf.convert_to_tensor(self.kernel)[1, 1])
        return self._spatial_size(event_shape) * tf.reduce_sum(tf.math.log(tf.abs(diagonal)))

    def _forward(self, x, exact, training):
        padded = tf.pad(x, [[0, 0], [1, 0], [1, 0], [0, 0]])
        z = tf.nn.conv2d(padded, self.masked_kernel(), strides=1, padding="VALID")
        return z + tf.convert_to_tensor(self.bias), self.exact_log_abs_det()

    def row_matrices(self):
        r"""``(A, B)`` with ``z_i − b = x_i A + x_{i−1} B`` for image rows flattened as ``j·C + c``.

        ``A = I ⊗ K_{11} + S ⊗ K_{10}`` and ``B = I ⊗ K_{01} + S ⊗ K_{00}`` with ``S`` the
        W×W shift (``S[j, j+1] = 1``); ``A`` is upper triangular.
        """
        _, width, channels = self.event_shape
        kernel = self.masked_kernel()
        eye = tf.eye(width, dtype=kernel.dtype)
        shift = tf.constant(np.eye(width, k=1), dtype=kernel.dtype)
        size = width * channels

        def kron(p, k):
            return tf.reshape(p[:, None, :, None] * k[None, :, None, :], [size, size])

        return (kron(eye, kernel[1, 1]) + kron(shift, kernel[1, 0]),
                kron(eye, kernel[0, 1]) + kron(shift, kernel[0, 0]))

    def _inverse(self, z, exact):
        r"""Exact inverse, one image row at a time (top to bottom).

        With ``z_i − b = x_i A + x_{i−1} B``: ``x_i = y_i − x_{i−1} M`` where ``y = (z − b) A⁻¹``
        (all rows in one matmul) and ``M = B A⁻¹``; ``A⁻¹`` comes from one triangular solve.
        H − 1 sequential ``[batch, W·C] × [W·C, W·C]`` matmuls remain (a ``tf.scan``).
        Computed in float64, as the reference's Cython solve: the recursion amplifies rounding
        errors (for some kernels by many orders of magnitude — then the rounding of a float32
        ``z`` already limits the accuracy).
        """
        height, width, channels = self.event_shape
        within, previous = (tf.cast(m, tf.float64) for m in self.row_matrices())
        eye = tf.eye(width * channels, dtype=tf.float64)
        within_inv = tf.linalg.triangular_solve(within, eye, lower=False)
        coupling = tf.matmul(previous, within_inv)
        rows = tf.reshape(tf.cast(z - tf.convert_to_tensor(self.bias), tf.float64),
                          [-1, height, width * channels])
        x = tf.matmul(rows, within_inv)
        if height > 1:
            x = _row_recurrence(x, coupling)
        return tf.cast(tf.reshape(x, tf.shape(z)), z.dtype)


@tf.function(reduce_retracing=True)
def _row_recurrence(y, coupling):
    """``x_0 = y_0``, ``x_i = y_i − x_{i−1} @ coupling`` over axis 1 of ``y`` [batch, H, W·C].

    A ``tf.function`` (a while loop) so that eager calls do not pay one dispatch per row; it is
    inlined into enclosing graphs and XLA clusters.
    """
    rows = tf.transpose(y, [1, 0, 2])
    rest = tf.scan(lambda previous, row: row - tf.matmul(previous, coupling), rows[1:],
                   initializer=rows[0])
    return tf.transpose(tf.concat([rows[:1], rest], axis=0), [1, 0, 2])


def _flip(x):
    """Mirror both spatial axes (``Flip2d``; its own inverse, log-det 0)."""
    return tf.reverse(x, axis=[1, 2])


@keras.saving.register_keras_serializable(package="snf_tf")
class EmergingConv2D(FlowLayer):
    r"""Emerging convolution: an invertible 3×3-receptive-field conv with a cheap exact log-det.

    Hoogeboom, van den Berg & Welling, *Emerging Convolutions for Generative Normalizing Flows*,
    ICML 2019; used as the ``Emerging(C)`` baseline of Keller et al., ICML 2021 (Table 1). As the
    reference code, the layer is the sequence

    .. math::
        z = \mathrm{flip}\big(g_2(\mathrm{flip}(g_1(x W)))\big),

    with ``x W`` an exact 1×1 conv (``conv1x1``) and ``g_1``, ``g_2`` square autoregressive
    2×2 convs (``ar_conv_1``, ``ar_conv_2``): ``g(x)_{i,j} = x_{i,j} K_{11} + x_{i,j-1} K_{10} +
    x_{i-1,j} K_{01} + x_{i-1,j-1} K_{00} + b`` with ``K_{11}`` upper triangular in
    ``[in, out]``. The flips make the second conv look below/right, so together they cover a
    3×3 neighbourhood. The Jacobian of each masked conv is triangular in raster order:

    .. math::
        \log|\det J| = H W \big(\log|\det W| + Σ_c \log|K^{(1)}_{11}[c,c]|
                                             + Σ_c \log|K^{(2)}_{11}[c,c]|\big).

    The exact inverse undoes the steps in reverse; each masked conv is inverted row by row
    (top to bottom): with ``z_i − b = x_i A + x_{i−1} B`` for rows flattened to ``W·C``, ``A``
    is upper triangular, so ``x_i = (z_i − b − x_{i−1} B) A⁻¹`` with ``A⁻¹`` from one
    ``(W·C)×(W·C)`` triangular solve. H sequential matmuls replace the reference's
    pixel-by-pixel Cython loop (H·W·C steps). Works eagerly, in ``tf.function`` and under XLA.
    The solve runs in float64 (as the reference) and is as accurate as pixel-wise substitution,
    but an autoregressive conv can be badly conditioned whatever the algorithm: errors grow with
    powers of ``K_{11}⁻¹ K_{10}`` along a row. With the reference init and C = 1 (off-diagonal
    taps of std 0.5) about half of random 28×28 layers have cond > 1e12 and do not round-trip.

    Init (reference): 1×1 kernel random orthogonal; AR kernels ``N(0, 1/(4C²))`` plus 1 on the
    diagonal of the current-pixel tap (its masked entries stored as 0); biases 0.
    """

    input_rank = 4
    needs_known_shape = True
    constant_jacobian = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        sub = dict(dtype=self.dtype_policy)
        self.conv1x1 = Conv1x1(name="conv1x1", **sub)
        self.ar_conv_1 = _SquareARConv2D(name="ar_conv_1", **sub)
        self.ar_conv_2 = _SquareARConv2D(name="ar_conv_2", **sub)

    def _build_for_shape(self, event_shape):
        for layer in (self.conv1x1, self.ar_conv_1, self.ar_conv_2):
            layer.build((None,) + event_shape)

    def exact_log_abs_det(self, event_shape=None):
        """``log|det J|`` per example (independent of the input)."""
        shape = self.event_shape if event_shape is None else tuple(event_shape)
        return warn_if_singular(self, sum(layer.exact_log_abs_det(shape) for layer in (
            self.conv1x1, self.ar_conv_1, self.ar_conv_2)))

    def _forward(self, x, exact, training):
        """``z = f(x)`` and its exact ``log|det ∂z/∂x|`` per example (``exact`` changes nothing)."""
        h, _ = self.conv1x1.forward(x)
        h, _ = self.ar_conv_1.forward(h)
        h, _ = self.ar_conv_2.forward(_flip(h))
        return _flip(h), self.exact_log_abs_det()

    def _inverse(self, z, exact):
        """Exact ``x = f⁻¹(z)`` by sequential row solves (``exact`` changes nothing)."""
        h = _flip(self.ar_conv_2.inverse(_flip(z)))
        return self.conv1x1.inverse(self.ar_conv_1.inverse(h))
