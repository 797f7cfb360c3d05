"""ActNorm, Conv1x1, AffineCoupling and SplitPrior (snf_tf/layers/glow.py).

References: autodiff ``batch_jacobian`` + NumPy slogdet for every log-det, a NumPy re-computation of
the reference coupling network (interleaved scale/shift), NumPy batch statistics for ActNorm's
data-dependent init, and the closed forms of docs/paper.md: layer details. Float64 where precision
matters. The generic checks of every flow layer are in ``test_layer_table.py``.
"""

import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LOG_2PI, TinyFlow, built, nll, perturb

from snf_tf.layers.base import FlowLayer
from snf_tf.layers.glow import ActNorm, AffineCoupling, Conv1x1, SplitPrior

REPO = pathlib.Path(__file__).resolve().parents[1]


def _data(shape, seed=0, batch=4):
    rng = np.random.default_rng(seed)
    # per-channel offsets and scales so that ActNorm's init is far from the identity
    channels = shape[-1]
    return rng.standard_normal((batch,) + shape) * np.linspace(0.5, 3.0, channels) \
        + np.linspace(-2.0, 2.0, channels)


def _ready(make, shape, scale=0.1):
    """A float64 layer, initialised by one training-mode forward, then weights perturbed (the last
    coupling conv is zero-initialised; perturbing makes every weight matter)."""
    layer = make()
    layer.forward(_data(shape, seed=11, batch=6), training=True)
    if scale:
        perturb(layer, scale)
    return layer


CASES = {
    "ActNorm": (lambda: ActNorm(dtype="float64"), (3, 4, 6)),
    "Conv1x1": (lambda: Conv1x1(dtype="float64"), (4, 3, 3)),
    "AffineCoupling": (lambda: AffineCoupling(hidden_channels=8, dtype="float64"), (4, 3, 4)),
    "SplitPrior": (lambda: SplitPrior(hidden_channels=8, dtype="float64"), (3, 4, 4)),
}
IDS = list(CASES)


