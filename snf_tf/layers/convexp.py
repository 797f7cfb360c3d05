r"""The convolution exponential: ``z = exp(M) x`` for a 3×3 conv ``M``, by its power series.

Hoogeboom, Peters, van den Berg, Welling, *The Convolution Exponential and Generalized Sylvester
Flows*, NeurIPS 2020; the baseline ``ConvExp(C, H, W)`` of Keller et al., *Self Normalizing
Flows*, ICML 2021 (docs/paper.md: experiments, layer details).
"""

import math

import keras
import tensorflow as tf

from snf_tf.checks import check_positive_int
from snf_tf.layers.base import FlowLayer, warn_if_singular
from snf_tf.layers.glow import Conv1x1
from snf_tf.ops.selfnorm import flip_kernel

__all__ = ["ConvExponential"]


def _conv(x, kernel):
    return tf.nn.conv2d(x, kernel, strides=1, padding="SAME")


def _conv_exp_series(x, kernel, terms):
    r"""``Σ_{k=0}^{terms} M^k x / k!`` with ``M x = conv(x, kernel)`` ('same', stride 1, NHWC)."""
    result = product = x
    for k in range(1, terms + 1):
        product = _conv(product, kernel) / k
        result = result + product
    return result


def _check_terms(name, value):
    return check_positive_int(value, name, "ConvExponential")


