"""FlowModel: fit, exact evaluation against NumPy, sampling, save/load, XLA handling."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from snf_tf import FlowModel, SelfNormConv2D, SelfNormDense


def _data(shape, n=64, seed=0):
    return (np.random.default_rng(seed).normal(size=(n,) + shape) * 2 + 1).astype("float32")


def _numpy_log_prob(model, x):
    """Independent exact log-likelihood of a stack of SelfNormDense layers."""
    h = x.astype(np.float64)
    log_det = 0.0
    for layer in model.flow_layers:
        k = layer.kernel.numpy().astype(np.float64)
        h = h @ k + layer.bias.numpy()
        log_det += np.linalg.slogdet(k)[1]
    d = h.shape[1]
    return -0.5 * np.sum(h**2, 1) - 0.5 * d * np.log(2 * np.pi) + log_det


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_then_exact_evaluation_matches_numpy(jit_compile):
    x = _data((5,))
    model = FlowModel([SelfNormDense(), SelfNormDense()])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    history = model.fit(x, batch_size=16, epochs=3, verbose=0, shuffle=False,
                        validation_data=(x,))
    assert set(history.history) >= {"loss", "nll", "recon", "val_nll", "val_bpd"}
    assert history.history["val_nll"][-1] < history.history["val_nll"][0]
    expected = -_numpy_log_prob(model, x)
    results = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    np.testing.assert_allclose(results["nll"], expected.mean(), rtol=1e-4)
    np.testing.assert_allclose(results["bpd"], expected.mean() / (5 * np.log(2)), rtol=1e-4)
    np.testing.assert_allclose(model.log_prob(x), -expected, rtol=1e-4)


def test_exact_gradient_models_train_without_xla():
    model = FlowModel([SelfNormConv2D(3, gradient="exact")])
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile(optimizer="adam", jit_compile=True)
    assert model.jit_compile is False
    model.fit(_data((4, 4, 2), n=8), batch_size=4, epochs=1, verbose=0)


def test_sample_reconstruct_and_diagnostics():
    model = FlowModel([SelfNormConv2D(3), SelfNormConv2D(1)])
    x = _data((6, 6, 2), n=4)
    model.log_prob(x)
    samples = model.sample(5, seed=3)
    assert samples.shape == (5, 6, 6, 2)
    np.testing.assert_array_equal(samples, model.sample(5, seed=3))
    exact = model.sample(5, seed=3, exact_inverse=True)
    z, _ = model.forward(exact)
    z_expected = tf.random.stateless_normal((5, 6, 6, 2), seed=[3, 0])
    np.testing.assert_allclose(z, z_expected, atol=1e-4)
    # Move every R off W⁻¹: reconstruct and inverse_errors must follow the weights (NumPy).
    for layer in model.flow_layers:
        layer.inverse_kernel.assign(layer.inverse_kernel
                                    + 0.05 * tf.random.normal(layer.inverse_kernel.shape))
    expected = _numpy_reconstruct(model, x)
    np.testing.assert_allclose(model.reconstruct(x), expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected - x).max() > 0.05  # R ≠ W⁻¹: the reconstruction is not x
    errors = model.inverse_errors()
    assert list(errors) == [layer.name for layer in model.flow_layers]
    for layer in model.flow_layers:
        t_w, t_r = _numpy_toeplitz(layer, "kernel"), _numpy_toeplitz(layer, "inverse_kernel")
        expected_error = np.linalg.norm(t_w @ t_r - np.eye(len(t_w)))
        assert expected_error > 0.1, layer.name
        np.testing.assert_allclose(errors[layer.name], expected_error, rtol=1e-5,
                                   err_msg=layer.name)


def _numpy_toeplitz(layer, name):
    """Dense matrix T with vec(conv(x, K)) = vec(x) @ T ('same', stride 1), by explicit loops."""
    kernel = getattr(layer, name).numpy().astype(np.float64)
    h, w, c = layer.event_shape
    k, p = kernel.shape[0], kernel.shape[0] // 2
    t = np.zeros((h, w, c, h, w, c))
    for i in range(h):
        for j in range(w):
            for a in range(k):
                for b in range(k):
                    if 0 <= i + a - p < h and 0 <= j + b - p < w:
                        t[i + a - p, j + b - p, :, i, j, :] += kernel[a, b]
    return t.reshape(h * w * c, h * w * c)


def _numpy_reconstruct(model, x):
    """Learned-inverse round trip of a stack of SelfNormConv2D layers, in NumPy (float64)."""
    h = x.reshape(len(x), -1).astype(np.float64)
    tiled = [np.tile(layer.bias.numpy().astype(np.float64), int(np.prod(layer.event_shape[:2])))
             for layer in model.flow_layers]
    for layer, bias in zip(model.flow_layers, tiled):
        h = h @ _numpy_toeplitz(layer, "kernel") + bias
    for layer, bias in zip(reversed(model.flow_layers), reversed(tiled)):
        h = (h - bias) @ _numpy_toeplitz(layer, "inverse_kernel")
    return h.reshape(x.shape)


def test_reconstruct_is_exact_where_every_r_is_the_inverse():
    rng = np.random.default_rng(1)
    model = FlowModel([SelfNormConv2D(3, dtype="float64"), SelfNormConv2D(1, dtype="float64")],
                      dtype="float64")
    x = _data((5, 4, 3), n=4).astype(np.float64)
    model.build((None, 5, 4, 3))
    for layer in model.flow_layers:  # centre tap only: A⁻¹ at the centre gives T(W)⁻¹ exactly
        a = np.eye(3) + 0.4 * rng.standard_normal((3, 3))
        kernel = np.zeros(layer.kernel.shape)
        inverse = np.zeros(layer.kernel.shape)
        centre = layer.kernel_size // 2
        kernel[centre, centre], inverse[centre, centre] = a, np.linalg.inv(a)
        layer.kernel.assign(kernel)
        layer.inverse_kernel.assign(inverse)
        layer.bias.assign(rng.standard_normal(3))
    assert np.abs(model.forward(x)[0].numpy() - x).max() > 0.5  # the flow is not the identity
    np.testing.assert_allclose(model.reconstruct(x), x, rtol=1e-12, atol=1e-12)
    for name, error in model.inverse_errors().items():
        assert error < 1e-12, (name, error)


def test_save_and_load_keeps_weights_caches_and_optimizer(tmp_path):
    x = _data((4,))
    model = FlowModel([SelfNormDense(), SelfNormDense(gradient="exact")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=16, epochs=1, verbose=0)
    before = model.log_prob(x).numpy()
    path = str(tmp_path / "flow.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.log_prob(x), before, rtol=1e-6)
    np.testing.assert_allclose(loaded.log_prob(x, exact=False), model.log_prob(x, exact=False),
                               rtol=1e-6)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 4
    loaded.fit(x, batch_size=16, epochs=1, verbose=0)
    model.fit(x, batch_size=16, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        FlowModel([])
    with pytest.raises(ValueError, match="not a snf_tf flow layer"):
        FlowModel([keras.layers.Dense(3)])
    model = FlowModel([SelfNormDense()])
    model.log_prob(_data((3,), n=2))
    with pytest.raises(ValueError, match="built for"):
        model.log_prob(_data((4,), n=2))
