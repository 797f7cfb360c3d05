""".keras round trips and SavedModel export (snf_tf.export): endpoints, signatures, fresh
process."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import fresh_process_env

from snf_tf import FlowModel, architectures, export, layers

SHAPE = (8, 8, 1)


def _images(n=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE).astype("uint8")


def _small(name):
    if name == "fc":
        return architectures.fc_flow(seed=1)
    if name == "conv":
        return architectures.conv_flow(num_blocks=2, convs_per_block=1, seed=1)
    if name == "glow":
        return architectures.glow(steps_per_block=1, hidden_channels=8, seed=1)
    raise ValueError(name)


def _trained(name, epochs=1):
    keras.utils.set_random_seed(7)
    model = _small(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(_images(), batch_size=16, epochs=epochs, verbose=0, shuffle=False)
    return model


def _weights(model):
    return [w.numpy() for w in model.weights]


# -- .keras checkpoints ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name → (model trained 1 epoch, its .keras checkpoint) for the paper's FC, Conv and Glow."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name in ("fc", "conv", "glow"):
        model = _trained(name)
        path = str(root / f"{name}.keras")
        model.save(path)
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", ["fc", "conv", "glow"])
def test_keras_round_trip_log_prob_samples_and_resumed_training(checkpoints, name):
    x = _images(8, seed=1)
    model, path = checkpoints[name]  # the model is trained further below: last use
    loaded = export.load_checkpoint(path)
    assert isinstance(loaded, FlowModel) and loaded.data_shape == model.data_shape
    for original, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(original.numpy(), restored.numpy(), err_msg=original.path)
    # Same noise-free density; and, since the seed-generator states travel with the .keras file,
    # the same dequantization noise, so the same log_prob (exact and cheap).
    np.testing.assert_allclose(export.log_prob(loaded, x), export.log_prob(model, x), rtol=1e-6)
    np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x), rtol=1e-6)
    np.testing.assert_allclose(loaded.log_prob(x, exact=False), model.log_prob(x, exact=False),
                               rtol=1e-6)
    np.testing.assert_array_equal(loaded.sample(5, seed=3), model.sample(5, seed=3))
    # Optimizer state restored: one more epoch on both gives the same weights.
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    for m in (model, loaded):
        m.fit(_images(), batch_size=16, epochs=1, verbose=0, shuffle=False)
    for original, restored in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(restored.numpy(), original.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=original.path)


def _seed_generators(model):
    return [layer.seed_generator for layer in model.flow_layers if hasattr(layer, "seed_generator")]


def test_checkpoint_keeps_the_dequantization_noise_state(tmp_path):
    model = architectures.fc_flow(seed=1)
    model.log_prob(_images(4))
    model.log_prob(_images(4))
    model.save(tmp_path / "fc.keras")
    loaded = keras.models.load_model(tmp_path / "fc.keras")
    for source, target in zip(_seed_generators(model), _seed_generators(loaded)):
        np.testing.assert_array_equal(target.state.numpy(), source.state.numpy())


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        export.load_checkpoint(tmp_path / "missing.keras")
    junk = tmp_path / "junk.keras"
    junk.write_text("not a zip")
    with pytest.raises(ValueError, match="not a .keras checkpoint"):
        export.load_checkpoint(junk)


# -- SavedModel ----------------------------------------------------------------------------------
def _stack(gradient):
    """Two 3×3 convs and a dense layer around a Smooth Leaky ReLU, trained so that W ≠ I, R ≠ W⁻¹
    and the caches are stale at export time."""
    keras.utils.set_random_seed(3)
    model = FlowModel([layers.SelfNormConv2D(3, gradient=gradient), layers.SmoothLeakyReLU(0.3),
                       layers.SelfNormConv2D(1, gradient=gradient), layers.Flatten(),
                       layers.SelfNormDense(gradient=gradient)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    data = np.random.default_rng(5).normal(size=(32, 4, 4, 2)).astype("float32")
    model.fit(data, batch_size=8, epochs=2, verbose=0, shuffle=False)
    return model, data


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """name → (model, export dir, input batch): the Glow checkpoint (a fresh copy, so that other
    tests may train the original) and trained SNF and exact-gradient stacks."""
    root = tmp_path_factory.mktemp("exports")
    model = export.load_checkpoint(checkpoints["glow"][1])
    out = {"glow": (model, export.export_saved_model(model, str(root / "glow")),
                    _images(6, seed=2).astype("float32"))}
    for gradient in ("self_normalized", "exact"):
        model, data = _stack(gradient)
        out[gradient] = (model, export.export_saved_model(model, str(root / gradient)), data[:6])
    return out


@pytest.fixture(scope="module")
def loaded(exported):
    return {name: tf.saved_model.load(path) for name, (_, path, _) in exported.items()}


def test_endpoints_match_the_model(exported, loaded):
    model, _, x = exported["glow"]
    sm = loaded["glow"]
    np.testing.assert_allclose(sm.log_prob(x), export.log_prob(model, x), rtol=1e-6, atol=1e-5)
    out = sm.forward(x)
    z, log_det = export.forward(model, x)
    np.testing.assert_allclose(out["z"], z, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(out["log_det"], log_det, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(sm.inverse(z), model.inverse(z, temperature=0.0), atol=1e-4)
    samples = sm.sample(n=5, seed=11).numpy()
    assert samples.shape == (5,) + SHAPE
    np.testing.assert_array_equal(samples, sm.sample(n=5, seed=11))
    assert not np.allclose(samples, sm.sample(n=5, seed=12))
    # Same stateless seeds as FlowModel.sample (this Glow has one SplitPrior).
    np.testing.assert_allclose(samples, model.sample(5, seed=11), rtol=1e-5, atol=1e-3)
    # Dequantization is off in the export: log_prob is the density at x itself, i.e. the layers
    # after Dequantize (log-det 0) applied to x with nothing added ...
    assert isinstance(model.flow_layers[0], layers.Dequantize) and model.flow_layers[0].always
    h, log_det = tf.convert_to_tensor(x), 0.0
    for layer in model.flow_layers[1:]:
        h, layer_log_det = layer.forward(h, exact=True)
        log_det = log_det + layer_log_det
    at_x = (model.base_log_prob(h) + log_det).numpy()
    np.testing.assert_allclose(sm.log_prob(x), at_x, rtol=1e-6, atol=1e-5)
    # ... not the model's own log_prob, which adds the noise of Dequantize(always=True).
    assert np.all(np.isfinite(at_x)) and not np.allclose(model.log_prob(x), at_x, rtol=1e-3)
    # ... and dequantized_log_prob adds u ~ U[0, 1) drawn with seed [seed, 0].
    u = tf.random.stateless_uniform(x.shape, seed=[7, 0])
    dequantized = sm.dequantized_log_prob(x=x, seed=7).numpy()
    np.testing.assert_allclose(dequantized, export.log_prob(model, x + u), rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(dequantized, sm.dequantized_log_prob(x=x, seed=7))
    assert not np.allclose(dequantized, sm.dequantized_log_prob(x=x, seed=8))


def test_signatures_have_a_free_batch_dimension(exported, loaded):
    model, _, _ = exported["glow"]
    sm = loaded["glow"]
    assert set(export.ENDPOINTS) <= set(sm.signatures)
    spec = sm.signatures["log_prob"].structured_input_signature[1]["x"]
    # any shape passes the signature; the graph checks [None] + data_shape itself
    # (tests/test_data_contract.py), so a wrong shape never prints the input array
    assert spec.shape.rank is None and spec.dtype == tf.float32
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"log_prob: x must have shape \[batch, 8, 8, 1\], got \[2, 8, 8\]"):
        sm.log_prob(np.zeros((2, 8, 8), "float32"))
    for batch in (1, 17):
        x = _images(batch, seed=batch).astype("float32")
        assert sm.log_prob(x).shape == (batch,)
        assert sm.signatures["log_prob"](x=tf.constant(x))["output_0"].shape == (batch,)
        out = sm.forward(x)
        assert out["z"].shape == (batch,) + model.latent_shape and out["log_det"].shape == (batch,)
        assert sm.inverse(out["z"]).shape == (batch,) + SHAPE
        assert sm.sample(n=batch, seed=0).shape == (batch,) + SHAPE
        np.testing.assert_allclose(sm.log_prob(x), export.log_prob(model, x), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("gradient", ["self_normalized", "exact"])
def test_exported_stacks_give_their_exact_log_likelihood(exported, loaded, gradient):
    model, path, x = exported[gradient]
    expected = model.log_prob(x, exact=True).numpy()  # eager; exact layers: live slogdet
    selfnorm = [layer for layer in model.flow_layers if layer.has_log_det_cache]
    live = [float(layer._live_log_abs_det(tf.convert_to_tensor(layer.kernel)))
            for layer in selfnorm]
    np.testing.assert_allclose([float(layer.log_det_cache.numpy()) for layer in selfnorm], live,
                               rtol=1e-6, atol=1e-6)
    assert abs(sum(live)) > 1e-3  # training moved the kernels away from det = 1
    np.testing.assert_allclose(loaded[gradient].log_prob(x), expected, rtol=1e-5, atol=1e-4)
    ops = export.saved_model_op_types(path)
    assert not ops & set(export.DETERMINANT_OPS), ops & set(export.DETERMINANT_OPS)


def test_export_reads_the_refreshed_caches(tmp_path):
    model = FlowModel([layers.SelfNormDense()])
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    model.log_prob(x)
    model.flow_layers[0].kernel.assign(2.0 * np.eye(3, dtype="float32"))  # cache now stale
    path = export.export_saved_model(model, str(tmp_path / "dense"))
    sm = tf.saved_model.load(path)
    np.testing.assert_allclose(sm.log_prob(x), model.log_prob(x), rtol=1e-6)
    assert float(model.flow_layers[0].log_det_cache.numpy()) == pytest.approx(3 * np.log(2.0))


def test_served_through_tfsm_layer(exported):
    model, path, x = exported["glow"]
    inputs = keras.Input(shape=SHAPE, dtype="float32")
    serving = keras.Model(inputs, keras.layers.TFSMLayer(path, call_endpoint="log_prob")(inputs))
    np.testing.assert_allclose(serving.predict(x, verbose=0), export.log_prob(model, x),
                               rtol=1e-6, atol=1e-5)


_FRESH = textwrap.dedent("""
    import json, sys

    class _BlockSnfTf:
        def find_spec(self, name, path=None, target=None):
            if name == "snf_tf" or name.startswith("snf_tf."):
                raise ImportError("snf_tf is blocked in this process")
            return None

    sys.meta_path.insert(0, _BlockSnfTf())
    try:
        import snf_tf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("snf_tf is importable")
    import numpy as np
    import tensorflow as tf

    jobs = json.loads(sys.argv[1])
    out = {}
    for name, job in jobs.items():
        sm = tf.saved_model.load(job["path"])
        x = np.load(job["x"])
        f = sm.forward(x)
        out[name] = {"log_prob": sm.log_prob(x).numpy().tolist(),
                     "z": f["z"].numpy().tolist(), "log_det": f["log_det"].numpy().tolist(),
                     "inverse": sm.inverse(f["z"]).numpy().tolist(),
                     "sample": sm.sample(n=3, seed=5).numpy().tolist(),
                     "dequantized": sm.dequantized_log_prob(x=x, seed=7).numpy().tolist()}
    assert not any(m == "snf_tf" or m.startswith("snf_tf.") for m in sys.modules)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_fresh_process_without_snf_tf(exported, tmp_path):
    jobs = {}
    for name in ("glow", "exact"):
        _, path, x = exported[name]
        np.save(tmp_path / f"{name}.npy", x)
        jobs[name] = {"path": os.path.abspath(path), "x": str(tmp_path / f"{name}.npy")}
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    env = fresh_process_env()
    result = subprocess.run([sys.executable, "-I", str(script), json.dumps(jobs)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for name in jobs:
        model, _, x = exported[name]
        z, log_det = export.forward(model, x)
        np.testing.assert_allclose(got[name]["log_prob"], export.log_prob(model, x), atol=1e-5,
                                   rtol=1e-6)
        np.testing.assert_allclose(got[name]["z"], z, atol=1e-5)
        np.testing.assert_allclose(got[name]["log_det"], log_det, atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(got[name]["inverse"], export.inverse(model, z), atol=1e-5,
                                   rtol=1e-6)
        np.testing.assert_allclose(got[name]["sample"], export.sample(model, 3, 5), atol=1e-5,
                                   rtol=1e-6)
        dequantized = export.dequantized_log_prob(model, x, 7).numpy()
        np.testing.assert_allclose(got[name]["dequantized"], dequantized, atol=1e-5, rtol=1e-6)
        # the noise was added: not the noise-free log_prob
        assert not np.allclose(dequantized, export.log_prob(model, x), rtol=1e-4)


def test_export_rejects_unbuilt_models(tmp_path):
    with pytest.raises(ValueError, match="built"):
        export.export_saved_model(FlowModel([layers.SelfNormDense()]), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_sampling_from_the_checkpoint_and_its_saved_model_agree_with_two_split_priors(tmp_path):
    """One walk of the layers (FlowModel.sample) serves both: same seed, same images, whatever
    the number of SplitPriors (here two: three Glow blocks on 8×8)."""
    keras.utils.set_random_seed(3)
    model = architectures.glow(num_blocks=3, steps_per_block=1, hidden_channels=4, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(_images(16), batch_size=8, epochs=1, verbose=0)
    assert sum(layer.samples_on_inverse for layer in model.flow_layers) == 2
    checkpoint = str(tmp_path / "glow3.keras")
    model.save(checkpoint)
    saved = export.export_saved_model(model, str(tmp_path / "glow3"))
    reloaded, served = export.load_checkpoint(checkpoint), export.load_saved_model(saved)
    from_checkpoint = reloaded.sample(3, seed=11).numpy()
    from_saved_model = served.sample(n=3, seed=11).numpy()  # keep `served` alive while it runs
    np.testing.assert_allclose(from_saved_model, from_checkpoint, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(from_checkpoint, model.sample(3, seed=11), rtol=1e-6, atol=1e-4)
    other = model.sample(3, seed=12).numpy()
    assert np.abs(other - from_checkpoint).max() > 1.0  # the seed matters: not a constant