@keras.saving.register_keras_serializable(package="snf_tf")
class ConvExponential(FlowLayer):
    r"""Convolution exponential with an exact 1×1 conv in front and full-shape biases.

    Hoogeboom et al., *The Convolution Exponential*, NeurIPS 2020, as used for the
    ``ConvExp(C, H, W)`` baseline of Keller et al., ICML 2021 (Table 1). With ``M`` the 3×3
    'same' conv of the (spectrally normalised) kernel and ``W`` an exact 1×1 conv:

    .. math::
        z = \exp(M)\,\big((x + b_{pre}) W\big) + b_{post},\qquad
        \exp(M)\,h = Σ_{k=0}^{K} M^k h / k!,

    with ``K = train_terms`` (6) in training and ``eval_terms`` (13) otherwise. Since
    ``det exp(M) = exp(tr M)`` and every pixel sees the centre tap:

    .. math::
        \log|\det J| = H W\,\big(\mathrm{tr}\,K_{centre} + \log|\det W|\big).

    The inverse is the series with ``−M`` (``eval_terms`` terms unless ``terms`` is given), then
    ``W⁻¹`` and the biases.

    Spectral norm (reference, after Behrmann et al.): the kernel used is
    ``kernel / (max(1, σ / coeff) + 1e-5)`` where ``σ = ‖M v‖`` estimates the largest singular
    value of the real zero-padded H×W conv operator. ``v`` (``spectral_vector``, shape
    (H, W, C), unit norm) is a non-trainable weight; each *training* forward does one power
    iteration ``v ← normalize(Mᵀ normalize(M v))`` (no gradient) and stores it; ``σ`` is then
    differentiated with ``v`` fixed. Evaluation and inverse use the stored ``v`` unchanged, so
    they are deterministic and consistent with each other. (The reference also stores
    ``u = normalize(M v)`` and uses ``uᵀ M v`` in evaluation: the same value until the kernel
    changes after the last power iteration; ``‖M v‖`` never underestimates it.)

    The log-det is that of ``exp(M)``; the truncated series differs from it by terms of order
    ``‖M‖^{K+1}/(K+1)!`` (≈ 3e-12 for ``‖M‖ = 0.9``, K = 13).

    Args:
        train_terms: series terms when ``training=True`` (reference 6).
        eval_terms: series terms otherwise and in the inverse (reference 2·6 + 1 = 13).
        spectral_coeff: bound on ``σ`` (reference 0.9).

    Init (reference): kernel ``N(0, 1) / (9C)``; biases 0; 1×1 conv random orthogonal (the
    reference switches to 64 Householder reflections for C > 64; here it is always exact).
    """

    input_rank = 4
    needs_known_shape = True
    constant_jacobian = True

    def __init__(self, train_terms=6, eval_terms=13, spectral_coeff=0.9, **kwargs):
        super().__init__(**kwargs)
        self.train_terms = _check_terms("train_terms", train_terms)
        self.eval_terms = _check_terms("eval_terms", eval_terms)
        coeff = float(spectral_coeff)
        if not math.isfinite(coeff) or coeff <= 0:
            raise ValueError(
                f"ConvExponential: spectral_coeff must be finite and > 0, got {spectral_coeff!r}."
            )
        self.spectral_coeff = coeff
        self.conv1x1 = Conv1x1(name="conv1x1", dtype=self.dtype_policy)

    def _build_for_shape(self, event_shape):
        channels = event_shape[-1]
        shape = (3, 3, channels, channels)
        self.kernel = self.add_weight(
            name="kernel", shape=shape,
            initializer=keras.initializers.RandomNormal(stddev=1.0 / (9 * channels)))
        self.pre_bias = self.add_weight(name="pre_bias", shape=self.event_shape,
                                        initializer="zeros")
        self.post_bias = self.add_weight(name="post_bias", shape=self.event_shape,
                                         initializer="zeros")

        def unit_normal(shape, dtype=None):
            return tf.math.l2_normalize(keras.initializers.RandomNormal()(shape, dtype=dtype))

        # Replicas compute the same power iteration, so averaging them is exact.
        self.spectral_vector = self.add_weight(
            name="spectral_vector", shape=self.event_shape, initializer=unit_normal,
            trainable=False, aggregation="mean")
        self.conv1x1.build((None,) + event_shape)

    # -- spectral normalisation -----------------------------------------------------------------
    def _power_iteration(self, kernel):
        """One power-iteration step of ``MᵀM`` on the stored vector; stores and returns it."""
        kernel = tf.stop_gradient(kernel)
        v = tf.convert_to_tensor(self.spectral_vector)[None]
        u = tf.math.l2_normalize(_conv(v, kernel))
        v = tf.math.l2_normalize(_conv(u, flip_kernel(kernel)))  # Mᵀ = conv with flip(kernel)
        self.spectral_vector.assign(v[0])
        return v

    def spectral_norm(self, kernel=None, vector=None):
        """``σ = ‖M v‖`` for the stored (or given) unit vector ``v``: the power-iteration
        estimate of the largest singular value of the padded conv operator."""
        kernel = tf.convert_to_tensor(self.kernel if kernel is None else kernel)
        v = tf.convert_to_tensor(self.spectral_vector)[None] if vector is None else vector
        return tf.sqrt(tf.reduce_sum(tf.square(_conv(tf.stop_gradient(v), kernel))))

    def effective_kernel(self, training=False):
        """The kernel of ``M``: ``kernel / (max(1, σ/coeff) + 1e-5)``.

        With ``training=True`` one power iteration runs first and updates ``spectral_vector``.
        """
        kernel = tf.convert_to_tensor(self.kernel)
        vector = self._power_iteration(kernel) if training else None
        sigma = self.spectral_norm(kernel, vector)
        scale = tf.maximum(tf.ones([], kernel.dtype), sigma / self.spectral_coeff)
        return kernel / (scale + 1e-5)

    # -- protocol --------------------------------------------------------------------------------
    def _log_abs_det(self, kernel):
        """``H·W·(tr K_centre + log|det W|)`` for the effective kernel ``kernel``."""
        height, width, _ = self.event_shape
        trace = tf.linalg.trace(kernel[1, 1])
        return warn_if_singular(self, height * width * trace + self.conv1x1.exact_log_abs_det(
            self.event_shape))

    def exact_log_abs_det(self, event_shape=None):
        """``H·W·(tr K_centre + log|det W|)`` with the evaluation-mode effective kernel."""
        if event_shape is not None and tuple(event_shape) != self.event_shape:
            raise ValueError(f"{self.name}: built for per-example shape {self.event_shape}, "
                             f"asked for {tuple(event_shape)}.")
        return self._log_abs_det(self.effective_kernel(training=False))

    def _forward(self, x, exact, training):
        """``z = f(x)`` and its exact ``log|det ∂z/∂x|`` (exact up to the series truncation;
        ``exact`` changes nothing). ``training=True``: ``train_terms`` terms and one power
        iteration of the spectral norm."""
        kernel = self.effective_kernel(training=training)
        h, _ = self.conv1x1.forward(x + tf.convert_to_tensor(self.pre_bias))
        terms = self.train_terms if training else self.eval_terms
        z = _conv_exp_series(h, kernel, terms) + tf.convert_to_tensor(self.post_bias)
        return z, self._log_abs_det(kernel)

    def _inverse(self, z, exact):
        """``x = f⁻¹(z)``: ``exp(−M)`` by its series (``eval_terms`` terms), then the inverse 1×1
        conv and the biases. Uses the stored spectral vector (no update)."""
        return self._series_inverse(z, self.eval_terms)

    def series_inverse(self, z, terms):
        """:meth:`inverse` with ``terms`` terms of the series for ``exp(−M)`` instead of
        ``eval_terms`` (to study the truncation)."""
        return self._series_inverse(self._check_input(z, "z"), _check_terms("terms", terms))

    def _series_inverse(self, z, terms):
        kernel = self.effective_kernel(training=False)
        h = _conv_exp_series(z - tf.convert_to_tensor(self.post_bias), -kernel, terms)
        return self.conv1x1.inverse(h) - tf.convert_to_tensor(self.pre_bias)

    def get_config(self):
        config = super().get_config()
        config.update(train_terms=self.train_terms, eval_terms=self.eval_terms,
                      spectral_coeff=self.spectral_coeff)
        return config
