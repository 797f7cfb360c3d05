"""snf_tf in the Keras user's own models: a conditional flow built with the functional API,
trained on its likelihood and reloaded in a fresh interpreter; and ``FlowModel`` under a global
mixed-precision policy (fit, evaluate, sample, save/load, export), against its float32 twin."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import snf_tf.layers as L
from snf_tf import FlowModel, architectures, export

LOG_2PI = math.log(2.0 * math.pi)


def _conditional_functional_flow(dim=6, context_dim=3):
    """x, c → log p(x | c) of RealNVP(c) → SNF dense → leaky ReLU → RealNVP(c) under N(0, I),
    from built-in Keras layers only (so any interpreter with snf_tf loads the file)."""
    x_in, c_in = keras.Input((dim,), name="x"), keras.Input((context_dim,), name="c")
    flow = [L.RealNVPCoupling((16,), context_dim=context_dim, name="nvp_a"),
            L.SelfNormDense(name="dense"), L.SmoothLeakyReLU(name="act"),
            L.RealNVPCoupling((16,), reverse=True, context_dim=context_dim, name="nvp_b")]
    h, log_dets = x_in, []
    for layer in flow:
        h, log_det = layer(h, context=c_in if layer.uses_context else None, return_log_det=True)
        log_dets.append(keras.layers.Reshape((1,))(log_det))
    base = keras.layers.Rescaling(-0.5, offset=-0.5 * dim * LOG_2PI)(
        keras.layers.Dot(axes=1)([h, h]))
    log_p = keras.layers.Add()([base] + log_dets)  # [batch, 1]
    return keras.Model([x_in, c_in], log_p), flow


def _negative_mean(_, log_p):
    return -log_p


def test_a_conditional_flow_built_functionally_trains_and_reloads_in_a_fresh_interpreter(
        tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 512)
    c = np.eye(3, dtype="float32")[labels]
    x = (rng.standard_normal((512, 6)) * 0.5 + 2.0 * labels[:, None]).astype("float32")
    model, flow = _conditional_functional_flow()
    # the functional model's exact log p is FlowModel's over the same layer objects
    twin = FlowModel(flow, context_dim=3, conditional_base=False)
    np.testing.assert_allclose(model.predict([x, c], verbose=0)[:, 0],
                               twin.log_prob(x, context=c), rtol=1e-5, atol=1e-4)
    before = float(np.mean(model.predict([x, c], verbose=0)))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=_negative_mean)
    model.fit([x, c], np.zeros(512), batch_size=64, epochs=8, verbose=0)
    log_p = model.predict([x, c], verbose=0)
    assert float(np.mean(log_p)) > before + 1.0, (before, float(np.mean(log_p)))
    np.testing.assert_allclose(log_p[:, 0], twin.log_prob(x, context=c), rtol=1e-5, atol=1e-4)
    # the context matters: the same x under other labels is less likely
    shuffled = np.eye(3, dtype="float32")[(labels + 1) % 3]
    assert float(np.mean(model.predict([x, shuffled], verbose=0))) < float(np.mean(log_p)) - 1.0

    path = tmp_path / "flow.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "c.npy", c)
    np.save(tmp_path / "log_p.npy", log_p)
    script = (
        "import sys, numpy as np, keras\n"
        "import snf_tf\n"
        "d = sys.argv[1]\n"
        "m = keras.models.load_model(d + '/flow.keras', compile=False)\n"
        "x, c = np.load(d + '/x.npy'), np.load(d + '/c.npy')\n"
        "np.testing.assert_allclose(m.predict([x, c], verbose=0), np.load(d + '/log_p.npy'),"
        " rtol=1e-6, atol=1e-6)\n"
        "print('same', type(m.get_layer('nvp_a')).__name__)\n")
    env = {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", "HOME": str(tmp_path),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same RealNVPCoupling" in result.stdout


@pytest.fixture(params=["mixed_bfloat16", "mixed_float16"])
def global_policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def _twin(model, policy="float32"):
    """The same architecture in another policy, with ``model``'s weights."""
    other = architectures.glow(num_blocks=2, steps_per_block=1, hidden_channels=8,
                               num_classes=3, seed=0, dtype=policy)
    other.build((None, 8, 8, 1))
    other.set_weights(model.get_weights())
    return other