# -- specific to these layers (the generic checks: test_layer_table.py) -----------------------
def test_split_prior_log_det_is_coupling_jacobian_plus_standard_normal_density():
    make, shape = CASES["SplitPrior"]
    layer = _ready(make, shape, scale=0.3)
    x = tf.constant(_data(shape, seed=3, batch=3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        kept, dropped, log_det = layer.split(x)
        y = tf.reshape(tf.concat([kept, dropped], -1), [3, -1])
    jac = tape.batch_jacobian(y, x).numpy().reshape(3, y.shape[1], -1)
    coupling_part = np.linalg.slogdet(jac)[1]
    d = dropped.numpy().reshape(3, -1)
    normal_part = -0.5 * np.sum(d ** 2, axis=1) - 0.5 * d.shape[1] * LOG_2PI
    np.testing.assert_allclose(log_det, coupling_part + normal_part, rtol=1e-10)
    _, forward_log_det = layer.forward(x)
    np.testing.assert_array_equal(forward_log_det, log_det)
    assert kept.shape[-1] == dropped.shape[-1] == shape[-1] // 2
    # the dropped half is the second half of the coupling output; the kept half is unchanged x₁
    np.testing.assert_array_equal(kept, x[..., :shape[-1] // 2])


EXPECTED_WEIGHTS = {
    "ActNorm": {"bias", "log_scale"},
    "Conv1x1": {"kernel"},
    "AffineCoupling": {"zero_logs", "conv_in/kernel", "conv_in/bias", "conv_hidden/kernel",
                       "conv_hidden/bias", "conv_zero/kernel", "conv_zero/bias"},
}
EXPECTED_WEIGHTS["SplitPrior"] = {"coupling/" + n for n in EXPECTED_WEIGHTS["AffineCoupling"]}


def _gradients(layer, x):
    with tf.GradientTape() as tape:
        z, log_det = layer.forward(x, training=True)
        loss = nll(z, log_det)
    return tape.gradient(loss, layer.trainable_weights)


@pytest.mark.parametrize("name", IDS)
def test_trainable_weight_paths(name):
    make, shape = CASES[name]
    layer = make()
    layer.build((None,) + shape)
    assert {w.path.split("/", 1)[1] for w in layer.trainable_weights} == EXPECTED_WEIGHTS[name]


def test_fresh_coupling_trains_every_weight_after_one_step():
    """Zero-initialised last conv: at init only it (and its logs) gets gradients; one optimizer
    step later every weight does."""
    layer = AffineCoupling(hidden_channels=8, dtype="float64")
    x = tf.constant(_data((4, 4, 4), seed=5))
    grads = _gradients(layer, x)
    assert all(np.any(tf.convert_to_tensor(g).numpy() != 0)
               for w, g in zip(layer.trainable_weights, grads) if "conv_zero/kernel" in w.path)
    keras.optimizers.Adam(1e-2).apply(grads, layer.trainable_weights)
    for w, g in zip(layer.trainable_weights, _gradients(layer, x)):
        g = tf.convert_to_tensor(g).numpy()
        assert np.all(np.isfinite(g)) and np.any(g != 0), w.path


def test_a_loaded_actnorm_does_not_reinitialise(tmp_path):
    make, shape = CASES["ActNorm"]
    layer = _ready(make, shape)
    x = _data(shape, seed=6, batch=3)
    z, log_det = layer.forward(x)
    path = str(tmp_path / "layer.keras")
    keras.Sequential([keras.Input(shape, dtype="float64"), layer]).save(path)
    loaded = keras.models.load_model(path).layers[0]
    assert bool(loaded.initialized.numpy())
    loaded.forward(_data(shape, seed=7, batch=5) * 9.0, training=True)  # other data, training
    z3, log_det3 = loaded.forward(x, training=True)
    np.testing.assert_array_equal(z3, z)
    np.testing.assert_array_equal(log_det3, log_det)


# -- clear errors (rank, dtype, empty batch, NaN: test_layer_table.py) ----------------------
BAD_INPUT = [
    ("actnorm channels", lambda: built(ActNorm(), (None, 4, 4, 2)).forward(tf.zeros((1, 4, 4, 3))),
     "C = 2"),
    ("conv1x1 channels", lambda: built(Conv1x1(), (None, 4, 4, 2)).inverse(tf.zeros((1, 4, 4, 3))),
     "C = 2"),
    ("coupling odd channels", lambda: AffineCoupling(4).forward(tf.zeros((1, 4, 4, 3))), "even"),
    ("coupling channels", lambda: built(AffineCoupling(4), (None, 4, 4, 2)).forward(
        tf.zeros((1, 4, 4, 4))), "C = 2"),
    ("coupling hidden", lambda: AffineCoupling(0), "hidden_channels"),
    ("coupling hidden float", lambda: AffineCoupling(8.0), "hidden_channels"),
    ("split odd channels", lambda: SplitPrior(4).forward(tf.zeros((1, 4, 4, 5))), "even"),
    ("split channels", lambda: built(SplitPrior(4), (None, 4, 4, 4)).forward(
        tf.zeros((1, 4, 4, 6))), "C = 4"),
    ("split inverse channels", lambda: built(SplitPrior(4), (None, 4, 4, 4)).inverse(
        tf.zeros((1, 4, 4, 4))), "C = 2"),
    ("split merge dropped", lambda: built(SplitPrior(4), (None, 4, 4, 4)).merge(
        tf.zeros((1, 4, 4, 2)), tf.zeros((1, 4, 4, 3))), "dropped"),
    ("split inverse unbuilt", lambda: SplitPrior(4).inverse(tf.zeros((1, 4, 4, 2))), "build"),
    ("split seed", lambda: SplitPrior(4, seed=-1), "seed"),
]


@pytest.mark.parametrize("name,action,message", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_raises_a_clear_value_error(name, action, message):
    with pytest.raises(ValueError, match=message):
        action()


def test_conv1x1_compiles_with_xla_and_its_log_det_gradient_is_w_inverse_transpose():
    rng = np.random.default_rng(0)
    layer = built(Conv1x1(dtype="float64"), (None, 3, 3, 2))
    layer.kernel.assign(rng.standard_normal((1, 1, 2, 2)) + np.eye(2))
    compiled = tf.function(lambda x: layer.forward(x)[1], jit_compile=True)
    w = layer.kernel.numpy()[0, 0]
    np.testing.assert_allclose(compiled(tf.zeros((1, 3, 3, 2), tf.float64)),
                               [9 * np.linalg.slogdet(w)[1]], rtol=1e-12)
    with tf.GradientTape() as tape:
        value = layer.log_abs_det_per_pixel()
    np.testing.assert_allclose(tape.gradient(value, layer.kernel)[0, 0], np.linalg.inv(w).T,
                               rtol=1e-10)
    assert layer.supports_xla


# -- quirks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_actnorm_first_training_batch_gives_zero_mean_unit_variance(mode):
    x = _data((5, 4, 3), seed=9, batch=6)
    layer = ActNorm(dtype="float64")
    layer.build(x.shape)
    assert not bool(layer.initialized.numpy())
    _, identity_log_det = layer.forward(x)  # not training: no init, identity
    np.testing.assert_array_equal(identity_log_det, np.zeros(6))
    assert not bool(layer.initialized.numpy())

    forward = lambda x: layer.forward(x, training=True)  # noqa: E731
    if mode != "eager":
        forward = tf.function(forward, jit_compile=mode == "xla")
    z, log_det = forward(tf.constant(x))
    assert bool(layer.initialized.numpy())
    z = z.numpy()
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-12)
    # the reference uses torch.std: the unbiased (n − 1) standard deviation
    np.testing.assert_allclose(z.std(axis=(0, 1, 2), ddof=1), 1.0, rtol=1e-7)
    np.testing.assert_allclose(layer.bias.numpy(), x.mean(axis=(0, 1, 2)), rtol=1e-12)
    log_std = np.log(x.std(axis=(0, 1, 2), ddof=1) + 1e-8)
    np.testing.assert_allclose(layer.log_scale.numpy(), log_std, rtol=1e-12)
    np.testing.assert_allclose(log_det, np.full(6, -5 * 4 * log_std.sum()), rtol=1e-12)

    before = [w.numpy() for w in layer.weights]
    forward(tf.constant(3.0 * x + 1.0))  # second batch: no re-initialisation
    for old, w in zip(before, layer.weights):
        np.testing.assert_array_equal(old, w.numpy())


def test_actnorm_initialize_forces_a_new_init():
    layer = _ready(CASES["ActNorm"][0], (3, 4, 6))
    x = 2.0 * _data((3, 4, 6), seed=10) - 1.0
    layer.initialize(x)
    z, _ = layer.forward(x)
    np.testing.assert_allclose(z.numpy().mean(axis=(0, 1, 2)), 0.0, atol=1e-12)


def _np_conv_same(x, kernel, bias):
    """'same' conv, stride 1, NHWC/HWIO, by summing shifted copies (independent of tf.nn.conv2d)."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nhwi,io->nhwo", xp[:, i:i + h, j:j + w], kernel[i, j])
    return out + bias


def test_coupling_interleave_matches_numpy_reference():
    layer = _ready(CASES["AffineCoupling"][0], (4, 3, 4), scale=0.2)
    x = _data((4, 3, 4), seed=12, batch=3)
    z, log_det = layer.forward(x)

    w = {v.path.split("/", 1)[1]: v.numpy() for v in layer.weights}
    x1, x2 = x[..., :2], x[..., 2:]
    h = np.maximum(_np_conv_same(x1, w["conv_in/kernel"], w["conv_in/bias"]), 0)
    h = np.maximum(_np_conv_same(h, w["conv_hidden/kernel"], w["conv_hidden/bias"]), 0)
    h = _np_conv_same(h, w["conv_zero/kernel"], w["conv_zero/bias"]) * np.exp(3 * w["zero_logs"])
    log_s = 2 * np.tanh(h[..., 0::2] / 2)   # scale from the even channels
    shift = h[..., 1::2]                    # shift from the odd channels
    np.testing.assert_allclose(z[..., :2], x1, rtol=0, atol=0)
    np.testing.assert_allclose(z[..., 2:], x2 * np.exp(log_s) + shift, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det, log_s.sum(axis=(1, 2, 3)), rtol=1e-12)


def test_coupling_initialisation_is_the_identity_with_torch_default_convs():
    layer = AffineCoupling(hidden_channels=64)
    x = _data((4, 4, 6), seed=13).astype("float32")
    z, log_det = layer.forward(x)
    np.testing.assert_array_equal(z, x)
    np.testing.assert_array_equal(log_det, np.zeros(4))
    assert not np.any(layer.conv_zero.kernel.numpy()) and not np.any(layer.zero_logs.numpy())
    # PyTorch default: U(±1/√fan_in) for kernel and bias
    for conv, fan_in in [(layer.conv_in, 9 * 3), (layer.conv_hidden, 64)]:
        bound = 1 / np.sqrt(fan_in)
        for v in (conv.kernel.numpy(), conv.bias.numpy()):
            assert np.abs(v).max() <= bound and np.abs(v).max() > 0.8 * bound


def test_conv1x1_log_det_is_hw_times_slogdet_and_init_is_orthogonal():
    layer = Conv1x1(dtype="float64")
    layer.build((None, 5, 3, 4))
    w = layer.kernel.numpy()[0, 0]
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-12)
    perturb(layer, 0.5)
    w = layer.kernel.numpy()[0, 0]
    x = _data((5, 3, 4), seed=14, batch=2)
    z, log_det = layer.forward(x)
    np.testing.assert_allclose(log_det, np.full(2, 15 * np.linalg.slogdet(w)[1]), rtol=1e-12)
    np.testing.assert_allclose(z, x @ w, rtol=1e-12, atol=1e-12)  # z = x @ W at every pixel


def test_split_prior_sampling():
    layer = _ready(CASES["SplitPrior"][0], (3, 4, 4))
    assert layer.compute_output_shape((None, 3, 4, 4)) == (None, 3, 4, 2)
    assert SplitPrior.samples_on_inverse
    x = _data((3, 4, 4), seed=15, batch=5)
    kept, dropped, _ = layer.split(x)
    # temperature 0 samples the mode: the same as giving zeros
    np.testing.assert_allclose(layer.inverse(kept, temperature=0.0),
                               layer.merge(kept, np.zeros_like(dropped)), rtol=1e-12)
    a, b = layer.inverse(kept, seed=3), layer.inverse(kept, seed=3)
    np.testing.assert_array_equal(a, b)                       # int seed: reproducible
    assert a.shape == x.shape
    assert not np.allclose(a, layer.inverse(kept, seed=4))
    c, d = layer.inverse(kept), layer.inverse(kept)           # own SeedGenerator: advances
    assert not np.allclose(c, d)
    # the sampled dropped half has std ≈ T (recover it by a forward pass)
    sample = layer.inverse(tf.zeros((200, 3, 4, 2), tf.float64), temperature=0.5, seed=1)
    _, redropped, _ = layer.split(sample)
    assert 0.45 < redropped.numpy().std() < 0.55
    # works in a tf.function with a dynamic batch
    sampler = tf.function(lambda z: layer.inverse(z, seed=7))
    assert sampler(kept).shape == x.shape and sampler(kept[:2]).shape == (2, 3, 4, 4)


# -- Keras training ------------------------------------------------------------------------------
def test_model_fit_trains_a_tiny_glow_step():
    data = _data((4, 4, 4), seed=16, batch=48).astype("float32")
    layers = [ActNorm(), Conv1x1(), AffineCoupling(hidden_channels=8)]
    model = TinyFlow(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)  # QR log-det: XLA ok
    assert model.jit_compile is True
    history = model.fit(data, batch_size=16, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert bool(layers[0].initialized.numpy())
    # initialised from the first batch of 16 (then moved by three epochs of small steps)
    np.testing.assert_allclose(layers[0].bias.numpy(), data[:16].mean(axis=(0, 1, 2)), atol=0.2)


@pytest.mark.slow
def test_actnorm_init_under_mirrored_strategy_uses_the_global_batch():
    """Two logical CPUs (needs a fresh process: devices are fixed once TF is initialised)."""
    script = textwrap.dedent("""
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import sys
        sys.path.insert(0, "tests")
        from conftest import TinyFlow  # the suite's own tiny model over flow layers
        from snf_tf.layers.glow import ActNorm, Conv1x1

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.default_rng(0)
        data = (rng.normal(size=(32, 4, 4, 4)) * [1, 2, 3, 4] + [0, 1, -1, 5]).astype("float32")
        # the second replica's half differs from the first: per-replica statistics would be wrong
        data[8:16] = data[8:16] * 2 + 3
        data[16:] = data[16:] * 5 - 7  # second global batch: must not re-initialise
        with strategy.scope():
            act = ActNorm()
            model = TinyFlow([act, Conv1x1()])
            model.compile(optimizer=keras.optimizers.Adam(0.0), jit_compile=False)
        history = model.fit(data, batch_size=16, epochs=1, verbose=0, shuffle=False)
        assert np.all(np.isfinite(history.history["loss"]))
        assert bool(act.initialized.numpy())
        mean = data[:16].mean((0, 1, 2))
        log_std = np.log(data[:16].std((0, 1, 2), ddof=1) + 1e-8)
        biases = strategy.experimental_local_results(act.bias.value)  # the MirroredVariable
        log_scales = strategy.experimental_local_results(act.log_scale.value)
        assert len(biases) == len(log_scales) == 2
        for bias, log_scale in zip(biases, log_scales):
            np.testing.assert_allclose(bias.numpy(), mean, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(log_scale.numpy(), log_std, rtol=1e-5, atol=1e-5)
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_all_layers_are_flow_layers_with_rank_4():
    for make, _ in CASES.values():
        layer = make()
        assert isinstance(layer, FlowLayer) and layer.input_rank == 4
