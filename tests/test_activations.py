"""SmoothLeakyReLU, LearnableLeakyReLU, SplineActivation: the Newton inverse, the
parametrisations, and the spline against a NumPy port of the reference (Durkan et al.) formulas.

The generic checks of every flow layer are in ``test_layer_table.py``.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import perturb

from snf_tf.layers.activations import LearnableLeakyReLU, SmoothLeakyReLU, SplineActivation


def _x(shape, batch, scale, seed=0):
    return scale * np.random.default_rng(seed).standard_normal((batch,) + shape)


def _built(make, shape, scale):
    layer = make()
    layer.build((None,) + shape)
    perturb(layer, scale)  # move the spline off its near-identity init
    return layer


@pytest.mark.parametrize("make,expected", [
    (SmoothLeakyReLU, set()),
    (LearnableLeakyReLU, {"alpha_logit"}),
    (SplineActivation, {"unnormalized_widths", "unnormalized_heights",
                        "unnormalized_derivatives"}),
], ids=["SmoothLeakyReLU", "LearnableLeakyReLU", "SplineActivation"])
def test_trainable_weights(make, expected):
    layer = make()
    layer.build((None, 4, 3, 2))
    assert {w.name for w in layer.trainable_weights} == expected


@pytest.mark.parametrize("make,message", [
    (lambda: SmoothLeakyReLU(alpha=0.0), "alpha"),
    (lambda: SmoothLeakyReLU(alpha=1.5), "alpha"),
    (lambda: SmoothLeakyReLU(inverse_tolerance=0), "inverse_tolerance"),
    (lambda: SmoothLeakyReLU(inverse_max_iterations=0), "inverse_max_iterations"),
    (lambda: LearnableLeakyReLU(alpha=0.5), r"\(0.5, 1.5\)"),
    (lambda: SplineActivation(num_bins=0), "num_bins"),
    (lambda: SplineActivation(tail_bound=-1.0), "tail_bound"),
    (lambda: SplineActivation(num_bins=5, min_bin_width=0.2), "min_bin_width"),
    (lambda: SplineActivation(min_derivative=1.0), "min_derivative"),
    (lambda: SplineActivation().build((None, None, 3)), "fully known"),
])
def test_bad_arguments_raise_clear_value_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- SmoothLeakyReLU ---------------------------------------------------------------------------
def test_smooth_leaky_relu_matches_the_reference_formula():
    x = np.linspace(-30, 30, 121)[None]
    z, log_det = SmoothLeakyReLU(0.3, dtype="float64").forward(x)
    reference = 0.3 * x + 0.7 * np.logaddexp(0, x)
    np.testing.assert_allclose(z, reference, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(log_det, [np.sum(np.log(0.3 + 0.7 / (1 + np.exp(-x))))], rtol=1e-13)


@pytest.mark.parametrize("alpha", [0.3, 0.1])  # the default, and a flatter negative side
@pytest.mark.parametrize("dtype,atol", [("float64", 1e-9), ("float32", 1e-4)])
def test_smooth_leaky_relu_newton_inverse_converges(dtype, atol, alpha):
    layer = SmoothLeakyReLU(alpha, dtype=dtype)
    x = np.concatenate([np.linspace(-60, 60, 241), [-1e-3, 0.0, 1e-3]])[None].astype(dtype)
    y = layer.forward(x)[0]
    x_back, steps, last_step = layer._newton_inverse(y)
    assert float(last_step) <= 1e-5                       # converged by the criterion, not the cap
    assert int(steps) < layer.inverse_max_iterations
    np.testing.assert_allclose(x_back, x, atol=atol, rtol=max(atol, 1e-7))
    np.testing.assert_allclose(layer.forward(x_back)[0], y, atol=1e-5, rtol=1e-6)


def test_smooth_leaky_relu_newton_respects_the_iteration_cap():
    layer = SmoothLeakyReLU(inverse_max_iterations=2, dtype="float64")
    y = layer.forward(np.array([[-40.0, 25.0]]))[0]
    _, steps, last_step = layer._newton_inverse(y)
    assert int(steps) == 2 and float(last_step) > 1e-5


# -- LearnableLeakyReLU ------------------------------------------------------------------------
def test_learnable_leaky_relu_parametrisation():
    layer = LearnableLeakyReLU(dtype="float64")  # reference init: θ = 0 → α = 1 (identity)
    x = np.array([[-2.0, -0.5, 0.0, 3.0]])
    z, log_det = layer.forward(x)
    assert float(layer.alpha_logit) == 0.0 and float(layer.alpha) == 1.0
    np.testing.assert_array_equal(z, x)
    layer.alpha_logit.assign(1.3)
    alpha = 0.5 + 1 / (1 + math.exp(-1.3))
    z, log_det = layer.forward(x)
    np.testing.assert_allclose(z, [[-2 * alpha, -0.5 * alpha, 0.0, 3.0]], rtol=1e-14)
    np.testing.assert_allclose(log_det, [2 * math.log(alpha)], rtol=1e-14)


def test_learnable_leaky_relu_initial_alpha():
    layer = LearnableLeakyReLU(alpha=0.7, dtype="float64")
    layer.build((None, 3))
    np.testing.assert_allclose(float(layer.alpha), 0.7, rtol=1e-14)


# -- SplineActivation --------------------------------------------------------------------------
def reference_spline(x, uw, uh, ud, bound=10.0, mw=1e-3, mh=1e-3, md=1e-3):
    """NumPy port of the reference forward spline (linear tails), per element."""
    k = uw.shape[-1]
    ud = np.pad(ud, [(0, 0)] * (ud.ndim - 1) + [(1, 1)]) + np.log(np.exp(1 - md) - 1)

    def softmax(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def knots(u, minimum):
        size = minimum + (1 - minimum * k) * softmax(u)
        cum = np.concatenate([np.zeros(size.shape[:-1] + (1,)), np.cumsum(size, -1)], -1)
        cum = 2 * bound * cum - bound
        cum[..., 0], cum[..., -1] = -bound, bound
        return cum

    cw, ch = knots(uw, mw), knots(uh, mh)
    d = md + np.log1p(np.exp(ud))
    out, lad = x.copy(), np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        value, p = x[idx], idx[1:]
        if not -bound <= value <= bound:
            continue
        b = min(int(np.sum(value >= cw[p][:-1])) - 1, k - 1)
        w, h = cw[p][b + 1] - cw[p][b], ch[p][b + 1] - ch[p][b]
        s, d0, d1 = h / w, d[p][b], d[p][b + 1]
        t = (value - cw[p][b]) / w
        den = s + (d0 + d1 - 2 * s) * t * (1 - t)
        out[idx] = ch[p][b] + h * (s * t ** 2 + d0 * t * (1 - t)) / den
        lad[idx] = np.log(s ** 2 * (d1 * t ** 2 + 2 * s * t * (1 - t) + d0 * (1 - t) ** 2)) \
            - 2 * np.log(den)
    return out, lad.reshape(len(x), -1).sum(-1)


def test_spline_matches_a_numpy_port_of_the_reference():
    layer = _built(lambda: SplineActivation(dtype="float64"), (3, 2), scale=1.0)
    x = _x((3, 2), 6, 6.0, seed=7)
    x[0, 0, 0], x[1, 0, 1] = 12.0, -10.5  # outside the tail bound
    z, log_det = layer.forward(x)
    expected_z, expected_ld = reference_spline(
        x, *(w.numpy() for w in (layer.unnormalized_widths, layer.unnormalized_heights,
                                 layer.unnormalized_derivatives)))
    np.testing.assert_allclose(z, expected_z, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(log_det, expected_ld, rtol=1e-10, atol=1e-12)


def test_spline_with_few_bins_and_a_small_tail_bound_matches_the_reference_and_inverts():
    """Non-default ``num_bins`` and ``tail_bound`` reach the forward and the inverse; most inputs
    fall in the tails."""
    layer = _built(lambda: SplineActivation(num_bins=3, tail_bound=3.0, dtype="float64"), (5,),
                   scale=0.5)
    x = _x((5,), 6, 3.0, seed=10)
    z, log_det = layer.forward(x)
    expected_z, expected_ld = reference_spline(
        x, *(w.numpy() for w in (layer.unnormalized_widths, layer.unnormalized_heights,
                                 layer.unnormalized_derivatives)), bound=3.0)
    np.testing.assert_allclose(z, expected_z, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(log_det, expected_ld, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.inverse(z), x, rtol=1e-10, atol=1e-10)


def test_spline_parameters_are_per_element_with_the_reference_init():
    layer = SplineActivation()
    layer.build((None, 28, 28, 1))
    assert tuple(layer.unnormalized_widths.shape) == (28, 28, 1, 5)
    assert tuple(layer.unnormalized_heights.shape) == (28, 28, 1, 5)
    assert tuple(layer.unnormalized_derivatives.shape) == (28, 28, 1, 4)
    for w in layer.trainable_weights:
        assert 0.009 < np.std(w.numpy()) < 0.011 and abs(np.mean(w.numpy())) < 1e-3


def test_spline_boundary_derivatives_are_one_and_tails_are_the_identity():
    # the reference padding constant gives derivative exactly 1 for a zero logit
    derivative = 1e-3 + math.log1p(math.exp(math.log(math.expm1(1 - 1e-3))))
    assert derivative == pytest.approx(1, abs=1e-15)
    for scale in (0.0, 2.0):  # at init and far from it
        layer = _built(lambda: SplineActivation(dtype="float64"), (4,), scale)
        _, _, slopes = layer.spline_parameters()
        if scale == 0.0:  # interior derivatives start near 1
            np.testing.assert_allclose(slopes, 1.0, atol=0.02)
        eps = 1e-7
        x = tf.constant([[-10 + eps, 10 - eps, -10 - eps, 10 + eps],
                         [-25.0, 25.0, -10.0, 10.0]], tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(x)
            z, log_det = layer.forward(x)
        derivative = tape.gradient(z, x).numpy()
        np.testing.assert_allclose(derivative, 1.0, atol=1e-5)  # C¹ joint with the tails
        np.testing.assert_allclose(z.numpy()[:, 2:], x.numpy()[:, 2:], rtol=1e-12)
        np.testing.assert_array_equal(z.numpy()[1], x.numpy()[1])     # identity outside
        assert abs(float(log_det[1])) < 1e-12


def test_spline_has_no_stale_bijector_cache():
    layer = _built(lambda: SplineActivation(dtype="float64"), (3,), 0.3)
    x = tf.constant(_x((3,), 4, 3.0, seed=8))
    z_before, _ = layer.forward(x)
    layer.unnormalized_heights.assign(layer.unnormalized_heights + 0.7)
    layer.unnormalized_widths.assign(layer.unnormalized_widths * -2.0)
    z_after, _ = layer.forward(x)
    assert not np.allclose(z_before, z_after)
    np.testing.assert_allclose(layer.inverse(z_after), x, rtol=1e-10, atol=1e-10)
