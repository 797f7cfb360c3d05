"""Conditional flows p(x | y): FlowModel(num_classes= | context_dim=), the conditional base, and
architectures.glow(num_classes=): the likelihood against an independent computation, where a context
acts, fit / save / load with labels, and bad contexts."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import fresh_process_env

from snf_tf import ConditionalNormal, FlowModel, architectures
from snf_tf import layers as L


def _images(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)).astype("uint8")


def _labels(n=8, seed=0, k=10):
    return np.random.default_rng(seed + 1).integers(0, k, n)


def _small_glow(**kwargs):
    return architectures.glow(steps_per_block=1, hidden_channels=8, seed=0, **kwargs)


def _perturbed(model, x, y, scale=0.05, seed=3):
    """Built, ActNorm initialised, and every weight moved off its init (the zero-initialised
    convs and the conditional base included), so that every path carries signal."""
    model.forward(x, training=True, context=y)
    rng = np.random.default_rng(seed)
    for w in model.trainable_weights:
        w.assign(w.numpy() + scale * rng.standard_normal(w.shape).astype(w.dtype))
    return model


def _numpy_base_log_prob(model, z, labels):
    """log N(z; μ(y), σ(y)²) from the base's weights, in float64 NumPy."""
    one_hot = np.eye(model.num_classes)[labels]
    h = one_hot @ model.base.kernel.numpy().astype(np.float64) + model.base.bias.numpy()
    size = int(np.prod(model.latent_shape))
    mean, log_scale = h[:, :size], h[:, size:]
    z = np.asarray(z, np.float64).reshape(len(z), -1)
    return np.sum(-0.5 * ((z - mean) * np.exp(-log_scale)) ** 2 - log_scale
                  - 0.5 * math.log(2 * math.pi), axis=1)


