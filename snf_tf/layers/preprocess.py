"""Preprocessing as flow layers: dequantization, affine normalisation and the logit transform.

Keller et al., ICML 2021, common image pipeline (``docs/paper.md``): uint8 pixels ``x ∈ {0..255}^D``
→ ``Dequantize`` (x + u) → ``Normalize(0, 256)`` (x / 256) → ``Normalize.logit_prescaling(1e-6)``
((x + α)(1 − 2α)) → ``Logit``. Their log-dets count in the likelihood, so the NLL is in nats of the
density on ``[0, 256)^D``.

The pipeline declares the range of the data (:func:`pixel_range`): ``[0, 256)`` for the one above,
``[t, t + s)`` for ``Normalize(t, s)`` in general — the values its ``Normalize`` maps onto
``[0, 1)``, whose logit is finite. ``FlowModel.data_range`` reads it and ``FlowModel`` (and the
exported SavedModel) refuse values outside it, and batches of images scaled to [0, 1].
"""

import math

import keras
import tensorflow as tf

from snf_tf.layers.base import FlowLayer, draw, sum_per_example

__all__ = ["Dequantize", "Normalize", "Logit", "pixel_domain", "pixel_range"]


def _batch_broadcast(value, x):
    """A per-example scalar ``value`` as a ``[batch]`` vector."""
    return tf.broadcast_to(tf.cast(value, x.dtype), tf.shape(x)[:1])


def _num_features(x):
    """D = number of elements per example, as a scalar of ``x``'s dtype."""
    return tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype)


@keras.saving.register_keras_serializable(package="snf_tf")
class Dequantize(FlowLayer):
    r"""Uniform dequantization ``z = x + u``, ``u ~ U[0, 1)^D``, with log-det 0.

    Keller et al., ICML 2021 (docs/paper.md: image pipeline, step 2; reference ``Dequantization``
    with a uniform noise distribution, ``log q(u) = 0``). Turns integer data into a continuous
    variable whose density on ``[0, 256)^D`` lower-bounds the discrete likelihood:

    .. math::
        \log P(x) \ge \mathbb{E}_{u}\,\log p(x + u),\qquad \log|\det ∂z/∂x| = 0.

    When noise is added: ``forward(x, training=True)``, or always when the layer is built with
    ``always=True``, or per call with ``noise=True/False`` (overrides both); ``seed`` as
    :func:`snf_tf.layers.base.draw` (None: the layer's ``SeedGenerator``). With the defaults,
    ``evaluate``/``log_prob`` (``training=False``) score the grid points ``x`` themselves — the
    reference instead draws one noise sample at evaluation too; use ``always=True`` to match it.

    The inverse is the identity: the dequantized value is kept (the data model is continuous; the
    reference's ``floor`` would make ``inverse∘forward`` a projection, not a bijection).

    Accepts integer inputs (e.g. uint8 images), which are cast to the layer's compute dtype.

    Args:
        always: add noise also when not training.
        seed: int or ``None``; seeds the layer's ``keras.random.SeedGenerator``.
    """

    def __init__(self, always=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(always, bool):
            raise ValueError(f"Dequantize: always must be a bool, got {always!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Dequantize: seed must be an int or None, got {seed!r}.")
        self.always = always
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    accepts_integers = True
    draws_on_forward = True
    constant_jacobian = True

    def _forward(self, x, exact, training, noise, seed):
        """``(x + u, 0)``; noise when ``noise`` is True, or (if it is None) when training or
        ``always``."""
        if (bool(training) or self.always) if noise is None else bool(noise):
            x = x + draw("uniform", tf.shape(x), x.dtype, seed, self.seed_generator,
                         minval=0.0, maxval=1.0)
        return x, tf.zeros([], dtype=x.dtype)

    def exact_log_abs_det(self, event_shape=None):
        return tf.zeros([], self.compute_dtype)

    def _inverse(self, z, exact):
        """Identity: the continuous value is the data (see the class docstring)."""
        return z

    def get_config(self):
        config = super().get_config()
        config.update(always=self.always, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="snf_tf")
class Normalize(FlowLayer):
    r"""Fixed affine map ``z = (x − translation) / scale`` with ``log|det| = −D·log(scale)``.

    Keller et al., ICML 2021 (docs/paper.md: image pipeline, steps 3-4; reference
    ``Normalization(translation, scale)``). The paper's pipeline uses two of them:

    - ``Normalize(0, 256)``: ``z = x / 256``, log-det ``−D·log 256``;
    - ``Normalize.logit_prescaling(α=1e-6)`` = ``Normalize(−α, 1/(1−2α))``:
      ``z = (x + α)(1 − 2α)``, log-det ``D·log(1 − 2α)``.

    The second is the reference's **nonstandard** logit pre-scaling: the usual one is
    ``α + (1 − 2α)x``; ``(x + α)(1 − 2α)`` maps [0, 1] into ``[α − 2α², 1 − α − 2α²]``, still inside
    (0, 1), and is kept here because it changes the reported NLL (slightly).

    Args:
        translation: subtracted first (float).
        scale: positive finite divisor (float).
    """

    constant_jacobian = True

    def __init__(self, translation=0.0, scale=256.0, **kwargs):
        super().__init__(**kwargs)
        translation, scale = float(translation), float(scale)
        if not math.isfinite(translation):
            raise ValueError(f"Normalize: translation must be finite, got {translation}.")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"Normalize: scale must be positive and finite, got {scale}.")
        self.translation = translation
        self.scale = scale

    @classmethod
    def logit_prescaling(cls, alpha=1e-6, **kwargs):
        """The reference's ``Normalization(−α, 1/(1−2α))``: ``z = (x + α)(1 − 2α)``."""
        alpha = float(alpha)
        if not 0 <= alpha < 0.5:
            raise ValueError(f"Normalize.logit_prescaling: alpha must be in [0, 0.5), got {alpha}.")
        return cls(translation=-alpha, scale=1.0 / (1.0 - 2.0 * alpha), **kwargs)

    @property
    def unit_range(self) -> tuple[float, float]:
        """``[t, t + s)``: the inputs this map sends onto ``[0, 1)`` (``Normalize(0, 256)``:
        the pixel range ``[0, 256)``)."""
        return (self.translation, self.translation + self.scale)

    def _forward(self, x, exact, training):
        """``((x − t) / s, −D·log s)``."""
        z = (x - self.translation) * (1.0 / self.scale)
        return z, _batch_broadcast(-math.log(self.scale) * _num_features(x), x)

    def exact_log_abs_det(self, event_shape=None):
        shape = self.event_shape if event_shape is None else tuple(event_shape)
        if shape is None or None in shape:
            raise ValueError(f"{self.name}: give a fully known event_shape, got {shape}.")
        return tf.constant(-math.log(self.scale) * math.prod(shape), self.compute_dtype)

    def _inverse(self, z, exact):
        """``z·s + t``."""
        return z * self.scale + self.translation

    def get_config(self):
        config = super().get_config()
        config.update(translation=self.translation, scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="snf_tf")
