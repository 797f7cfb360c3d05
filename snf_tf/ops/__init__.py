"""Pure TensorFlow functions (no Keras state): self-normalized ops and Toeplitz algebra."""

from snf_tf.ops.linalg import log_abs_det_qr
from snf_tf.ops.selfnorm import (
    conv_log_det_surrogate,
    dense_log_det_surrogate,
    flip_kernel,
    relative_dense,
    relative_log_det_surrogate,
    selfnorm_conv2d,
    selfnorm_dense,
    tap_counts,
    value_zero,
)
from snf_tf.ops.toeplitz import conv_log_abs_det, conv_solve, conv_toeplitz, toeplitz_indices

__all__ = [
    "conv_log_abs_det",
    "conv_log_det_surrogate",
    "conv_solve",
    "conv_toeplitz",
    "dense_log_det_surrogate",
    "flip_kernel",
    "log_abs_det_qr",
    "relative_dense",
    "relative_log_det_surrogate",
    "selfnorm_conv2d",
    "selfnorm_dense",
    "tap_counts",
    "toeplitz_indices",
    "value_zero",
]
