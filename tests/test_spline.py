"""snf_tf.ops.spline and SplineActivation against ``tfp.bijectors.RationalQuadraticSpline`` (the
independent reference): forward, log-det, inverse and the gradients w.r.t. x and every
unconstrained weight, to 1e-10 in float64, eagerly, traced (XLA kernels) and traced without XLA
kernels; inputs on every knot, at ±tail_bound, in the tails, and extreme parameters."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from snf_tf.layers import SplineActivation
from snf_tf.ops import spline as S

K, BOUND = 5, 10.0


def _weights(scale, elements=6, seed=0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(0, scale, (elements, n))) for n in (K, K, K - 1)]


def _inputs(weights, batch=40, seed=1, on_knots=True):
    """Random values inside and outside the range and (``on_knots``) every knot of every
    element and its neighbouring floats, ±B, 0, ±2B."""
    widths, _, _ = S.spline_parameters(*weights, BOUND)
    knots = S._knots(widths, tf.constant(-BOUND, tf.float64)).numpy()  # [E, K + 1], TFP's rounding
    rng = np.random.default_rng(seed)
    elements = knots.shape[0]
    x = rng.normal(0, 6, (batch, elements))
    if not on_knots:
        return tf.constant(x)
    special = np.concatenate([knots.T, np.full((1, elements), -BOUND),
                              np.full((1, elements), BOUND), np.zeros((1, elements)),
                              np.full((1, elements), 2 * BOUND),
                              np.full((1, elements), -2 * BOUND),
                              np.nextafter(knots.T, np.inf), np.nextafter(knots.T, -np.inf)])
    return tf.constant(np.concatenate([x, special]))


def _tfp(weights):
    widths, heights, slopes = S.spline_parameters(*weights, BOUND)
    return tfp.bijectors.RationalQuadraticSpline(widths, heights, slopes, range_min=-BOUND)


def _ours_forward(x, weights):
    kx, _, table = S.unconstrained_spline_table(*weights, BOUND)
    return S.rational_quadratic_spline(x, kx, table, K)


def _ours_inverse(z, weights):
    _, ky, table = S.unconstrained_spline_table(*weights, BOUND)
    return S.rational_quadratic_spline_inverse(z, ky, table, K)


def _tfp_forward(x, weights):
    bijector = _tfp(weights)
    return bijector.forward(x), tf.reduce_sum(bijector.forward_log_det_jacobian(x, 0), -1)


def _with_gradients(fn, x, weights, coefficients):
    """Values of ``fn`` and the gradients of ``Σ c_z·z + Σ c_l·log_det`` w.r.t. x and weights."""
    with tf.GradientTape() as tape:
        tape.watch([x] + weights)
        z, log_det = fn(x, weights)
        loss = tf.reduce_sum(coefficients[0] * z) + tf.reduce_sum(coefficients[1] * log_det)
    return [z, log_det] + tape.gradient(loss, [x] + weights)


MODES = {
    "eager": lambda f: f,
    "traced": lambda f: tf.function(f),
    "traced_xla_step": lambda f: tf.function(f, jit_compile=True),
}


@pytest.mark.parametrize("mode", ["eager", "traced", "traced_no_xla_kernels", "traced_xla_step"])
@pytest.mark.parametrize("scale", [0.01, 1.0, 8.0], ids=["init", "moderate", "extreme"])
def test_forward_log_det_and_gradients_equal_tfp(mode, scale):
    """In a step compiled whole with XLA (``jit_compile=True``, as on GPUs) TFP is compiled too
    and the knots come from XLA's softmax and cumsum, whose rounding differs from TensorFlow's:
    inputs exactly on a knot may then fall into the neighbouring bin (where ∂ log s′/∂x jumps), so
    that mode is compared off the knots."""
    weights = _weights(scale)
    xla_step = mode == "traced_xla_step"
    x = _inputs(weights, on_knots=not xla_step)
    rng = np.random.default_rng(2)
    coefficients = [tf.constant(rng.normal(size=x.shape)),
                    tf.constant(rng.normal(size=x.shape[:1]))]
    wrap = MODES["traced" if mode == "traced_no_xla_kernels" else mode]
    ours = wrap(lambda x, w: _with_gradients(_ours_forward, x, w, coefficients))
    with S.xla_kernels(mode != "traced_no_xla_kernels"):
        got = ours(x, weights)
    reference = (lambda x, w: _with_gradients(_tfp_forward, x, w, coefficients))
    expected = (MODES[mode] if xla_step else MODES["eager"])(reference)(x, weights)
    names = ["z", "log_det", "d/dx", "d/dwidths", "d/dheights", "d/dderivatives"]
    for name, a, b in zip(names, got, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("mode", ["eager", "traced"])
@pytest.mark.parametrize("scale", [0.01, 1.0, 8.0], ids=["init", "moderate", "extreme"])
def test_inverse_and_its_gradients_equal_tfp(mode, scale):
    """Values to 1e-10 everywhere. Gradients (autodiff through the quadratic root, in both
    implementations) to 1e-10 but for extreme parameters: there a bin with slope ≈ 1e-3 makes
    the root's derivative nearly cancelling terms, and TFP's own graph and ours, which compute
    the same formula, differ by ≈ 1e-8 relative (measured); that case is checked to 1e-6."""
    weights = _weights(scale)
    z = _inputs([weights[1], weights[0], weights[2]])  # on the y-knots: swap widths and heights
    rng = np.random.default_rng(3)
    c = tf.constant(rng.normal(size=z.shape))

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([z] + weights)
            x = fn(z, weights)
            loss = tf.reduce_sum(c * x)
        return [x] + tape.gradient(loss, [z] + weights)

    got = MODES[mode](lambda: grads(_ours_inverse))()
    expected = grads(lambda z, w: _tfp(w).inverse(z))
    names = ["x", "d/dz", "d/dwidths", "d/dheights", "d/dderivatives"]
    for name, a, b in zip(names, got, expected):
        rtol = 1e-6 if scale == 8.0 and name != "x" else 1e-10
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=1e-10, err_msg=name)


def test_round_trip_and_identity_tails():
    weights = _weights(1.0)
    x = _inputs(weights)
    z, _ = _ours_forward(x, weights)
    np.testing.assert_allclose(_ours_inverse(z, weights).numpy(), x.numpy(), atol=1e-9)
    outside = np.abs(x.numpy()) >= BOUND
    np.testing.assert_array_equal(z.numpy()[outside], x.numpy()[outside])


def test_nan_stays_nan_like_tfp():
    weights = _weights(1.0)
    x = tf.constant([[np.nan, 0.5, 3.0, -20.0, 1.0, 2.0]], tf.float64)
    z, log_det = _ours_forward(x, weights)
    expected_z, expected_log_det = _tfp_forward(x, weights)
    np.testing.assert_array_equal(np.isnan(z.numpy()), np.isnan(expected_z.numpy()))
    assert np.isnan(log_det.numpy()[0]) and np.isnan(expected_log_det.numpy()[0])


def test_float32_matches_tfp_and_table_shape_is_checked():
    weights = [tf.cast(w, tf.float32) for w in _weights(1.0)]
    x = tf.cast(_inputs(_weights(1.0)), tf.float32)
    z, log_det = tf.function(_ours_forward)(x, weights)
    expected_z, expected_log_det = _tfp_forward(x, weights)
    np.testing.assert_allclose(z.numpy(), expected_z.numpy(), atol=2e-5)
    np.testing.assert_allclose(log_det.numpy(), expected_log_det.numpy(), atol=2e-4)
    kx, _, table = S.unconstrained_spline_table(*weights, BOUND)
    with pytest.raises(ValueError, match="6 splines"):
        S.rational_quadratic_spline(tf.zeros([2, 7]), kx, table, K)


@pytest.mark.parametrize("mode", ["eager", "traced"])
def test_layer_equals_its_tfp_bijector(mode):
    layer = SplineActivation(dtype="float64")
    layer.build((None, 4, 3, 2))
    rng = np.random.default_rng(4)
    for w in layer.trainable_weights:
        w.assign(rng.normal(0, 1.5, w.shape))
    x = tf.constant(rng.normal(0, 5, (7, 4, 3, 2)))
    with tf.GradientTape() as tape:
        z, log_det = MODES[mode](lambda x: layer.forward(x))(x)
        loss = tf.reduce_sum(z ** 2) + tf.reduce_sum(log_det)
    got = [z, log_det] + tape.gradient(loss, layer.trainable_weights)
    with tf.GradientTape() as tape:
        bijector = layer.as_tfp_bijector()
        z = bijector.forward(x)
        log_det = tf.reduce_sum(bijector.forward_log_det_jacobian(x, 0), axis=[1, 2, 3])
        loss = tf.reduce_sum(z ** 2) + tf.reduce_sum(log_det)
    expected = [z, log_det] + tape.gradient(loss, layer.trainable_weights)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.inverse(z).numpy(), bijector.inverse(z).numpy(), atol=1e-10)
    assert math.isfinite(float(tf.reduce_sum(layer.inverse(z))))
