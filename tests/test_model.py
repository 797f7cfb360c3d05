"""FlowModel: fit, exact evaluation against NumPy, sampling, save/load, XLA handling."""

import numpy as np
import pytest
import keras
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
    np.testing.assert_allclose(model.reconstruct(x), x, atol=0.2)
    errors = model.inverse_errors()
    assert len(errors) == 2 and all(v >= 0 for v in errors.values())


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
