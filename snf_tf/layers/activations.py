"""Invertible elementwise activations: smooth leaky ReLU, learnable leaky ReLU, spline.

Keller et al., ICML 2021 (``docs/paper.md``): the FC models put ``SmoothLeakyReLU(α=0.3)`` between
dense layers, the conv models a per-element rational-quadratic ``SplineActivation`` after every
conv but the last. Elementwise maps have a diagonal Jacobian: ``log|det| = Σ_i log f′(x_i)``.
"""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from snf_tf.checks import check_positive_int
from snf_tf.layers.base import FlowLayer, sum_per_example
from snf_tf.ops import spline as spline_ops

__all__ = ["SmoothLeakyReLU", "LearnableLeakyReLU", "SplineActivation"]


@keras.saving.register_keras_serializable(package="snf_tf")
class SmoothLeakyReLU(FlowLayer):
    r"""Smooth leaky ReLU ``f(x) = αx + (1 − α)·softplus(x)``, inverse by Newton's method.

    Keller et al., ICML 2021 (``docs/paper.md``; reference ``SmoothLeakyRelu``, α = 0.3 in the FC
    experiments). Strictly increasing with ``f′(x) = α + (1 − α)σ(x) ∈ (α, 1)``:

    .. math::
        \log|\det ∂z/∂x| = \sum_i \log\bigl(α + (1 − α)σ(x_i)\bigr).

    Inverse: Newton's method from ``x₀ = y``, ``x ← x − (f(x) − y) / max(f′(x), 10⁻²)`` (the
    reference's clamp), run in a ``tf.while_loop`` until the largest step is ≤ ``inverse_tolerance``
    or ``inverse_max_iterations`` steps were taken (the reference always takes 100). ``f`` is convex
    with ``f′ ∈ (α, 1)``, so the iteration converges from any start; the final step being ≤ 1e-5
    means the error is O(1e-10) (quadratic convergence). In float32 and for ``|y| ≳ 100`` rounding
    can keep the step above 1e-5, and the cap ends the loop.

    Args:
        alpha: slope for ``x → −∞``, in (0, 1].
        inverse_tolerance: stop when ``max |step| ≤`` this.
        inverse_max_iterations: cap on Newton steps.
    """

    def __init__(self, alpha=0.3, inverse_tolerance=1e-5, inverse_max_iterations=100, **kwargs):
        super().__init__(**kwargs)
        alpha = float(alpha)
        if not 0 < alpha <= 1:
            raise ValueError(f"SmoothLeakyReLU: alpha must be in (0, 1], got {alpha}.")
        tolerance = float(inverse_tolerance)
        if not (math.isfinite(tolerance) and tolerance > 0):
            raise ValueError(
                f"SmoothLeakyReLU: inverse_tolerance must be positive, got {inverse_tolerance!r}."
            )
        self.alpha = alpha
        self.inverse_tolerance = tolerance
        self.inverse_max_iterations = check_positive_int(
            inverse_max_iterations, "inverse_max_iterations", "SmoothLeakyReLU")

    def _activation(self, x):
        return self.alpha * x + (1.0 - self.alpha) * tf.math.softplus(x)

    def _derivative(self, x):
        return self.alpha + (1.0 - self.alpha) * tf.math.sigmoid(x)

    def _forward(self, x, exact, training):
        """``(f(x), Σ log f′(x))``."""
        return self._activation(x), sum_per_example(tf.math.log(self._derivative(x)))

    def _newton_inverse(self, y):
        """``(x, steps taken, last max |step|)`` of the Newton iteration for ``f(x) = y``."""
        tolerance = tf.constant(self.inverse_tolerance, y.dtype)

        def step(i, x, change):
            slope = tf.maximum(self._derivative(x), tf.constant(1e-2, y.dtype))
            delta = (self._activation(x) - y) / slope
            return i + 1, x - delta, tf.reduce_max(tf.abs(delta))

        def not_done(i, x, change):
            return tf.logical_and(i < self.inverse_max_iterations, change > tolerance)

        start = (tf.constant(0), y, tf.constant(np.inf, y.dtype))
        steps, x, change = tf.while_loop(not_done, step, start)
        return x, steps, change

    def _inverse(self, z, exact):
        """``f⁻¹(z)`` by Newton's method (converged to ``inverse_tolerance``)."""
        return self._newton_inverse(z)[0]

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, inverse_tolerance=self.inverse_tolerance,
                      inverse_max_iterations=self.inverse_max_iterations)
        return config


