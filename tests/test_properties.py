"""Property-based checks (hypothesis): random shapes, kernels and weights within the supported set
keep the flow-layer contract — the exact inverse undoes the forward map, and the log-det equals
``slogdet`` of the autodiff Jacobian — in float64.

``test_layer_table.py`` checks every layer at one fixed shape; here hypothesis searches the shapes
and options (and shrinks a failure to the smallest one).
"""

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snf_tf import layers as L

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow])
sizes = st.integers(1, 4)
seeds = st.integers(0, 2**31 - 1)


@st.composite
def dense_cases(draw):
    gradient = draw(st.sampled_from(["self_normalized", "exact", "relative"]))
    return lambda: L.SelfNormDense(gradient=gradient, dtype="float64"), (draw(st.integers(1, 7)),)


@st.composite
def image_cases(draw):
    """A layer over NHWC images and a per-example shape it supports."""
    height, width, channels = draw(sizes), draw(sizes), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["snf_conv", "conv1x1", "emerging", "convexp", "actnorm",
                                 "squeeze", "leaky"]))
    if kind == "snf_conv":
        kernel = draw(st.sampled_from([1, 3, 5]))
        gradient = draw(st.sampled_from(["self_normalized", "exact"]))
        make = lambda: L.SelfNormConv2D(kernel, gradient=gradient, dtype="float64")  # noqa: E731
    elif kind == "conv1x1":
        make = lambda: L.Conv1x1(dtype="float64")  # noqa: E731
    elif kind == "emerging":
        make = lambda: L.EmergingConv2D(dtype="float64")  # noqa: E731
    elif kind == "convexp":
        make = lambda: L.ConvExponential(dtype="float64")  # noqa: E731
    elif kind == "actnorm":
        make = lambda: L.ActNorm(dtype="float64")  # noqa: E731
    elif kind == "squeeze":
        height, width = 2 * height, 2 * width  # Squeeze needs even sizes
        make = lambda: L.Squeeze(dtype="float64")  # noqa: E731
    else:
        alpha = draw(st.floats(0.05, 0.95))
        make = lambda: L.LearnableLeakyReLU(alpha=alpha, dtype="float64")  # noqa: E731
    return make, (height, width, channels)


def _randomised(make, shape, seed, batch=3):
    """A built layer with every weight moved off its initial value, and a batch of inputs."""
    rng = np.random.default_rng(seed)
    layer = make()
    x = rng.normal(size=(batch,) + shape)
    layer.forward(x, training=True)  # builds (and data-initialises ActNorm)
    for weight in layer.trainable_weights:
        weight.assign(weight.numpy() + 0.1 * rng.normal(size=weight.shape))
    return layer, tf.constant(x)


def _check_contract(make, shape, seed):
    layer, x = _randomised(make, shape, seed)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x, exact=True)
        flat = tf.reshape(z, [x.shape[0], -1])
    np.testing.assert_allclose(layer.inverse(z, exact=True), x, atol=1e-7)
    jacobian = tape.batch_jacobian(flat, x).numpy().reshape(x.shape[0], flat.shape[1], -1)
    sign, reference = np.linalg.slogdet(jacobian)
    assert np.all(sign != 0)
    np.testing.assert_allclose(log_det, reference, rtol=1e-7, atol=1e-7)


@SETTINGS
@given(dense_cases(), seeds)
def test_dense_layers_keep_the_contract(case, seed):
    _check_contract(*case, seed)


@SETTINGS
@given(image_cases(), seeds)
def test_image_layers_keep_the_contract(case, seed):
    _check_contract(*case, seed)
