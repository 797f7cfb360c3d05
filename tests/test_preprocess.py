"""Dequantize, Normalize, Logit: the reference pipeline's quirks (float64).

The generic checks of every flow layer are in ``test_layer_table.py``.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from snf_tf.layers.preprocess import Dequantize, Logit, Normalize

ALPHA = 1e-6


def _unit(rng, shape):
    return rng.uniform(0.01, 0.99, size=shape)


def _pixels(rng, shape):
    return rng.integers(0, 256, size=shape).astype("float64")


PREPROCESSING = [
    lambda: Dequantize(dtype="float64"), lambda: Normalize(0.0, 256.0, dtype="float64"),
    lambda: Normalize.logit_prescaling(ALPHA, dtype="float64"), lambda: Logit(dtype="float64"),
]


@pytest.mark.parametrize("make", PREPROCESSING, ids=["Dequantize", "Normalize", "prescaling",
                                                     "Logit"])
def test_no_trainable_weights(make):
    layer = make()
    layer.build((None, 4, 3, 2))
    assert layer.trainable_weights == []


# -- Dequantize -----------------------------------------------------------------------------------
def test_dequantize_adds_noise_only_when_training_or_asked():
    x = _pixels(np.random.default_rng(7), (64, 10))
    layer = Dequantize(seed=1, dtype="float64")
    np.testing.assert_array_equal(layer.forward(x)[0], x)
    np.testing.assert_array_equal(layer(x), x)                       # Keras call, inference
    np.testing.assert_array_equal(layer.forward(x, training=True, noise=False)[0], x)
    for z in (layer.forward(x, training=True)[0], layer.forward(x, noise=True)[0],
              layer(x, training=True), Dequantize(always=True).forward(x)[0]):
        u = np.asarray(z) - x
        assert np.all(u >= 0) and np.all(u < 1) and u.std() > 0.2  # U[0, 1)
    noise_a = layer.forward(x, training=True)[0] - x
    noise_b = layer.forward(x, training=True)[0] - x
    assert not np.allclose(noise_a, noise_b)                          # fresh noise per call


def _noisy(layer):
    def noisy(t):
        return layer.forward(t, training=True)[0]
    return noisy


def test_dequantize_is_seedable_and_fresh_inside_tf_function():
    x = tf.zeros((3, 5), tf.float64)
    a, b = Dequantize(seed=42, dtype="float64"), Dequantize(seed=42, dtype="float64")
    np.testing.assert_array_equal(a.forward(x, training=True)[0], b.forward(x, training=True)[0])
    step = tf.function(_noisy(a), jit_compile=True)
    first, second = step(x), step(x)
    assert not np.allclose(first, second)


@pytest.mark.parametrize("make", [lambda: Dequantize(seed=2, dtype="float64"),
                                  lambda: Dequantize(always=True, seed=3, dtype="float64")],
                         ids=["training", "always"])
def test_dequantize_inverse_keeps_the_dequantized_value(make):
    """The inverse is the identity (no floor): the flow models the continuous values."""
    layer = make()
    x = _pixels(np.random.default_rng(10), (5, 4, 3, 2))
    z, _ = layer.forward(x, training=True)
    assert not np.array_equal(z, x)
    np.testing.assert_array_equal(layer.inverse(z), z)


def test_dequantize_seed_and_noise_stream_survive_config_and_keras_file(tmp_path):
    layer = Dequantize(always=True, seed=3, dtype="float64")
    x = _pixels(np.random.default_rng(4), (3, 5))
    z, log_det = layer.forward(x)
    clone = Dequantize.from_config(layer.get_config())  # the same seed: the same first draw
    np.testing.assert_array_equal(clone.forward(x)[0], z)
    path = str(tmp_path / "layer.keras")
    keras.Sequential([keras.Input((5,), dtype="float64"), layer]).save(path)
    loaded = keras.models.load_model(path).layers[0]
    z_loaded, log_det_loaded = loaded.forward(x)
    z_next, _ = layer.forward(x)  # the noise stream's state travels with the file: it continues
    assert not np.array_equal(z_next, z)
    np.testing.assert_array_equal(z_loaded, z_next)
    np.testing.assert_array_equal(log_det_loaded, log_det)


def test_dequantize_accepts_integer_images():
    x = np.array([[0, 128, 255]], dtype="uint8")
    z, log_det = Dequantize(always=True, seed=0).forward(x)
    assert z.dtype == tf.float32 and log_det.dtype == tf.float32
    assert np.all((z.numpy() >= x) & (z.numpy() < x.astype("float32") + 1))
    np.testing.assert_array_equal(log_det, [0.0])


# -- Normalize ------------------------------------------------------------------------------------
def test_normalize_uses_the_reference_nonstandard_prescaling():
    x = np.array([[0.0, 0.25, 0.5, 1.0]])
    layer = Normalize.logit_prescaling(ALPHA, dtype="float64")
    z, log_det = layer.forward(x)
    np.testing.assert_allclose(z, (x + ALPHA) * (1 - 2 * ALPHA), rtol=1e-15, atol=0)
    # the usual α + (1 − 2α)x differs by −2α² everywhere; visible with a large α
    wide = Normalize.logit_prescaling(0.05, dtype="float64").forward(x)[0].numpy()
    np.testing.assert_allclose(wide, (x + 0.05) * 0.9, rtol=1e-15)
    np.testing.assert_allclose(wide - (0.05 + 0.9 * x), np.full(x.shape, -2 * 0.05**2), rtol=1e-12)
    np.testing.assert_allclose(log_det, [4 * math.log(1 - 2 * ALPHA)], rtol=1e-10)
    assert layer.translation == -ALPHA and layer.scale == 1 / (1 - 2 * ALPHA)


def test_normalize_by_256_and_its_log_det():
    x = _pixels(np.random.default_rng(8), (2, 28, 28, 1))
    z, log_det = Normalize(dtype="float64").forward(x)
    np.testing.assert_array_equal(z, x / 256)
    np.testing.assert_allclose(log_det, np.full(2, -784 * math.log(256)), rtol=1e-14)


@pytest.mark.parametrize("kwargs,message", [
    ({"scale": 0.0}, "scale"), ({"scale": -2.0}, "scale"),
    ({"translation": float("nan")}, "translation"),
])
def test_normalize_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Normalize(**kwargs)
    with pytest.raises(ValueError, match="alpha"):
        Normalize.logit_prescaling(0.5)


# -- the whole reference pipeline ------------------------------------------------------------
def test_reference_pipeline_is_finite_at_the_extremes_and_log_dets_add_up():
    """uint8 → Dequantize → /256 → (x+α)(1−2α) → logit: finite for pixels 0 and 255 with the most
    extreme noise, and the summed log-det equals the log-det of the composed Jacobian."""
    layers = [Dequantize(dtype="float64"), Normalize(dtype="float64"),
              Normalize.logit_prescaling(ALPHA, dtype="float64"), Logit(dtype="float64")]
    x = tf.constant([[0.0, 255.0 + (1 - 2.0 ** -40), 17.5, 128.25]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        h, total = x, tf.zeros([1], tf.float64)
        for layer in layers:
            h, log_det = layer.forward(h)
            total += log_det
    assert np.all(np.isfinite(h)) and np.all(np.isfinite(total))
    jac = tape.batch_jacobian(h, x).numpy()
    np.testing.assert_allclose(total, np.linalg.slogdet(jac)[1], rtol=1e-10)
    back = h
    for layer in reversed(layers):
        back = layer.inverse(back)
    np.testing.assert_allclose(back, x, rtol=1e-8)


def test_logit_matches_the_reference_formula():
    x = _unit(np.random.default_rng(9), (3, 7))
    z, log_det = Logit(dtype="float64").forward(x)
    np.testing.assert_allclose(z, np.log(x) - np.log(1 - x), rtol=1e-12)
    np.testing.assert_allclose(log_det, np.sum(-np.log(x) - np.log(1 - x), axis=1), rtol=1e-12)
    np.testing.assert_allclose(Logit(dtype="float64").inverse(z), x, rtol=1e-12)
