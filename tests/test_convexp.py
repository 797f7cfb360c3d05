"""ConvExponential against the matrix exponential of the conv's dense matrix (scipy.linalg.expm),
autodiff Jacobians and singular values; convergence of its series inverse; the spectral-norm
power iteration; Keras behaviour (float64 where precision matters). The generic checks of every
flow layer are in ``test_layer_table.py``.
"""

import math

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from conftest import conv_matrix, nll

from snf_tf.layers.convexp import ConvExponential

SHAPES = [(4, 4, 2), (3, 5, 3), (2, 3, 4)]


def make_layer(shape, rng, kernel_scale=0.15, **kwargs):
    """Built float64 layer with random weights (kernel small enough that σ < coeff)."""
    layer = ConvExponential(dtype="float64", **kwargs)
    layer.build((None,) + shape)
    c = shape[-1]
    layer.kernel.assign(kernel_scale * rng.standard_normal((3, 3, c, c)))
    layer.pre_bias.assign(0.3 * rng.standard_normal(shape))
    layer.post_bias.assign(0.3 * rng.standard_normal(shape))
    layer.conv1x1.kernel.assign((np.linalg.qr(rng.standard_normal((c, c)))[0]
                                 + 0.2 * rng.standard_normal((c, c)))[None, None])
    return layer


def reference_forward(layer, x, kernel):
    """exp(T(M)) applied to the 1×1-conv output, with the dense matrix exponential."""
    n, h, w, c = x.shape
    hidden = (x + layer.pre_bias.numpy()) @ layer.conv1x1.kernel.numpy()[0, 0]
    z = hidden.reshape(n, -1) @ scipy.linalg.expm(conv_matrix(kernel, h, w).numpy())
    return z.reshape(x.shape) + layer.post_bias.numpy()


def jacobian(layer, x, **kwargs):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = tf.reshape(layer.forward(x, **kwargs)[0], [x.shape[0], -1])
    return tape.batch_jacobian(z, x).numpy().reshape(x.shape[0], z.shape[1], -1)


# -- definition and log-det --------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_equals_the_matrix_exponential(shape):
    rng = np.random.default_rng(0)
    layer = make_layer(shape, rng)
    x = rng.standard_normal((3,) + shape)
    kernel = layer.effective_kernel().numpy()
    np.testing.assert_allclose(layer.forward(x)[0], reference_forward(layer, x, kernel),
                               rtol=1e-10, atol=1e-10)


def test_series_length_follows_training_flag_and_constructor():
    shape = (3, 3, 2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2,) + shape)
    for train_terms, eval_terms in [(6, 13), (2, 4)]:
        layer = make_layer(shape, np.random.default_rng(2), kernel_scale=0.3,
                           train_terms=train_terms, eval_terms=eval_terms)
        hidden = ((x + layer.pre_bias.numpy()) @ layer.conv1x1.kernel.numpy()[0, 0]).reshape(2, -1)
        for training, terms in [(False, eval_terms), (True, train_terms)]:
            z, _ = layer.forward(x, training=training)
            t = conv_matrix(layer.effective_kernel().numpy(), 3, 3).numpy()
            series = sum(np.linalg.matrix_power(t, k) / math.factorial(k)
                         for k in range(terms + 1))
            expected = (hidden @ series).reshape(x.shape) + layer.post_bias.numpy()
            np.testing.assert_allclose(z, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_log_det_equals_its_closed_form_and_slogdet_over_shapes(shape):
    """H·W·(tr M + log|det W₁ₓ₁|) against slogdet of the Jacobian, for two H, W, C with a full
    series (the table has one shape, at initialisation)."""
    rng = np.random.default_rng(3)
    layer = make_layer(shape, rng, kernel_scale=0.3, eval_terms=16)  # truncation ≪ tolerance
    x = rng.standard_normal((2,) + shape)
    _, log_det = layer.forward(x)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jacobian(layer, x))[1], rtol=1e-9,
                               atol=1e-9)
    h, w, _ = shape
    kernel = layer.effective_kernel().numpy()
    closed_form = h * w * (np.trace(kernel[1, 1])
                           + np.linalg.slogdet(layer.conv1x1.kernel.numpy()[0, 0])[1])
    np.testing.assert_allclose(log_det, np.full(2, closed_form), rtol=1e-12)
    # tr T(M) = H·W·tr(centre tap): the trace of the whole Toeplitz matrix
    np.testing.assert_allclose(np.trace(conv_matrix(kernel, h, w).numpy()),
                               h * w * np.trace(kernel[1, 1]), rtol=1e-12)