def test_conditional_log_prob_equals_an_independent_computation():
    x, y = _images(4), _labels(4)
    model = _perturbed(_small_glow(num_classes=10), x, y)
    expected_log_det = np.zeros(4)
    h = tf.convert_to_tensor(x)
    one_hot = tf.one_hot(y, 10)
    for layer in model.flow_layers:  # the walk by hand, with the one-hot context where used
        context = {"context": one_hot} if layer.uses_context else {}
        h, log_det = layer.forward(h, exact=True, noise=False, **context)
        expected_log_det += np.asarray(log_det, np.float64)
    expected = _numpy_base_log_prob(model, h, y) + expected_log_det
    got = model.log_prob(x, context=y, noise=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the conditional base is the TFP distribution it claims to be
    mean, log_scale = model.base.parameters(one_hot)
    import tensorflow_probability as tfp
    tfd = tfp.distributions
    reference = tfd.Independent(tfd.Normal(mean, tf.exp(log_scale)), 3).log_prob(h)
    np.testing.assert_allclose(model.base.log_prob(h, one_hot), reference, rtol=1e-6)


def test_the_label_acts_exactly_where_it_should():
    """Changing y leaves every layer before the first conditional one untouched, changes every
    conditional layer's output or log-det (a SplitPrior's kept half is x's own: only its
    log-density moves), and changes log p(x | y)."""
    x = _images(3)
    model = _perturbed(_small_glow(num_classes=10), x, _labels(3))
    first = next(i for i, layer in enumerate(model.flow_layers) if layer.uses_context)
    outputs = {}
    for label in (2, 7):
        h, context = tf.convert_to_tensor(x), tf.one_hot([label] * 3, 10)
        seen = []
        for layer in model.flow_layers:
            extra = {"context": context} if layer.uses_context else {}
            h, log_det = layer.forward(h, exact=True, noise=False, **extra)
            seen.append((np.asarray(h), np.asarray(log_det)))
        outputs[label] = seen
    for i, ((h2, d2), (h7, d7)) in enumerate(zip(outputs[2], outputs[7])):
        same = np.array_equal(h2, h7) and np.array_equal(d2, d7)
        if i < first or model.flow_layers[i].uses_context:
            assert same == (i < first), f"layer {i} ({model.flow_layers[i].name})"
    lp2 = model.log_prob(x, context=[2, 2, 2], noise=False)
    lp7 = model.log_prob(x, context=[7, 7, 7], noise=False)
    assert np.all(np.abs(np.asarray(lp2) - np.asarray(lp7)) > 1e-3)
    # mixed labels: each example's value is the one of its own label
    mixed = model.log_prob(x, context=[2, 7, 2], noise=False)
    np.testing.assert_allclose(mixed, [lp2[0], lp7[1], lp2[2]], rtol=1e-6)


def test_only_the_base_can_be_conditional():
    x, y = _images(3), _labels(3)
    flow = architectures.preprocessing(seed=0) + [L.Squeeze(), L.ActNorm(), L.SelfNormConv2D(1),
                                           L.AffineCoupling(8)]
    model = _perturbed(FlowModel(flow, num_classes=10), x, y)
    z2, _ = model.forward(x, noise=False, context=[2, 2, 2])
    z7, _ = model.forward(x, noise=False, context=[7, 7, 7])
    np.testing.assert_array_equal(z2, z7)  # no layer takes the context: z is the same
    np.testing.assert_allclose(model.log_prob(x, context=y, noise=False),
                               _numpy_base_log_prob(model, z2, y)
                               + model.forward(x, exact=True, noise=False, context=y)[1],
                               rtol=1e-5)


def test_sample_per_label_and_inverse_round_trip():
    x, y = _images(4), _labels(4)
    model = _perturbed(_small_glow(num_classes=10), x, y)
    a = model.sample(5, context=3, seed=7)
    b = model.sample(5, context=[3] * 5, seed=7)
    np.testing.assert_array_equal(a, b)
    c = model.sample(5, context=4, seed=7)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    z, _ = model.forward(x, noise=False, context=y)
    back = model.inverse(z, exact=True, context=y, temperature=0.0)
    # the SplitPrior's dropped half is re-drawn at T = 0, so compare the kept path: forward again
    np.testing.assert_allclose(model.forward(back, noise=False, context=y)[0], z, atol=2e-3)


@pytest.mark.slow
def test_fit_save_load_and_evaluate_with_labels(tmp_path):
    x, y = _images(32), _labels(32)
    model = _small_glow(num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert np.abs(model.base.kernel.numpy()).max() > 0  # the per-class prior trained
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.fit(dataset, epochs=1, verbose=0, validation_data=dataset)
    result = model.evaluate(dataset, verbose=0, return_dict=True)
    path = str(tmp_path / "conditional.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.num_classes == 10 and isinstance(loaded.base, ConditionalNormal)
    for m in (model, loaded):
        m.refresh_log_dets()
    np.testing.assert_allclose(loaded.log_prob(x[:4], context=y[:4], seed=1),
                               model.log_prob(x[:4], context=y[:4], seed=1), rtol=1e-6)
    np.testing.assert_allclose(loaded.sample(3, context=5, seed=2),
                               model.sample(3, context=5, seed=2), rtol=1e-5, atol=1e-3)
    again = loaded.evaluate(dataset, verbose=0, return_dict=True)
    assert abs(again["nll"] - result["nll"]) < 5.0  # one dequantization sample each


@pytest.mark.slow
def test_real_valued_context_fc_flow_trains_under_xla():
    rng = np.random.default_rng(0)
    context = rng.standard_normal((64, 3)).astype("float32")
    x = (context @ rng.standard_normal((3, 6)) + 0.1 * rng.standard_normal((64, 6)))
    x = x.astype("float32")
    flow = [L.SelfNormDense(), L.RealNVPCoupling((16,), context_dim=3),
            L.SelfNormDense(), L.RealNVPCoupling((16,), reverse=True, context_dim=3)]
    model = FlowModel(flow, context_dim=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    before = float(-tf.reduce_mean(model.log_prob(x, context=context)))
    model.fit(x, context, batch_size=16, epochs=30, verbose=0)
    after = float(-tf.reduce_mean(model.log_prob(x, context=context)))
    assert after < before - 3.0, (before, after)  # it learned x's dependence on the context
    shuffled = float(-tf.reduce_mean(model.log_prob(x, context=context[::-1].copy())))
    assert shuffled > after + 1.0  # and the right context explains x better than a wrong one


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: m.log_prob(x), "is conditional and needs context"),
    (lambda m, x, y: m.log_prob(x, context=np.array([0, 1, 2, 10])), r"out of range.*\[10\]"),
    (lambda m, x, y: m.log_prob(x, context=np.array([0, -1, 2, 3])), "out of range"),
    (lambda m, x, y: m.log_prob(x, context=y[:3]), "3 context rows for 4 examples"),
    (lambda m, x, y: m.log_prob(x, context=y.astype("float32")), "labels must be integers"),
    (lambda m, x, y: m.log_prob(x, context=y[:, None, None]), r"shape \[batch\]"),
    (lambda m, x, y: m.sample(4, context=[1, 2]), "2 context rows for 4 examples"),
    (lambda m, x, y: m.sample(2), "needs context"),
    (lambda m, x, y: m.inverse(np.zeros((4,) + m.latent_shape, "float32")), "needs context"),
    (lambda m, x, y: m.fit(x, batch_size=2, epochs=1, verbose=0), "give the contexts too"),
    (lambda m, x, y: m.fit(x, np.array([0, 1, 2, 12]), batch_size=2, epochs=1, verbose=0),
     r"FlowModel.fit: .*out of range.*\[12\]"),
    (lambda m, x, y: m.fit(tf.data.Dataset.from_tensor_slices(x).batch(2), epochs=1,
                           verbose=0), r"must yield \(x, y\) pairs"),
    (lambda m, x, y: m.fit(tf.data.Dataset.from_tensor_slices((x, np.array([0, 1, 2, 12])))
                           .batch(2), epochs=1, verbose=0), r"batch 2 of the data.*\[12\]"),
    (lambda m, x, y: m.evaluate(x, np.array([0, 1, 2, 99]), verbose=0), "out of range"),
])
def test_bad_contexts_are_refused_before_anything_trains(call, message):
    x, y = _images(4), _labels(4)
    model = _small_glow(num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.build((None, 28, 28, 1))
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match=message):
        call(model, x, y)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)  # nothing trained