def test_flow_model_under_a_global_mixed_policy(global_policy, tmp_path):
    """Under a global mixed policy a conditional Glow builds, fits (mixed_float16 with Keras's
    loss scaling), evaluates, samples, saves, loads and exports; the couplings' networks compute
    in half precision, everything else and every number it returns is float32, and its exact
    NLL is within 0.5 % of its float32 twin's with the same weights."""
    half = global_policy[6:]
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (64, 8, 8, 1)).astype("uint8")
    y = rng.integers(0, 3, 64)
    model = architectures.glow(num_blocks=2, steps_per_block=1, hidden_channels=8,
                               num_classes=3, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    scaled = global_policy == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) is scaled
    couplings = [layer for layer in model.flow_layers if isinstance(layer, L.AffineCoupling)]
    assert couplings and all(c.conv_in.compute_dtype == half for c in couplings)
    assert all(w.dtype == "float32" for w in model.weights if "float" in w.dtype)
    assert model.base.compute_dtype == "float32"

    nll = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)["nll"]
    log_p = model.log_prob(x, seed=3, context=y)
    assert log_p.dtype == tf.float32
    samples = model.sample(4, seed=5, context=1)
    assert samples.dtype == tf.float32 and np.all(np.isfinite(samples))
    keras.mixed_precision.set_global_policy("float32")  # the twin and the loaded file: own policy
    twin = _twin(model)
    twin_nll = float(-np.mean(twin.log_prob(x, seed=3, context=y)))
    assert abs(float(-np.mean(log_p)) - twin_nll) < 5e-3 * abs(twin_nll)
    assert abs(nll - twin_nll) < 5e-3 * abs(twin_nll)

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.dtype_policy.name == global_policy
    assert [c.conv_in.compute_dtype for c in loaded.flow_layers
            if isinstance(c, L.AffineCoupling)] == [half] * len(couplings)
    np.testing.assert_array_equal(loaded.log_prob(x, seed=3, context=y), log_p)
    np.testing.assert_array_equal(loaded.sample(4, seed=5, context=1), samples)

    saved = export.load_saved_model(export.export_saved_model(model, str(tmp_path / "sm")))
    # the served graph's half-precision convs round differently from eager ones: 1e-5, not 1e-6
    np.testing.assert_allclose(saved.log_prob(x=x[:8], y=y[:8]),
                               export.log_prob(model, x[:8], context=y[:8]), rtol=2e-5)


@pytest.mark.parametrize("builder", ["fc_flow", "conv_flow", "glow"])
def test_every_builder_takes_a_dtype(builder):
    """``dtype=`` reaches every layer and the model; the FC and conv flows have no half-precision
    work, so their mixed-precision log-likelihood is the float32 one exactly."""
    make = getattr(architectures, builder)
    small = {"conv_flow": {"num_blocks": 2, "convs_per_block": 1},
             "glow": {"num_blocks": 1, "steps_per_block": 1, "hidden_channels": 8}}.get(builder, {})
    x = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 1)).astype("uint8")
    mixed, plain = (make(seed=0, dtype=policy, **small) for policy in ("mixed_bfloat16", None))
    for model in (mixed, plain):
        model.build((None, 8, 8, 1))
    plain.set_weights(mixed.get_weights())
    assert mixed.dtype_policy.name == "mixed_bfloat16"
    assert all(layer.dtype_policy.name == "mixed_bfloat16" for layer in mixed.flow_layers)
    log_p = mixed.log_prob(x, seed=1)
    if builder == "glow":
        np.testing.assert_allclose(log_p, plain.log_prob(x, seed=1), rtol=5e-3)
    else:
        np.testing.assert_array_equal(log_p, plain.log_prob(x, seed=1))