# -- inverse -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_series_inverse_converges_with_the_number_of_terms(shape):
    rng = np.random.default_rng(4)
    layer = make_layer(shape, rng, kernel_scale=3.0)   # σ ≫ 0.9: the constraint is active
    for _ in range(10):                                # a few power iterations
        layer.forward(np.zeros((1,) + shape), training=True)
    t = conv_matrix(layer.effective_kernel().numpy(), *shape[:2]).numpy()
    assert 0.8 < np.linalg.norm(t, 2) < 0.95            # the kernel was scaled down to ≈ coeff
    x = rng.standard_normal((3,) + shape)
    z, _ = layer.forward(x)
    errors = [np.abs(layer.series_inverse(z, k).numpy() - x).max() for k in range(1, 16)]
    assert all(b < a for a, b in zip(errors[:10], errors[1:11])), errors
    assert errors[0] > 1e-2 and errors[12] < 1e-9, errors   # default: 13 terms
    np.testing.assert_allclose(layer.inverse(z), x, atol=1e-9)
    np.testing.assert_array_equal(layer.inverse(z, exact=True), layer.series_inverse(z, 13))


def test_float32_round_trip_at_initialisation_and_in_training_mode():
    layer = ConvExponential()
    x = tf.random.normal((4, 7, 7, 16))
    z, _ = layer.forward(x, training=True)
    # 6 training terms: the inverse of the truncated series is exact to the truncation error
    np.testing.assert_allclose(layer.series_inverse(z, 6), x, atol=1e-4)
    z, _ = layer.forward(x)
    np.testing.assert_allclose(layer.inverse(z), x, atol=1e-5)


# -- spectral norm -------------------------------------------------------------------------------
def test_power_iteration_runs_only_in_training_and_finds_the_largest_singular_value():
    shape = (4, 5, 2)
    layer = make_layer(shape, np.random.default_rng(5), kernel_scale=1.0)
    v0 = layer.spectral_vector.numpy().copy()
    np.testing.assert_allclose(np.linalg.norm(v0), 1.0, rtol=1e-12)
    x = np.zeros((1,) + shape)
    layer.forward(x)
    layer.inverse(x)
    np.testing.assert_array_equal(layer.spectral_vector.numpy(), v0)   # eval / inverse: no update
    layer.forward(x, training=True)
    assert not np.allclose(layer.spectral_vector.numpy(), v0)          # training: one step
    step = tf.function(lambda x: layer.forward(x, training=True))
    for _ in range(150):
        step(x)
    true_sigma = np.linalg.norm(conv_matrix(layer.kernel.numpy(), 4, 5).numpy(), 2)
    np.testing.assert_allclose(layer.spectral_norm(), true_sigma, rtol=1e-4)
    np.testing.assert_allclose(layer.effective_kernel(), layer.kernel.numpy() * 0.9 / true_sigma,
                               rtol=1e-4)


def test_small_kernels_are_left_alone_up_to_the_stability_constant():
    layer = make_layer((3, 3, 2), np.random.default_rng(6), kernel_scale=0.01)
    assert float(layer.spectral_norm()) < 0.9
    np.testing.assert_allclose(layer.effective_kernel(), layer.kernel.numpy() / (1 + 1e-5),
                               rtol=1e-14)


# -- initialisation (reference, docs/paper.md: layer details) ----------------------------------
def test_reference_initialisation():
    c = 16
    layer = ConvExponential()
    layer.build((None, 7, 7, c))
    kernel = layer.kernel.numpy()
    assert kernel.shape == (3, 3, c, c)
    assert 0.9 / (9 * c) < kernel.std() < 1.1 / (9 * c)
    for bias in (layer.pre_bias, layer.post_bias):
        assert bias.shape == (7, 7, c)
        np.testing.assert_array_equal(bias.numpy(), 0)
    w = layer.conv1x1.kernel.numpy()[0, 0]
    np.testing.assert_allclose(w @ w.T, np.eye(c), atol=1e-5)
    assert not layer.spectral_vector.trainable
    assert layer.get_config()["train_terms"] == 6 and layer.get_config()["eval_terms"] == 13


# -- Keras behaviour -----------------------------------------------------------------------------
def test_trainable_weights_and_their_gradients_with_the_spectral_constraint_active():
    """The table runs at initialisation (σ < coeff); here the kernel is rescaled by σ̂ too."""
    layer = ConvExponential(dtype="float64")
    x = tf.constant(np.random.default_rng(8).standard_normal((4, 4, 4, 2)))
    layer.build(x.shape)
    assert [w.path.split("/", 1)[1] for w in layer.trainable_weights] == [
        "kernel", "pre_bias", "post_bias", "conv1x1/kernel"]
    layer.kernel.assign(np.random.default_rng(9).standard_normal((3, 3, 2, 2)))
    with tf.GradientTape() as tape:
        z, log_det = layer.forward(x, training=True)
        loss = nll(z, log_det)
    assert float(layer.spectral_norm()) > layer.spectral_coeff
    for w, g in zip(layer.trainable_weights, tape.gradient(loss, layer.trainable_weights)):
        assert g is not None, w.path
        assert np.all(np.isfinite(g.numpy())) and np.any(g.numpy() != 0), w.path