def test_contexts_for_unconditional_models_and_mismatched_layers_are_refused():
    x = _images(2)
    plain = _small_glow()
    with pytest.raises(ValueError, match="unconditional and takes no context"):
        plain.log_prob(x, context=[1, 2])
    with pytest.raises(ValueError, match="is conditional .* give the model num_classes"):
        FlowModel([L.AffineCoupling(4, context_dim=10)])
    with pytest.raises(ValueError, match="width 3, the model gives 10"):
        FlowModel([L.AffineCoupling(4, context_dim=3)], num_classes=10)
    with pytest.raises(ValueError, match="not both"):
        FlowModel([L.ActNorm()], num_classes=10, context_dim=3)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        FlowModel([L.ActNorm()], num_classes=0)
    vectors = FlowModel([L.Flatten(), L.RealNVPCoupling((8,), context_dim=3)], context_dim=3)
    vectors.build((None, 2, 3))
    with pytest.raises(ValueError, match=r"shape \[batch, 3\]"):
        vectors.log_prob(np.zeros((2, 2, 3), "float32"), context=np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="must be float vectors"):
        vectors.log_prob(np.zeros((2, 2, 3), "float32"), context=np.zeros((2, 3), "int32"))
    with pytest.raises(ValueError, match="non-finite"):
        vectors.log_prob(np.zeros((2, 2, 3), "float32"),
                         context=np.array([[0, 0, np.nan], [0, 0, 0]], "float32"))


def test_unconditional_checkpoints_keep_their_config():
    """An unconditional model's and layer's config has no context keys, as files of earlier
    versions (the checkpoint fixtures load through the same from_config)."""
    model = _small_glow()
    assert "num_classes" not in model.get_config()
    coupling = next(layer for layer in model.flow_layers if isinstance(layer, L.AffineCoupling))
    assert "context_dim" not in coupling.get_config()


def test_tfp_distribution_of_a_conditional_model():
    x, y = _images(3), _labels(3)
    model = _perturbed(_small_glow(num_classes=10), x, y)
    model.refresh_log_dets()
    for layer in model.flow_layers:  # no dequantization noise on either side: equal values
        if isinstance(layer, L.Dequantize):
            layer.always = False
    dist = model.as_distribution(context=y)
    assert tuple(dist.batch_shape) == (3,) and tuple(dist.event_shape) == (28, 28, 1)
    pixels = tf.cast(x, tf.float32) + 0.5
    np.testing.assert_allclose(dist.log_prob(pixels), model.log_prob(pixels, context=y),
                               rtol=1e-5)
    samples = dist.sample(2, seed=(1, 2))
    assert tuple(samples.shape) == (2, 3, 28, 28, 1)
    one = model.as_distribution(context=7)
    assert tuple(one.batch_shape) == () and tuple(one.sample(4, seed=(3, 4)).shape) == \
        (4, 28, 28, 1)
    with pytest.raises(ValueError, match="needs context"):
        model.as_distribution()
    plain = _small_glow()
    plain.build((None, 28, 28, 1))
    with pytest.raises(ValueError, match="takes no context"):
        plain.as_distribution(context=[1])


