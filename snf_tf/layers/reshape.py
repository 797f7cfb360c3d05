"""Volume-preserving rearrangements: 2×2 squeeze (space-to-channels), flatten and reshape.

Keller et al., ICML 2021 (``docs/paper.md``, "Squeeze"): the multi-scale conv and Glow models
squeeze between blocks. All layers here permute or regroup elements, so ``log|det| = 0``.
"""

import keras
import numpy as np
import tensorflow as tf

from snf_tf.layers.base import FlowLayer

__all__ = ["Squeeze", "Flatten", "Reshape"]


class _Rearrangement(FlowLayer):
    """A permutation or regrouping of the elements: log-det 0."""

    constant_jacobian = True
    preserves_shape = False

    def exact_log_abs_det(self, event_shape=None):
        return tf.zeros([], self.compute_dtype)


@keras.saving.register_keras_serializable(package="snf_tf")
class Squeeze(_Rearrangement):
    r"""2×2 space-to-channels ``[B, H, W, C] → [B, H/2, W/2, 4C]`` in the reference's channel order.

    Keller et al., ICML 2021 (docs/paper.md: layer details; reference ``space_to_depth``:
    ``view(B, C, H/2, 2, W/2, 2).permute(0, 1, 3, 5, 2, 4)`` on NCHW). In NHWC:

    .. math::
        z[b, h, w, 4c + 2i + j] = x[b, 2h + i, 2w + j, c],\qquad i, j ∈ \{0, 1\},

    i.e. the four pixels of each 2×2 patch of one input channel are *adjacent* output channels.
    This is **not** ``tf.nn.space_to_depth``, whose channel is ``(2i + j)·C + c``; the order decides
    which channels a later coupling or split sees. A permutation: ``log|det| = 0``. Height and
    width must be even.
    """

    input_rank = 4

    def _layout_description(self):
        return "NHWC: [batch, height, width, channels]"

    def _build_for_shape(self, event_shape):
        height, width, _ = event_shape
        if (height is not None and height % 2) or (width is not None and width % 2):
            raise ValueError(
                f"{self.name}: Squeeze needs an even height and width (2×2 patches), got "
                f"H×W = {height}×{width}."
            )

    @staticmethod
    def _squeezed(event_shape):
        height, width, channels = event_shape
        half = lambda d: None if d is None else d // 2  # noqa: E731
        return (half(height), half(width), None if channels is None else 4 * channels)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: Squeeze needs NHWC inputs (rank 4), got {input_shape}.")
        return (input_shape[0],) + self._squeezed(input_shape[1:])

    def _build_from_latent(self, z_shape):
        """``inverse`` before ``forward``: the data shape is the un-squeezed shape of ``z``."""
        if len(z_shape) != 4:
            raise ValueError(f"{self.name}: z must have rank 4 (NHWC), got shape {z_shape}.")
        channels = z_shape[-1]
        if channels is not None and channels % 4:
            raise ValueError(
                f"{self.name}: z must have a multiple of 4 channels (4 per input channel), "
                f"got {channels}."
            )
        double = lambda d: None if d is None else 2 * d  # noqa: E731
        self.build((None, double(z_shape[1]), double(z_shape[2]),
                    None if channels is None else channels // 4))

    def _forward(self, x, exact, training):
        """``(squeeze(x), 0)``."""
        shape = tf.shape(x)
        b, h, w, c = shape[0], shape[1], shape[2], shape[3]
        if not (x.shape[1] is not None and x.shape[2] is not None):
            tf.debugging.assert_equal(
                tf.math.floormod(tf.stack([h, w]), 2), 0,
                message=f"{self.name}: Squeeze needs an even height and width")
        y = tf.reshape(x, [b, h // 2, 2, w // 2, 2, c])          # [B, H', i, W', j, C]
        y = tf.transpose(y, [0, 1, 3, 5, 2, 4])                   # [B, H', W', C, i, j]
        z = tf.reshape(y, [b, h // 2, w // 2, 4 * c])
        return z, tf.zeros([b], dtype=x.dtype)

    def _inverse(self, z, exact):
        """``[B, H/2, W/2, 4C] → [B, H, W, C]``, undoing :meth:`forward` exactly."""
        shape = tf.shape(z)
        b, h, w, c4 = shape[0], shape[1], shape[2], shape[3]
        y = tf.reshape(z, [b, h, w, c4 // 4, 2, 2])              # [B, H', W', C, i, j]
        y = tf.transpose(y, [0, 1, 4, 2, 5, 3])                   # [B, H', i, W', j, C]
        return tf.reshape(y, [b, 2 * h, 2 * w, c4 // 4])


@keras.saving.register_keras_serializable(package="snf_tf")
class Reshape(_Rearrangement):
    r"""Reshape each example to ``target_shape`` (row-major, like ``tf.reshape``); ``log|det| = 0``.

    A relabelling of coordinates: ``z = vec⁻¹_{target}(vec(x))``. The input's per-example shape is
    recorded at build time (``event_shape``; it travels with ``.keras`` files through Keras'
    build config), so :meth:`inverse` restores it. One entry of ``target_shape`` may be ``-1``.

    Args:
        target_shape: per-example output shape (no batch axis), e.g. ``(784,)`` or ``(28, 28, 1)``.
    """

    needs_known_shape = True

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        try:
            target = tuple(int(d) for d in target_shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"{type(self).__name__}: target_shape must be a tuple of ints, "
                f"got {target_shape!r}."
            ) from None
        if not target or any(d == 0 or d < -1 for d in target) or target.count(-1) > 1:
            raise ValueError(
                f"{type(self).__name__}: target_shape must be non-empty positive ints with at most "
                f"one -1, got {target_shape!r}."
            )
        self.target_shape = target

    def _resolve(self, event_shape):
        size = int(np.prod(event_shape))
        known = int(np.prod([d for d in self.target_shape if d != -1]))
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(
                    f"{self.name}: cannot reshape a per-example shape {event_shape} ({size} "
                    f"elements) to {self.target_shape}."
                )
            return tuple(size // known if d == -1 else d for d in self.target_shape)
        if known != size:
            raise ValueError(
                f"{self.name}: cannot reshape a per-example shape {event_shape} ({size} elements) "
                f"to {self.target_shape} ({known} elements); a flow must keep the dimension."
            )
        return self.target_shape

    def _build_for_shape(self, event_shape):
        self.output_event_shape = self._resolve(event_shape)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if any(d is None for d in input_shape[1:]):
            raise ValueError(f"{self.name}: {type(self).__name__} needs a fully known per-example "
                             f"shape, got {input_shape}.")
        return (input_shape[0],) + self._resolve(input_shape[1:])

    def _forward(self, x, exact, training):
        """``(reshape(x), 0)``."""
        batch = tf.shape(x)[:1]
        z = tf.reshape(x, tf.concat([batch, self.output_event_shape], 0))
        return z, tf.zeros(batch, dtype=x.dtype)

    def _inverse(self, z, exact):
        """Reshape back to the per-example shape seen at build time."""
        return tf.reshape(z, tf.concat([tf.shape(z)[:1], self.event_shape], 0))

    def get_config(self):
        config = super().get_config()
        config.update(target_shape=list(self.target_shape))
        return config


@keras.saving.register_keras_serializable(package="snf_tf")
class Flatten(Reshape):
    r"""``[B, d₁, …, d_k] → [B, d₁·…·d_k]`` (row-major, NHWC order for images); ``log|det| = 0``.

    The per-example input shape is recorded at build time and restored by :meth:`inverse`
    (see :class:`Reshape`). Used in front of dense flows (e.g. the paper's FC MNIST model, D = 784).
    """

    def __init__(self, **kwargs):
        kwargs.pop("target_shape", None)
        super().__init__(target_shape=(-1,), **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("target_shape")
        return config