@keras.saving.register_keras_serializable(package="snf_tf")
class LearnableLeakyReLU(FlowLayer):
    r"""Leaky ReLU with one learnable slope per layer, ``f(x) = x`` (x ≥ 0), ``α·x`` (x < 0).

    Reference ``LearnableLeakyRelu`` (Keller et al., ICML 2021 code): the slope is parametrised as

    .. math::
        α = 0.5 + σ(θ) ∈ (0.5, 1.5),\qquad \log|\det ∂z/∂x| = \log α · \#\{i : x_i < 0\},

    with the weight ``alpha_logit`` = θ, initialised so that α = ``alpha`` (default 1: the
    reference's θ = 0, the identity). The bounded range keeps the layer well conditioned (α never
    approaches 0). Inverse: ``z`` (z ≥ 0), ``z/α`` (z < 0).

    Args:
        alpha: initial slope, in (0.5, 1.5).
    """

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        alpha = float(alpha)
        if not 0.5 < alpha < 1.5:
            raise ValueError(
                "LearnableLeakyReLU: alpha must be in (0.5, 1.5) (α = 0.5 + sigmoid(θ)), "
                f"got {alpha}."
            )
        self.initial_alpha = alpha

    def _build_for_shape(self, event_shape):
        p = self.initial_alpha - 0.5
        logit = math.log(p) - math.log1p(-p)
        self.alpha_logit = self.add_weight(
            name="alpha_logit", shape=(),
            # Constant() rounds through float32; build the value in the weight's own dtype.
            initializer=lambda shape, dtype: tf.constant(logit, dtype=dtype, shape=shape),
        )

    @property
    def alpha(self):
        """The current slope ``0.5 + sigmoid(alpha_logit)`` (a tensor)."""
        return 0.5 + tf.math.sigmoid(tf.convert_to_tensor(self.alpha_logit))

    def _forward(self, x, exact, training):
        """``(where(x < 0, αx, x), log α · #negatives)``."""
        alpha = tf.cast(self.alpha, x.dtype)
        negative = x < 0
        z = tf.where(negative, alpha * x, x)
        count = sum_per_example(tf.cast(negative, x.dtype))
        return z, count * tf.math.log(alpha)

    def _inverse(self, z, exact):
        """``where(z < 0, z/α, z)``."""
        return tf.where(z < 0, z / tf.cast(self.alpha, z.dtype), z)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.initial_alpha)
        return config