class Logit(FlowLayer):
    r"""Elementwise logit ``z = log x − log(1 − x)`` on ``(0, 1)^D``; inverse: the sigmoid.

    Keller et al., ICML 2021 (docs/paper.md: image pipeline, step 5; reference ``LogitTransform``):

    .. math::
        \log|\det ∂z/∂x| = \sum_i \bigl(−\log x_i − \log(1 − x_i)\bigr).

    Inputs outside (0, 1) give NaN/inf (not checked by the layer; precede it with
    ``Normalize.logit_prescaling`` so that 0 and 1 stay away from the boundary). In a model's
    leading preprocessing it makes the pixel range a requirement (:func:`pixel_range`), which
    ``FlowModel`` checks on its inputs.
    """

    def _forward(self, x, exact, training):
        """``(log x − log(1−x), Σ −log x − log(1−x))``."""
        log_x, log_1mx = tf.math.log(x), tf.math.log1p(-x)
        return log_x - log_1mx, sum_per_example(-log_x - log_1mx)

    def _inverse(self, z, exact):
        """``sigmoid(z)``."""
        return tf.math.sigmoid(z)



def _leading_normalizes(flow_layers):
    """The ``Normalize`` layers of a stack's leading image preprocessing (see
    :func:`pixel_range`), or None if it has none."""
    layers = list(flow_layers)
    i = 0
    while i < len(layers) and isinstance(layers[i], Dequantize):
        i += 1
    normalizes = []
    for layer in layers[i:]:
        if isinstance(layer, Logit):
            return normalizes or None
        if not isinstance(layer, Normalize):
            return None
        normalizes.append(layer)
    return None


def pixel_range(flow_layers) -> tuple[float, float] | None:
    """The range ``[low, high)`` of the data a stack of flow layers takes, declared by its leading
    image preprocessing, or None (any finite values: tabular data, 2-D toys, ...).

    The rule: the stack starts with ``Normalize(t, s)`` — after any number of ``Dequantize``
    layers (the noise stays within one quantization bin) — followed, through further
    ``Normalize`` layers only (the logit pre-scaling), by a ``Logit``: the data must then lie in
    ``[t, t + s)``, the values the first ``Normalize`` maps onto ``[0, 1)`` (``[0, 256)`` for
    :func:`snf_tf.architectures.preprocessing`). Without the ``Logit`` an affine ``Normalize`` is a
    standardisation and declares nothing. See :func:`pixel_domain` for the margin.
    """
    normalizes = _leading_normalizes(flow_layers)
    return None if normalizes is None else normalizes[0].unit_range


def pixel_domain(flow_layers) -> tuple[float, float] | None:
    """The open interval of inputs whose logit is finite (without dequantization noise): the
    logit's domain (0, 1) mapped back through the leading ``Normalize`` layers. With the logit
    pre-scaling (α > 0) it holds :func:`pixel_range` with a margin of ``s·α`` on each side
    (``(−0.000256, 256.000256)`` for the default pipeline): the model's own samples reach into
    it (a saturated sigmoid), so the range checks accept it too."""
    normalizes = _leading_normalizes(flow_layers)
    if normalizes is None:
        return None
    low, high = 0.0, 1.0
    for layer in reversed(normalizes):
        low, high = low * layer.scale + layer.translation, high * layer.scale + layer.translation
    return low, high
