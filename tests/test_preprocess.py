"""Dequantize, Normalize, Logit: protocol checks (float64) and the reference pipeline's quirks."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from snf_tf.layers.preprocess import Dequantize, Logit, Normalize

ALPHA = 1e-6
LOG_2PI = np.log(2 * np.pi)


def _unit(rng, shape):
    return rng.uniform(0.01, 0.99, size=shape)


def _pixels(rng, shape):
    return rng.integers(0, 256, size=shape).astype("float64")


CASES = [  # name, factory, per-example shape, sampler
    ("Dequantize", lambda: Dequantize(dtype="float64"), (4, 3, 2), _pixels),
    ("Dequantize-always", lambda: Dequantize(always=True, seed=3, dtype="float64"), (5,), _pixels),
    ("Normalize-256", lambda: Normalize(0.0, 256.0, dtype="float64"), (4, 3, 2), _pixels),
    ("Normalize-prescale", lambda: Normalize.logit_prescaling(ALPHA, dtype="float64"), (6,), _unit),
    ("Logit", lambda: Logit(dtype="float64"), (4, 3, 2), _unit),
]
IDS = [c[0] for c in CASES]


def _inputs(sample, shape, batch, seed=0):
    return sample(np.random.default_rng(seed), (batch,) + shape)


@pytest.mark.parametrize("name,make,shape,sample", CASES, ids=IDS)
def test_round_trip(name, make, shape, sample):
    layer = make()
    x = _inputs(sample, shape, 5)
    z, _ = layer.forward(x, training=True)
    x_back = layer.inverse(z)
    if name.startswith("Dequantize"):  # inverse keeps the dequantized value: identity
        np.testing.assert_array_equal(x_back, z)
    else:
        np.testing.assert_allclose(x_back, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,make,shape,sample", CASES, ids=IDS)
def test_log_det_equals_slogdet_of_autodiff_jacobian(name, make, shape, sample):
    layer = make()
    x = tf.constant(_inputs(sample, shape, 3, seed=2))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x, training=True)
        z = tf.reshape(z, [3, -1])
    jac = tape.batch_jacobian(z, x).numpy().reshape(3, z.shape[1], -1)
    sign, expected = np.linalg.slogdet(jac)
    assert np.all(sign > 0)
    np.testing.assert_allclose(log_det, expected, rtol=1e-10, atol=1e-10)
    assert log_det.shape == (3,)


@pytest.mark.parametrize("name,make,shape,sample", CASES, ids=IDS)
def test_no_trainable_weights_and_finite_input_gradient(name, make, shape, sample):
    layer = make()
    x = tf.constant(_inputs(sample, shape, 4, seed=3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x, training=True)
        z = tf.reshape(z, [4, -1])
        nll = -tf.reduce_mean(-0.5 * tf.reduce_sum(z * z, -1) + log_det)
    assert layer.trainable_weights == []
    grad = tape.gradient(nll, x).numpy()
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("name,make,shape,sample", CASES, ids=IDS)
def test_config_and_keras_file_round_trip(name, make, shape, sample, tmp_path):
    layer = make()
    x = _inputs(sample, shape, 3, seed=4)
    z, log_det = layer.forward(x)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    z2, log_det2 = type(layer).from_config(layer.get_config()).forward(x)
    fresh = type(layer).from_config(layer.get_config())  # same seed → same first noise draw
    z_fresh, _ = fresh.forward(x)
    np.testing.assert_array_equal(z2, z_fresh)
    if not name.endswith("always"):
        np.testing.assert_array_equal(z2, z)
    np.testing.assert_array_equal(log_det2, log_det)

    path = str(tmp_path / "layer.keras")
    keras.Sequential([keras.Input(shape, dtype="float64"), layer]).save(path)
    loaded = keras.models.load_model(path).layers[0]
    assert type(loaded) is type(layer) and loaded.get_config() == layer.get_config()
    z3, log_det3 = loaded.forward(x)
    z_next, _ = layer.forward(x)  # the noise stream's state travels with the file: it continues
    np.testing.assert_array_equal(z3, z_next)
    np.testing.assert_array_equal(log_det3, log_det)
    np.testing.assert_array_equal(loaded.inverse(z3), layer.inverse(z3))


@pytest.mark.parametrize("name,make,shape,sample", CASES, ids=IDS)
def test_batch_size_independence(name, make, shape, sample):
    layer = make()
    x = _inputs(sample, shape, 7, seed=5)
    z, log_det = layer.forward(x, noise=False) if name.startswith("Deq") else layer.forward(x)
    z1, log_det1 = (layer.forward(x[:1], noise=False) if name.startswith("Deq")
                    else layer.forward(x[:1]))
    np.testing.assert_allclose(z1, z[:1], rtol=1e-14)
    np.testing.assert_allclose(log_det1, log_det[:1], rtol=1e-14)


@pytest.mark.parametrize("name,make,shape,sample", CASES, ids=IDS)
def test_bad_input_raises_value_error(name, make, shape, sample):
    layer = make()
    x = _inputs(sample, shape, 2)
    layer.forward(x)
    with pytest.raises(ValueError, match="rank"):
        layer.forward(x[..., None])
    with pytest.raises(ValueError, match="rank"):
        make().forward(x[0].reshape(-1)[:1])  # no batch axis (rank 1)
    with pytest.raises(ValueError, match="per-example shape"):
        layer.forward(np.concatenate([x, x], axis=-1))
    if name.startswith("Dequantize"):
        with pytest.raises(ValueError, match="floating-point or integer"):
            layer.forward(tf.cast(x, tf.bool))
    else:
        with pytest.raises(ValueError, match="floating-point"):
            layer.forward(x.astype("int32"))


@pytest.mark.parametrize("name,make,shape,sample", CASES, ids=IDS)
def test_forward_and_inverse_compile_with_xla(name, make, shape, sample):
    layer = make()
    x = tf.constant(_inputs(sample, shape, 3, seed=6))
    eager_z, eager_ld = layer.forward(x)
    forward = tf.function(layer.forward, jit_compile=True)
    inverse = tf.function(layer.inverse, jit_compile=True)
    z, log_det = forward(x)
    if not name.endswith("always"):
        np.testing.assert_allclose(z, eager_z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det, eager_ld, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(inverse(z), layer.inverse(z), rtol=1e-12, atol=1e-12)


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
    ({"scale": 0.0}, "scale"), ({"scale": -2.0}, "scale"), ({"translation": float("nan")}, "translation"),
])
def test_normalize_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Normalize(**kwargs)
    with pytest.raises(ValueError, match="alpha"):
        Normalize.logit_prescaling(0.5)


# -- the whole reference pipeline -------------------------------------------------------------------
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