@keras.saving.register_keras_serializable(package="snf_tf")
class SplineActivation(FlowLayer):
    r"""Elementwise rational-quadratic spline with its own parameters for every input element.

    Keller et al., ICML 2021 (``docs/paper.md``; reference
    ``SplineActivation(individual_weights=True)`` with Durkan et al.'s
    ``unconstrained_rational_quadratic_spline``, linear tails). On ``[−B, B]`` (``tail_bound``
    B = 10) a monotone spline with K = 5 bins, the identity outside.
    Per element, from unconstrained ``u_w, u_h ∈ ℝ^K`` and ``u_d ∈ ℝ^{K−1}``:

    .. math::
        w = 2B\,(m_w + (1 − K m_w)\,\mathrm{softmax}(u_w)),\quad
        h = 2B\,(m_h + (1 − K m_h)\,\mathrm{softmax}(u_h)),

        d = m_d + \mathrm{softplus}([0, u_d, 0] + \log(e^{1 − m_d} − 1)),

    bin widths ``w``, heights ``h``, knot derivatives ``d`` (minimums ``m_w = m_h = m_d = 10⁻³``).
    The padding makes the boundary derivatives exactly 1, so the spline joins the identity tails
    with a continuous derivative; the interior ones start near 1. Evaluated with
    ``tfp.bijectors.RationalQuadraticSpline`` (widths/heights summing to 2B, interior slopes,
    implicit boundary slopes 1 — the same parametrisation) it equals TFP's
    ``RationalQuadraticSpline`` (:meth:`as_tfp_bijector`; tested to 1e-10 in float64), but runs
    through :mod:`snf_tf.ops.spline`: one parameter table per step, bins by comparisons, a
    closed-form gradient and XLA-fused kernels in traced functions, because TFP's bijector
    dominated the conv flows' training step (RESULTS.md, "Whole-model speed: the spline
    activations").

    Weights (shape = per-example input shape + bins, initialised ``randn · 0.01``):
    ``unnormalized_widths`` [..., K], ``unnormalized_heights`` [..., K],
    ``unnormalized_derivatives`` [..., K − 1].

    Args:
        num_bins: K (reference 5).
        tail_bound: B (reference 10).
        min_bin_width: the minimum bin width (reference 1e-3).
        min_bin_height: the minimum bin height (reference 1e-3).
        min_derivative: the minimum derivative (reference 1e-3).
    """

    needs_known_shape = True

    def __init__(self, num_bins=5, tail_bound=10.0, min_bin_width=1e-3, min_bin_height=1e-3,
                 min_derivative=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.num_bins = check_positive_int(num_bins, "num_bins", "SplineActivation")
        self.tail_bound = float(tail_bound)
        if not (math.isfinite(self.tail_bound) and self.tail_bound > 0):
            raise ValueError(f"SplineActivation: tail_bound must be positive, got {tail_bound!r}.")
        self.min_bin_width, self.min_bin_height = float(min_bin_width), float(min_bin_height)
        for what, value in (("min_bin_width", self.min_bin_width),
                            ("min_bin_height", self.min_bin_height)):
            if not 0 <= value * self.num_bins < 1:
                raise ValueError(
                    f"SplineActivation: {what} must be >= 0 with {what}·num_bins < 1, got {value} "
                    f"for {self.num_bins} bins."
                )
        self.min_derivative = float(min_derivative)
        if not 0 <= self.min_derivative < 1:
            raise ValueError(
                f"SplineActivation: min_derivative must be in [0, 1) so that the boundary "
                f"derivatives can be 1, got {min_derivative!r}."
            )

    def _build_for_shape(self, event_shape):
        init = keras.initializers.RandomNormal(stddev=0.01)
        k = self.num_bins
        self.unnormalized_widths = self.add_weight(
            name="unnormalized_widths", shape=event_shape + (k,), initializer=init)
        self.unnormalized_heights = self.add_weight(
            name="unnormalized_heights", shape=event_shape + (k,), initializer=init)
        self.unnormalized_derivatives = self.add_weight(
            name="unnormalized_derivatives", shape=event_shape + (k - 1,), initializer=init)

    def _weights(self, dtype):
        return [tf.cast(w, dtype) for w in (self.unnormalized_widths, self.unnormalized_heights,
                                            self.unnormalized_derivatives)]

    def spline_parameters(self, dtype=None):
        """``(bin_widths, bin_heights, interior knot_slopes)`` in TFP's parametrisation."""
        return spline_ops.spline_parameters(
            *self._weights(dtype or self.compute_dtype), self.tail_bound, self.min_bin_width,
            self.min_bin_height, self.min_derivative)

    def as_tfp_bijector(self, dtype=None):
        """The same spline as a ``tfp.bijectors.RationalQuadraticSpline`` (built from the current
        weights; the independent reference the tests compare the layer with)."""
        widths, heights, slopes = self.spline_parameters(dtype)
        return tfp.bijectors.RationalQuadraticSpline(
            bin_widths=widths, bin_heights=heights, knot_slopes=slopes,
            range_min=tf.constant(-self.tail_bound, widths.dtype))

    def _table(self, dtype):
        return spline_ops.unconstrained_spline_table(
            *self._weights(dtype), self.tail_bound, self.min_bin_width, self.min_bin_height,
            self.min_derivative)

    def _forward(self, x, exact, training):
        """``(s(x), Σ log s′(x))``; identity with log-derivative 0 outside ``[−B, B]``."""
        knots_x, _, table = self._table(x.dtype)
        return spline_ops.rational_quadratic_spline(x, knots_x, table, self.num_bins)

    def _inverse(self, z, exact):
        """``s⁻¹(z)`` (closed form: root of the per-bin quadratic)."""
        _, knots_y, table = self._table(z.dtype)
        return spline_ops.rational_quadratic_spline_inverse(z, knots_y, table, self.num_bins)

    def get_config(self):
        config = super().get_config()
        config.update(num_bins=self.num_bins, tail_bound=self.tail_bound,
                      min_bin_width=self.min_bin_width, min_bin_height=self.min_bin_height,
                      min_derivative=self.min_derivative)
        return config