_FRESH = """
import json, sys

class _BlockSnfTf:
    def find_spec(self, name, path=None, target=None):
        if name == "snf_tf" or name.startswith("snf_tf."):
            raise ImportError("snf_tf is blocked in this process")
        return None

sys.meta_path.insert(0, _BlockSnfTf())
import numpy as np
import tensorflow as tf

job = json.loads(sys.argv[1])
sm = tf.saved_model.load(job["path"])
x, y = np.load(job["x"]), np.array(job["y"], np.int32)
f = sm.forward(x, y)
out = {"log_prob": sm.log_prob(x, y).numpy().tolist(),
       "other_label": sm.log_prob(x, (y + 1) % 10).numpy().tolist(),
       "dequantized": sm.dequantized_log_prob(x=np.floor(x), y=y, seed=7).numpy().tolist(),
       "inverse": sm.inverse(f["z"], y).numpy().tolist(),
       "sample": sm.sample(n=3, y=tf.constant([4], tf.int32), seed=5).numpy().tolist()}
try:
    sm.log_prob(x, np.array([0, 1, 99], np.int32))
    out["range"] = "no error"
except tf.errors.InvalidArgumentError as error:
    out["range"] = "out of range" if "label is out of range" in str(error) else str(error)
assert not any(m == "snf_tf" or m.startswith("snf_tf.") for m in sys.modules)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_saved_model_takes_labels_in_a_process_without_snf_tf(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from snf_tf import export

    x, y = _images(3), _labels(3)
    model = _perturbed(_small_glow(num_classes=10), x, y)
    path = export.export_saved_model(model, str(tmp_path / "sm"))
    pixels = x.astype("float32") + 0.5
    np.save(tmp_path / "x.npy", pixels)
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    env = fresh_process_env()
    job = {"path": os.path.abspath(path), "x": str(tmp_path / "x.npy"), "y": y.tolist()}
    result = subprocess.run([sys.executable, "-I", str(script), json.dumps(job)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["log_prob"], export.log_prob(model, pixels, y), rtol=1e-5)
    np.testing.assert_allclose(got["other_label"], export.log_prob(model, pixels, (y + 1) % 10),
                               rtol=1e-5)
    assert np.all(np.abs(np.subtract(got["log_prob"], got["other_label"])) > 1e-3)
    np.testing.assert_allclose(got["dequantized"],
                               export.dequantized_log_prob(model, np.floor(pixels), 7, y),
                               rtol=1e-5)
    z, _ = export.forward(model, pixels, context=y)
    np.testing.assert_allclose(got["inverse"], export.inverse(model, z, y), atol=1e-3)
    np.testing.assert_allclose(got["sample"], model.sample(3, context=4, seed=5), atol=1e-3)
    assert got["range"] == "out of range"


def test_class_log_probs_and_generative_classification():
    x, y = _images(4), _labels(4)
    model = _perturbed(_small_glow(num_classes=10), x, y, scale=0.2)
    scores = model.class_log_probs(x, seed=3).numpy()
    assert scores.shape == (4, 10)
    for k in (0, 7):
        np.testing.assert_allclose(scores[:, k], model.log_prob(x, seed=3, context=[k] * 4),
                                   rtol=1e-6)
    assert np.ptp(scores, axis=1).min() > 1e-3  # the classes are told apart
    marginal = model.marginal_log_prob(x, seed=3).numpy()
    reference = np.log(np.mean(np.exp(scores.astype(np.float64) - scores.max(1, keepdims=True)),
                               axis=1)) + scores.max(1)
    np.testing.assert_allclose(marginal, reference, rtol=1e-6)
    with pytest.raises(ValueError, match="not class-conditional"):
        _small_glow().class_log_probs(x)


@pytest.mark.parametrize("build", [lambda: architectures.fc_flow(num_classes=10, seed=0),
                                   lambda: architectures.conv_flow(num_blocks=2, convs_per_block=1,
                                                            num_classes=10, seed=0)])
def test_fc_and_conv_flows_are_conditional_through_their_base(build):
    x, y = _images(3), _labels(3)
    model = _perturbed(build(), x, y, scale=0.01)
    z, log_det = model.forward(x, exact=True, noise=False, context=y)
    z_other, _ = model.forward(x, exact=True, noise=False, context=(y + 1) % 10)
    np.testing.assert_array_equal(z, z_other)  # the map does not see the label
    np.testing.assert_allclose(model.log_prob(x, noise=False, context=y),
                               _numpy_base_log_prob(model, z, y) + np.asarray(log_det),
                               rtol=1e-5)


def test_a_traced_call_with_an_unknown_batch_pairs_and_checks_context_rows():
    """Keras traces with the batch dimension unknown: the context's rows are then checked
    against the data's batch at run time (not against another dimension of x)."""
    model = FlowModel([L.SelfNormDense(), L.SmoothLeakyReLU(), L.SelfNormDense()],
                      context_dim=3)
    rng = np.random.default_rng(6)
    x, c = rng.standard_normal((5, 4)).astype("float32"), rng.standard_normal((5, 3))
    model.forward(x, training=True, context=c.astype("float32"))
    traced = tf.function(lambda x, c: model.log_prob(x, context=c), input_signature=[
        tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 3], tf.float32)])
    np.testing.assert_allclose(traced(x, c.astype("float32")),
                               model.log_prob(x, context=c.astype("float32")), rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="the context.*batch differs"):
        traced(x, c[:4].astype("float32"))
