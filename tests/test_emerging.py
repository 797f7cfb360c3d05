"""EmergingConv2D against a NumPy transcription of the reference definition, autodiff Jacobians
and dense solves; its row-by-row exact inverse over many shapes, in float32 and under XLA (float64
where precision matters). The generic checks of every flow layer are in ``test_layer_table.py``.

Reference (docs/paper.md: layer details): Conv1x1 → SquareAR-conv 2×2 → Flip2d → SquareAR-conv
2×2 → Flip2d, the AR conv being a conv with padding 1 whose last row and column are cropped.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import nll

from snf_tf.layers.emerging import EmergingConv2D

SHAPES = [(4, 4, 2), (3, 5, 3), (2, 3, 4)]


def make_layer(shape, rng, scale=0.3, dtype="float64"):
    """Built layer with random (perturbed) weights; ``scale`` sets the off-diagonal taps."""
    layer = EmergingConv2D(dtype=dtype)
    layer.build((None,) + shape)
    c = shape[-1]
    q = np.linalg.qr(rng.standard_normal((c, c)))[0]
    layer.conv1x1.kernel.assign((q + 0.2 * rng.standard_normal((c, c)))[None, None])
    for ar in (layer.ar_conv_1, layer.ar_conv_2):
        kernel = scale * rng.standard_normal((2, 2, c, c))
        kernel[1, 1] = np.triu(kernel[1, 1]) + np.diag(1.0 + 0.3 * rng.uniform(-1, 1, c))
        ar.kernel.assign(kernel)
        ar.bias.assign(0.3 * rng.standard_normal(c))
    return layer


def reference_ar_conv(x, kernel, bias):
    """Loops over the definition: z[i,j,o] = b[o] + Σ K[a,b,c,o] x[i+a−1, j+b−1, c] (0 outside)."""
    n, h, w, c = x.shape
    z = np.zeros_like(x) + bias
    masked = kernel.copy()
    masked[1, 1] = np.triu(masked[1, 1])  # output channel o sees input channels c ≤ o
    for i in range(h):
        for j in range(w):
            for a in range(2):
                for b in range(2):
                    ii, jj = i + a - 1, j + b - 1
                    if ii >= 0 and jj >= 0:
                        z[:, i, j] += x[:, ii, jj] @ masked[a, b]
    return z


def reference_forward(layer, x):
    h = x @ layer.conv1x1.kernel.numpy()[0, 0]
    h = reference_ar_conv(h, layer.ar_conv_1.kernel.numpy(), layer.ar_conv_1.bias.numpy())
    h = h[:, ::-1, ::-1]
    h = reference_ar_conv(h, layer.ar_conv_2.kernel.numpy(), layer.ar_conv_2.bias.numpy())
    return h[:, ::-1, ::-1]


def jacobian(layer, x, fn=None):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = (fn or (lambda t: layer.forward(t)[0]))(x)
        z = tf.reshape(z, [x.shape[0], -1])
    return tape.batch_jacobian(z, x).numpy().reshape(x.shape[0], z.shape[1], -1)


# -- definition and log-det --------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_equals_the_reference_definition(shape):
    rng = np.random.default_rng(0)
    layer = make_layer(shape, rng)
    x = rng.standard_normal((3,) + shape)
    np.testing.assert_allclose(layer.forward(x)[0], reference_forward(layer, x), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_log_det_equals_its_closed_form_and_slogdet_over_shapes(shape):
    """H·W·(log|det W₁ₓ₁| + Σ log|diag| of both AR centre taps), for several H, W, C (the table
    has one shape)."""
    rng = np.random.default_rng(1)
    layer = make_layer(shape, rng)
    x = rng.standard_normal((3,) + shape)
    _, log_det = layer.forward(x)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jacobian(layer, x))[1], rtol=1e-9,
                               atol=1e-9)
    h, w, _ = shape
    closed_form = h * w * (np.linalg.slogdet(layer.conv1x1.kernel.numpy()[0, 0])[1] + sum(
        np.sum(np.log(np.abs(np.diag(ar.kernel.numpy()[1, 1]))))
        for ar in (layer.ar_conv_1, layer.ar_conv_2)))
    np.testing.assert_allclose(log_det, np.full(3, closed_form), rtol=1e-10)


def test_autoregressive_conv_jacobian_is_triangular_in_raster_order():
    rng = np.random.default_rng(2)
    shape = (3, 4, 3)
    layer = make_layer(shape, rng)
    jac = jacobian(layer, rng.standard_normal((1,) + shape),
                   fn=lambda t: layer.ar_conv_1.forward(t)[0])[0]   # J[out, in]
    np.testing.assert_array_equal(np.triu(jac, k=1), 0)               # out sees in ≤ out only
    np.testing.assert_allclose(np.diag(jac), np.tile(np.diag(layer.ar_conv_1.kernel.numpy()[1, 1]),
                                                     12), rtol=1e-14)


def test_masked_entries_have_no_effect_and_no_gradient():
    rng = np.random.default_rng(3)
    layer = make_layer((3, 3, 3), rng)
    x = tf.constant(rng.standard_normal((2, 3, 3, 3)))
    z, _ = layer.forward(x)
    kernel = layer.ar_conv_1.kernel.numpy()
    kernel[1, 1] += np.tril(rng.standard_normal((3, 3)), k=-1)
    layer.ar_conv_1.kernel.assign(kernel)
    with tf.GradientTape() as tape:
        z2, _ = layer.forward(x)
        loss = tf.reduce_sum(z2 ** 2)
    np.testing.assert_array_equal(z2, z)
    grad = tape.gradient(loss, layer.ar_conv_1.kernel).numpy()
    np.testing.assert_array_equal(np.tril(grad[1, 1], k=-1), 0)


# -- exact inverse -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES + [(1, 4, 2), (5, 1, 3), (28, 28, 1), (14, 14, 4),
                                   (7, 7, 16)])
def test_inverse_round_trip_float64(shape):
    rng = np.random.default_rng(4)
    layer = make_layer(shape, rng, scale=0.1)
    x = rng.standard_normal((3,) + shape)
    z, _ = layer.forward(x)
    np.testing.assert_allclose(layer.inverse(z), x, atol=1e-9)


def test_inverse_equals_a_dense_solve_with_the_jacobian():
    rng = np.random.default_rng(5)
    shape = (4, 5, 3)
    layer = make_layer(shape, rng, scale=0.4)
    z = rng.standard_normal((2,) + shape)
    zero = np.zeros((1,) + shape)
    offset = layer.forward(zero)[0].numpy().reshape(-1)          # f(0): the biases, pushed through
    jac = jacobian(layer, zero)[0]                               # f is affine: f(x) = J x + f(0)
    expected = np.linalg.solve(jac, (z.reshape(2, -1) - offset).T).T.reshape(z.shape)
    np.testing.assert_allclose(layer.inverse(z), expected, rtol=1e-9, atol=1e-10)


def test_inverse_at_initialisation_in_float32_eager_graph_and_xla():
    layer = EmergingConv2D()
    x = tf.random.normal((4, 3, 4, 3))
    z, _ = layer.forward(x)
    eager = layer.inverse(z)
    graph = tf.function(layer.inverse)(z)
    xla = tf.function(layer.inverse, jit_compile=True)(z)
    np.testing.assert_allclose(eager, x, atol=2e-5)
    np.testing.assert_allclose(graph, eager, atol=1e-6)
    np.testing.assert_allclose(xla, eager, atol=1e-5)


def test_training_step_compiles_with_xla_and_matches_eager():
    layer = make_layer((3, 4, 2), np.random.default_rng(12))
    x = tf.constant(np.random.default_rng(13).standard_normal((2, 3, 4, 2)))

    def step(x):
        with tf.GradientTape() as tape:
            z, log_det = layer.forward(x, training=True)
            loss = nll(z, log_det)
        return loss, tape.gradient(loss, layer.trainable_weights)

    loss, grads = tf.function(step, jit_compile=True)(x)
    loss_eager, grads_eager = step(x)
    np.testing.assert_allclose(loss, loss_eager, rtol=1e-10)
    for g, g_eager in zip(grads, grads_eager):
        np.testing.assert_allclose(g, g_eager, rtol=1e-8, atol=1e-12)


# -- initialisation (reference, docs/paper.md: layer details) ----------------------------------
def test_reference_initialisation():
    c = 16
    layer = EmergingConv2D()
    layer.build((None, 7, 7, c))
    w = layer.conv1x1.kernel.numpy()[0, 0]
    np.testing.assert_allclose(w @ w.T, np.eye(c), atol=1e-5)
    for ar in (layer.ar_conv_1, layer.ar_conv_2):
        kernel = ar.kernel.numpy()
        np.testing.assert_array_equal(np.tril(kernel[1, 1], k=-1), 0)  # masked entries stored as 0
        noise = np.concatenate([kernel[:1].ravel(), kernel[1, :1].ravel(),
                                kernel[1, 1][np.triu_indices(c, 1)],
                                np.diag(kernel[1, 1]) - 1.0])
        expected = 1.0 / np.sqrt(4 * c * c)
        assert 0.85 * expected < noise.std() < 1.15 * expected
        assert abs(noise.mean()) < 0.2 * expected
        np.testing.assert_array_equal(ar.bias.numpy(), 0)


# -- Keras behaviour (gradients, files, batch size, bad input: test_layer_table.py) ------------
def test_trainable_weights_are_the_1x1_kernel_and_both_ar_convs():
    layer = EmergingConv2D()
    layer.build((None, 4, 4, 2))
    assert [w.path.split("/", 1)[1] for w in layer.trainable_weights] == [
        "conv1x1/kernel", "ar_conv_1/kernel", "ar_conv_1/bias", "ar_conv_2/kernel",
        "ar_conv_2/bias"]


def test_fit_trains_and_keeps_the_inverse_exact():
    layer = EmergingConv2D()
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, layer(inputs))

    def loss(_, z):
        return nll(z, layer.exact_log_abs_det() * tf.ones(tf.shape(z)[:1]))

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, jit_compile=False)
    data = np.random.default_rng(11).normal(size=(32, 4, 4, 2)).astype("float32") * 2
    weights = [w.numpy() for w in layer.trainable_weights]
    history = model.fit(data, data, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(not np.allclose(w.numpy(), w0) for w, w0 in zip(layer.trainable_weights, weights))
    z, _ = layer.forward(data)
    np.testing.assert_allclose(layer.inverse(z), data, atol=1e-4)


BAD_INPUT = [
    ("channel mismatch", lambda layer: layer.forward(tf.zeros((1, 4, 4, 3))), "channels"),
    ("spatial mismatch", lambda layer: layer.forward(tf.zeros((1, 5, 4, 2))), "spatial"),
    ("unknown size", lambda layer: EmergingConv2D().build((None, None, None, 2)), "fully known"),
]


@pytest.mark.parametrize("name,action,message", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_raises_a_clear_value_error(name, action, message):
    layer = EmergingConv2D()
    layer.build((None, 4, 4, 2))
    with pytest.raises(ValueError, match=message):
        action(layer)
