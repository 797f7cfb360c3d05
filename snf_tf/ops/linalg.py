"""Small linear-algebra helpers shared by the exact (non-SNF) layers."""

import tensorflow as tf

__all__ = ["log_abs_det_qr"]


def log_abs_det_qr(matrix):
    """``log|det A|`` as ``Σ log|diag R|`` of ``A = QR``.

    Differentiable (its gradient is ``A⁻ᵀ``) and, unlike ``tf.linalg.slogdet``, compilable with XLA,
    so the exact 1×1 convs keep ``jit_compile`` available.
    """
    r = tf.linalg.qr(matrix)[1]
    return tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(r))))
