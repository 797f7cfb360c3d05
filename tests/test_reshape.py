"""Squeeze, Flatten, Reshape: the reference squeeze order, their shapes and clear errors.

The generic checks of every flow layer are in ``test_layer_table.py``.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import built

from snf_tf.layers.reshape import Flatten, Reshape, Squeeze

CASES = [  # name, factory, per-example input shape, per-example output shape
    ("Squeeze", lambda: Squeeze(dtype="float64"), (4, 6, 3), (2, 3, 12)),
    ("Squeeze-C1", lambda: Squeeze(dtype="float64"), (2, 2, 1), (1, 1, 4)),
    ("Flatten", lambda: Flatten(dtype="float64"), (4, 3, 2), (24,)),
    ("Reshape", lambda: Reshape((6, -1), dtype="float64"), (4, 3, 2), (6, 4)),
    ("Reshape-image", lambda: Reshape((2, 2, 3), dtype="float64"), (12,), (2, 2, 3)),
]
IDS = [c[0] for c in CASES]


def _x(shape, batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch,) + shape)


def reference_squeeze_nhwc(x):
    """The PyTorch reference on NCHW, wrapped in NHWC ↔ NCHW transposes."""
    b, h, w, c = x.shape
    nchw = x.transpose(0, 3, 1, 2)
    y = nchw.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4)
    y = y.reshape(b, c * 4, h // 2, w // 2)
    return y.transpose(0, 2, 3, 1)


# -- the quirk: the reference channel order --------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 2, 1), (4, 6, 3), (8, 4, 5)])
def test_squeeze_equals_the_reference_definition(shape):
    x = _x(shape, 3)
    z, log_det = Squeeze(dtype="float64").forward(x)
    np.testing.assert_array_equal(z, reference_squeeze_nhwc(x))
    np.testing.assert_array_equal(log_det, np.zeros(3))
    # explicitly: new channel = c·4 + 2i + j
    b, h, w, c = 1, shape[0] // 2 - 1, 0, shape[2] - 1
    for i in (0, 1):
        for j in (0, 1):
            assert z.numpy()[b, h, w, c * 4 + 2 * i + j] == x[b, 2 * h + i, 2 * w + j, c]


def test_squeeze_differs_from_space_to_depth_when_c_exceeds_1():
    x = _x((4, 4, 3), 2)
    z = Squeeze(dtype="float64").forward(x)[0].numpy()
    assert not np.array_equal(z, tf.nn.space_to_depth(x, 2).numpy())
    one = _x((4, 4, 1), 2)  # with one channel the two orders coincide
    np.testing.assert_array_equal(Squeeze(dtype="float64").forward(one)[0],
                                  tf.nn.space_to_depth(one, 2))


# -- shapes and the permutation (round trips, gradients, files, bad input: test_layer_table.py) ---
@pytest.mark.parametrize("name,make,shape,out", CASES, ids=IDS)
def test_output_shape_and_exact_round_trip(name, make, shape, out):
    """Each way of reshaping (C = 1, a -1, rank 2 → 4) gives its shape, in Keras too, and
    undoes exactly."""
    layer = make()
    x = _x(shape, 5)
    z, _ = layer.forward(x)
    assert tuple(z.shape) == (5,) + out
    assert tuple(layer.compute_output_shape((None,) + shape)) == (None,) + out
    assert tuple(keras.Sequential([keras.Input(shape, dtype="float64"), make()]).output_shape) \
        == (None,) + out
    np.testing.assert_array_equal(layer.inverse(z), x)


@pytest.mark.parametrize("name,make,shape,out", CASES, ids=IDS)
def test_jacobian_is_a_permutation_and_the_log_det_exactly_zero(name, make, shape, out):
    layer = make()
    x = tf.constant(_x(shape, 3, seed=2))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x)
        z = tf.reshape(z, [3, -1])
    jac = tape.batch_jacobian(z, x).numpy().reshape(3, z.shape[1], -1)
    np.testing.assert_array_equal(log_det, np.zeros(3))
    assert set(np.unique(jac)) == {0.0, 1.0}
    np.testing.assert_array_equal(jac.sum(1), np.ones_like(jac.sum(1)))  # one 1 per row and column
    np.testing.assert_array_equal(jac.sum(2), np.ones_like(jac.sum(2)))


@pytest.mark.parametrize("name,make,shape,out", CASES, ids=IDS)
def test_no_trainable_weights_and_the_gradient_is_permuted_back(name, make, shape, out):
    layer = make()
    x = tf.constant(_x(shape, 4, seed=3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x)
        loss = tf.reduce_mean(0.5 * tf.reduce_sum(tf.reshape(z, [4, -1]) ** 2, -1) - log_det)
    assert layer.trainable_weights == []
    np.testing.assert_allclose(tape.gradient(loss, x), x.numpy() / 4, rtol=1e-14)


# -- clear errors specific to these layers ----------------------------------------------------
BAD = [
    ("odd height", lambda: Squeeze().forward(tf.zeros((1, 3, 4, 2))), "even height and width"),
    ("odd width", lambda: Squeeze().forward(tf.zeros((1, 4, 5, 2))), "even height and width"),
    ("odd size at build", lambda: Squeeze().build((None, 28, 7, 4)), "even height and width"),
    ("unsqueeze channels", lambda: Squeeze().inverse(tf.zeros((1, 2, 2, 6))), "multiple of 4"),
    ("squeeze wrong latent",
     lambda: built(Squeeze(), (None, 4, 4, 2)).inverse(tf.zeros((1, 2, 2, 12))),
     "per-example shape"),
    ("flatten inverse before build", lambda: Flatten().inverse(tf.zeros((1, 4))),
     "shape to restore"),
    ("flatten wrong latent", lambda: built(Flatten(), (None, 2, 3)).inverse(tf.zeros((1, 5))),
     "per-example shape"),
    ("reshape size mismatch", lambda: Reshape((5,)).build((None, 2, 3)), "keep the dimension"),
    ("reshape indivisible", lambda: Reshape((4, -1)).build((None, 2, 3)), "cannot reshape"),
    ("reshape two -1", lambda: Reshape((-1, -1)), "at most one -1"),
    ("reshape zero", lambda: Reshape((0, 3)), "positive"),
    ("reshape not ints", lambda: Reshape("abc"), "tuple of ints"),
    ("flatten unknown dims", lambda: Flatten().build((None, None, 3)), "fully known"),
    ("no batch axis", lambda: Flatten().build((5,)), "rank >= 2"),
]


@pytest.mark.parametrize("name,action,message", BAD, ids=[b[0] for b in BAD])
def test_clear_value_errors(name, action, message):
    with pytest.raises(ValueError, match=message):
        action()


def test_squeeze_inverse_builds_an_unbuilt_layer_from_the_latent_shape():
    z = _x((2, 3, 8), 2)
    layer = Squeeze(dtype="float64")
    x = layer.inverse(z)
    assert tuple(x.shape) == (2, 4, 6, 2) and layer.event_shape == (4, 6, 2)
    np.testing.assert_array_equal(layer.forward(x)[0], z)


def test_flatten_then_reshape_back_in_a_keras_model():
    x = _x((4, 4, 2), 3)
    model = keras.Sequential([keras.Input((4, 4, 2), dtype="float64"), Squeeze(dtype="float64"),
                              Flatten(dtype="float64"), Reshape((2, 2, 8), dtype="float64")])
    np.testing.assert_array_equal(model(x), reference_squeeze_nhwc(x))