def test_non_default_config_and_the_spectral_vector_survive_config_and_keras_file(tmp_path):
    shape = (3, 4, 2)
    layer = make_layer(shape, np.random.default_rng(10), kernel_scale=1.0, train_terms=5,
                       eval_terms=11, spectral_coeff=0.8)
    x = np.random.default_rng(11).standard_normal((3,) + shape)
    for _ in range(3):
        layer.forward(x, training=True)   # move the spectral vector off its init
    assert float(layer.spectral_norm()) > 0.8  # the constraint is active: the vector matters
    z, log_det = layer.forward(x)

    clone = ConvExponential.from_config(layer.get_config())
    assert (clone.train_terms, clone.eval_terms, clone.spectral_coeff) == (5, 11, 0.8)

    path = str(tmp_path / "convexp.keras")
    keras.Sequential([keras.Input(shape, dtype="float64"), layer]).save(path)
    loaded = keras.models.load_model(path).layers[0]
    np.testing.assert_array_equal(loaded.spectral_vector.numpy(), layer.spectral_vector.numpy())
    z3, log_det3 = loaded.forward(x)
    np.testing.assert_array_equal(z3, z)
    np.testing.assert_array_equal(log_det3, log_det)
    np.testing.assert_array_equal(loaded.inverse(z), layer.inverse(z))


def test_fit_trains_and_runs_the_power_iteration():
    layer = ConvExponential()
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, layer(inputs))

    def loss(_, z):  # the log-det does not depend on x: recompute it from the effective kernel
        return nll(z, layer._log_abs_det(layer.effective_kernel()) * tf.ones(tf.shape(z)[:1]))

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, jit_compile=False)
    data = np.random.default_rng(14).normal(size=(32, 4, 4, 2)).astype("float32") * 2
    v0 = layer.spectral_vector.numpy().copy()
    history = model.fit(data, data, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(layer.spectral_vector.numpy(), v0)   # power iteration ran in fit
    z, _ = layer.forward(data)
    np.testing.assert_allclose(layer.inverse(z), data, atol=1e-4)


def test_training_step_compiles_with_xla_and_matches_eager():
    shape = (3, 4, 2)
    layer = make_layer(shape, np.random.default_rng(7), kernel_scale=1.0)
    eager = make_layer(shape, np.random.default_rng(7), kernel_scale=1.0)
    eager.set_weights(layer.get_weights())   # incl. the spectral vector
    x = tf.constant(np.random.default_rng(15).standard_normal((2,) + shape))

    def step(layer, x):
        with tf.GradientTape() as tape:
            z, log_det = layer.forward(x, training=True)
            loss = nll(z, log_det)
        return loss, tape.gradient(loss, layer.trainable_weights)

    loss, grads = tf.function(lambda x: step(layer, x), jit_compile=True)(x)
    loss_eager, grads_eager = step(eager, x)
    np.testing.assert_allclose(loss, loss_eager, rtol=1e-10)
    for g, g_eager in zip(grads, grads_eager):
        np.testing.assert_allclose(g, g_eager, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(layer.spectral_vector.numpy(), eager.spectral_vector.numpy(),
                               rtol=1e-10, atol=1e-12)


BAD_INPUT = [
    ("channel mismatch", lambda layer: layer.forward(tf.zeros((1, 4, 4, 3))), "channels"),
    ("spatial mismatch", lambda layer: layer.forward(tf.zeros((1, 4, 5, 2))), "spatial"),
    ("bad inverse terms", lambda layer: layer.series_inverse(tf.zeros((1, 4, 4, 2)), 0), "terms"),
    ("unknown size", lambda layer: ConvExponential().build((None, 4, None, 2)), "fully known"),
    ("zero train terms", lambda layer: ConvExponential(train_terms=0), "train_terms"),
    ("float eval terms", lambda layer: ConvExponential(eval_terms=13.0), "eval_terms"),
    ("negative coeff", lambda layer: ConvExponential(spectral_coeff=-0.9), "spectral_coeff"),
]


@pytest.mark.parametrize("name,action,message", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_raises_a_clear_value_error(name, action, message):
    layer = ConvExponential()
    layer.build((None, 4, 4, 2))
    with pytest.raises(ValueError, match=message):
        action(layer)
