"""TFP views of flow layers and models (snf_tf.bijectors, issue 5)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import snf_tf  # noqa: E402
import snf_tf.layers as L  # noqa: E402
from snf_tf import bijectors as B  # noqa: E402
from tests.test_layer_table import CASES, _built, _ctx, _inputs  # noqa: E402

tfb = tfp.bijectors
tfd = tfp.distributions

VIEW_CASES = [c for c in CASES if c.square_jacobian]
VIEW_IDS = [c.name for c in VIEW_CASES]


def _close(a, b, tol=1e-9):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# -- 1. every layer of the table ---------------------------------------------------------------
@pytest.mark.parametrize("exact", [False, True], ids=["cheap", "exact"])
@pytest.mark.parametrize("case", VIEW_CASES, ids=VIEW_IDS)
def test_view_matches_layer(case, exact):
    layer = _built(case)
    x = tf.constant(_inputs(case, 3, seed=11))
    c = _ctx(case, x)  # conditional layers: the view holds the context of these 3 examples
    view = B.FlowBijector(layer, exact=exact, **c)
    assert isinstance(view, B.FlowBijector) and isinstance(view, tfb.Bijector)
    assert view.layer is layer and view.name == f"{layer.name}_bijector"
    z, log_det = layer.forward(x, exact=exact, **c)
    out_shape = tuple(layer.compute_output_shape((None,) + case.shape))[1:]
    assert view.inverse_min_event_ndims == len(case.shape)
    assert view.forward_min_event_ndims == len(out_shape)
    assert tuple(view.inverse_event_shape(case.shape)) == out_shape
    assert tuple(view.forward_event_shape(out_shape)) == case.shape
    _close(view.inverse(x), z, 0)
    _close(view.inverse_log_det_jacobian(x, event_ndims=view.inverse_min_event_ndims), log_det, 0)
    _close(view.forward(z), layer.inverse(z, exact=exact, **c), 0)
    # forward log-det = −ILDJ at the point the view maps z to
    x_back = layer.inverse(z, exact=exact, **c)
    _close(view.forward_log_det_jacobian(z, event_ndims=view.forward_min_event_ndims),
           -layer.forward(x_back, exact=exact, **c)[1], 1e-12)
    if exact:  # the true bijection: −FLDJ(z) = ILDJ(x)
        _close(-view.forward_log_det_jacobian(z, event_ndims=view.forward_min_event_ndims),
               log_det, 1e-6)


def test_constant_jacobian_flags():
    flags = {c.name: B.FlowBijector(_built(c), **_ctx(c, np.zeros(2))).is_constant_jacobian
             for c in VIEW_CASES}
    for name in ("SelfNormDense", "SelfNormConv2D-3x3", "ActNorm", "Conv1x1", "Squeeze", "Flatten",
                 "Normalize", "EmergingConv2D", "ConvExponential"):
        assert flags[name], name
    for name in ("AffineCoupling", "Logit", "SmoothLeakyReLU", "SplineActivation"):
        assert not flags[name], name


def test_split_prior_has_no_bijector_view():
    case = next(c for c in CASES if c.name == "SplitPrior")
    with pytest.raises(ValueError, match="not a bijection"):
        B.FlowBijector(_built(case))


def test_unbuilt_layer_is_rejected():
    with pytest.raises(ValueError, match="build the layer"):
        B.FlowBijector(L.SelfNormDense())


def test_view_accepts_extra_batch_axes_and_no_batch():
    case = next(c for c in CASES if c.name == "SelfNormConv2D-3x3")
    layer = _built(case)
    view = B.FlowBijector(layer, exact=True)
    x = tf.constant(_inputs(case, 6, seed=3))
    z, log_det = layer.forward(x, exact=True)
    x23 = tf.reshape(x, (2, 3) + case.shape)
    _close(view.inverse(x23), tf.reshape(z, (2, 3) + case.shape), 1e-12)
    _close(view.inverse_log_det_jacobian(x23, event_ndims=3), tf.reshape(log_det, (2, 3)), 1e-12)
    _close(view.inverse_log_det_jacobian(x23, event_ndims=4), tf.reduce_sum(
        tf.reshape(log_det, (2, 3)), axis=-1), 1e-10)
    _close(view.inverse(x[0]), z[0], 1e-12)
    _close(view.forward(z[0]), layer.inverse(z[:1], exact=True)[0], 1e-12)


# -- models ------------------------------------------------------------------------------------
def _perturb_inverses(model, scale=0.05, seed=5):
    rng = np.random.default_rng(seed)
    for layer in model.flow_layers:
        if getattr(layer, "learns_inverse", False):
            layer.inverse_kernel.assign(layer.inverse_kernel.numpy()
                                        + scale * rng.standard_normal(layer.inverse_kernel.shape))


def _fc_model(gradient="self_normalized"):
    model = snf_tf.FlowModel([
        L.Flatten(dtype="float64"),
        L.SelfNormDense(gradient=gradient, dtype="float64"),
        L.SmoothLeakyReLU(dtype="float64"),
        L.SelfNormDense(gradient=gradient, dtype="float64"),
    ], dtype="float64")
    x = np.random.default_rng(0).standard_normal((8, 2, 3, 1))
    model.forward(x, training=True)
    rng = np.random.default_rng(1)
    for layer in model.flow_layers:
        if hasattr(layer, "kernel"):
            noise = 0.2 * rng.standard_normal(layer.kernel.shape)
            layer.kernel.assign(layer.kernel.numpy() + noise)
    _perturb_inverses(model)
    return model, tf.constant(x)


def _conv_model(split=False, gradient="self_normalized"):
    flow = [L.ActNorm(dtype="float64"), L.SelfNormConv2D(3, gradient=gradient, dtype="float64"),
            L.LearnableLeakyReLU(dtype="float64"), L.Squeeze(dtype="float64"),
            L.SelfNormConv2D(1, gradient=gradient, dtype="float64")]
    if split:
        flow += [L.SplitPrior(hidden_channels=4, seed=1, dtype="float64"),
                 L.SelfNormConv2D(3, dtype="float64")]
    model = snf_tf.FlowModel(flow, dtype="float64")
    x = np.random.default_rng(2).standard_normal((4, 4, 4, 2))
    model.forward(x, training=True)  # ActNorm's data-dependent init
    rng = np.random.default_rng(3)
    for w in model.trainable_weights:
        if "inverse_kernel" not in w.path:
            w.assign(w.numpy() + 0.05 * rng.standard_normal(w.shape))
    _perturb_inverses(model, 0.02)
    return model, tf.constant(x)


MODELS = {"fc": _fc_model, "conv": _conv_model, "conv-split": lambda: _conv_model(split=True)}


# -- 2. gradients ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fc", "conv"])
def test_cheap_gradients_equal_training_gradients(name):
    model, x = MODELS[name]()
    dist = model.as_distribution(exact=False)
    weights = model.trainable_weights
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x))
    ours = tape.gradient(loss, weights)
    with tf.GradientTape() as tape:  # FlowModel.train_step's NLL part
        z, log_det = model.forward(x, exact=False)
        nll = -tf.reduce_mean(model.base_log_prob(z) + log_det)
    reference = tape.gradient(nll, weights)
    _close(loss, nll, 1e-12)
    assert len(weights) > 5
    for w, g, r in zip(weights, ours, reference):
        assert g is not None, w.path
        _close(tf.convert_to_tensor(g), tf.convert_to_tensor(r), 1e-10)
    # the cheap path really is the surrogate: value 0 for the SNF log-dets
    assert np.abs(dist.log_prob(x) - model.log_prob(x, exact=True)).max() > 1e-3


def test_exact_gradients_equal_autodiff_of_exact_likelihood():
    model, x = _fc_model(gradient="exact")
    dist = model.as_distribution(exact=True)
    weights = model.trainable_weights
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x))
    ours = tape.gradient(loss, weights)
    _, dense1, act, dense2 = model.flow_layers
    with tf.GradientTape() as tape:  # independent: plain matmuls + slogdet
        h = tf.reshape(x, [-1, 6]) @ dense1.kernel + dense1.bias
        h, act_log_det = act.forward(h, exact=True)
        z = h @ dense2.kernel + dense2.bias
        log_p = (-0.5 * tf.reduce_sum(z * z, -1) - 3 * np.log(2 * np.pi) + act_log_det
                 + tf.linalg.slogdet(dense1.kernel)[1] + tf.linalg.slogdet(dense2.kernel)[1])
        reference_loss = -tf.reduce_mean(log_p)
    reference = tape.gradient(reference_loss, weights)
    _close(loss, reference_loss, 1e-12)
    for _w, g, r in zip(weights, ours, reference):
        _close(tf.convert_to_tensor(g), tf.convert_to_tensor(r), 1e-10)


def test_exact_conv_gradients_equal_model_autodiff():
    model, x = _conv_model(gradient="exact")
    weights = model.trainable_weights
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(model.as_distribution(exact=True).log_prob(x))
    ours = tape.gradient(loss, weights)
    with tf.GradientTape() as tape:
        reference_loss = -tf.reduce_mean(model.log_prob(x, exact=True))
    for g, r in zip(ours, tape.gradient(reference_loss, weights)):
        _close(tf.convert_to_tensor(g), tf.convert_to_tensor(r), 1e-10)


# -- 3. distributions --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_distribution_log_prob_equals_model(name):
    model, x = MODELS[name]()
    dist = model.as_distribution(exact=True)
    assert isinstance(dist, tfd.Distribution) and isinstance(dist, B.FlowDistribution)
    assert tuple(dist.event_shape) == model.data_shape
    _close(dist.log_prob(x), model.log_prob(x, exact=True), 1e-10)
    _close(model.as_distribution(exact=False).log_prob(x), model.log_prob(x, exact=False), 1e-10)
    samples = dist.sample(3, seed=4)
    assert samples.shape == (3,) + model.data_shape
    _close(dist.log_prob(samples), model.log_prob(samples, exact=True), 1e-9)
    y, log_p = dist.experimental_sample_and_log_prob(2, seed=6)
    _close(log_p, model.log_prob(y, exact=True), 1e-9)


@pytest.mark.parametrize("name", ["fc", "conv"])
def test_sample_goes_through_learned_inverse(name):
    model, _ = MODELS[name]()
    dist = model.as_distribution(exact=True)
    samples = dist.sample(4, seed=(1, 7))
    z = dist.distribution.sample(4, seed=(1, 7))
    _close(samples, model.inverse(z), 1e-12)
    assert np.abs(samples - model.inverse(z, exact=True)).max() > 1e-6
    _close(model.as_bijector(exact_inverse=True).forward(z), model.inverse(z, exact=True), 1e-12)


def test_split_prior_in_model_views():
    model, x = _conv_model(split=True)
    bijector = model.as_bijector(exact=True)
    z = bijector.inverse(x)
    _close(z, model.forward(x)[0], 0)
    assert z.shape[1:] == model.latent_shape
    assert bijector.forward(z).shape == x.shape
    with pytest.raises(NotImplementedError, match="SplitPrior"):
        bijector.forward_log_det_jacobian(z, event_ndims=3)


# -- 4. the TFP cache never hides the learned inverse ----------------------------------------
def test_log_prob_of_samples_recomputes_through_w():
    model, _ = _fc_model()
    dist = model.as_distribution(exact=True)
    z = dist.distribution.sample(5, seed=(1, 8))
    samples = dist.sample(5, seed=(1, 8))
    log_p = dist.log_prob(samples)
    _close(log_p, model.log_prob(samples, exact=True), 1e-10)
    # what a cached inverse would give: the sampled z and the log-det along the R path
    naive = dist.distribution.log_prob(z) - dist.bijector.forward_log_det_jacobian(z, 1)
    assert np.abs(log_p - naive).min() > 1e-6
    round_trip = dist.bijector.inverse(samples)
    assert np.abs(round_trip - z).max() > 1e-6
    _close(round_trip, model.forward(samples)[0], 0)
    view = B.FlowBijector(model.flow_layers[1])
    h = tf.constant(np.random.default_rng(9).standard_normal((3, 6)))
    assert np.abs(view.inverse(view.forward(h)) - h).max() > 1e-6


def test_weight_update_is_visible_with_a_reused_input():
    model, x = _fc_model()
    dist = model.as_distribution(exact=True)
    view = B.FlowBijector(model.flow_layers[1])
    h = tf.constant(np.random.default_rng(10).standard_normal((3, 6)))
    before, forward_before, inverse_before = dist.log_prob(x), view.forward(h), view.inverse(h)
    dense = model.flow_layers[1]
    dense.kernel.assign(dense.kernel * 1.1)
    dense.inverse_kernel.assign(dense.inverse_kernel * 0.9)
    after = dist.log_prob(x)
    _close(after, model.log_prob(x, exact=True), 1e-10)
    assert np.abs(after - before).min() > 1e-6
    _close(view.forward(h), dense.inverse(h), 0)
    _close(view.inverse(h), dense.forward(h)[0], 0)
    assert np.abs(view.forward(h) - forward_before).min() > 1e-8
    assert np.abs(view.inverse(h) - inverse_before).min() > 1e-8


# -- 5. tf.function and XLA --------------------------------------------------------------------
def test_tf_function_and_xla():
    model, x = _fc_model()
    cheap, exact = model.as_distribution(exact=False), model.as_distribution(exact=True)
    eager_cheap, eager_exact = cheap.log_prob(x), exact.log_prob(x)
    _close(tf.function(cheap.log_prob)(x), eager_cheap, 1e-10)
    _close(tf.function(exact.log_prob)(x), eager_exact, 1e-10)

    @tf.function(jit_compile=True)
    def cheap_loss_and_grads(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(cheap.log_prob(x))
        return loss, tape.gradient(loss, model.trainable_weights)

    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(cheap.log_prob(x))
    grads = tape.gradient(loss, model.trainable_weights)
    jit_loss, jit_grads = cheap_loss_and_grads(x)
    _close(jit_loss, loss, 1e-10)
    for g, j in zip(grads, jit_grads):
        _close(tf.convert_to_tensor(j), tf.convert_to_tensor(g), 1e-10)
    model.refresh_log_dets()  # slogdet has no XLA kernel: compiled evaluation reads the caches
    _close(tf.function(exact.log_prob, jit_compile=True)(x), eager_exact, 1e-10)
    z = exact.distribution.sample(3, seed=1)
    _close(tf.function(exact.bijector.forward, jit_compile=True)(z), model.inverse(z), 1e-10)


# -- composition with stock TFP ----------------------------------------------------------------
def _dense(seed):
    layer = L.SelfNormDense(dtype="float64")
    layer.build((None, 4))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(np.eye(4) + 0.3 * rng.standard_normal((4, 4)))
    layer.bias.assign(0.1 * rng.standard_normal(4))
    layer.inverse_kernel.assign(np.linalg.inv(layer.kernel.numpy())
                                + 0.02 * rng.standard_normal((4, 4)))
    return layer


def _normal_log_prob(z):
    return -0.5 * tf.reduce_sum(z * z, -1) - 2 * np.log(2 * np.pi)


def test_chain_with_shift_scale_sigmoid():
    first, second = _dense(1), _dense(2)
    shift, scale = tf.constant([0.1, -0.2, 0.3, 0.0], tf.float64), tf.constant(1.7, tf.float64)
    views = [B.FlowBijector(layer, exact=True, exact_inverse=False) for layer in (first, second)]
    chain = B.Chain([tfb.Sigmoid(), views[0], tfb.Shift(shift), tfb.Scale(scale), views[1]])
    dist = B.FlowDistribution(tfd.Sample(tfd.Normal(tf.constant(0.0, tf.float64), 1.0), [4]),
                              chain)
    y = tf.constant(np.random.default_rng(3).uniform(0.05, 0.95, (5, 4)))
    h = tf.math.log(y) - tf.math.log1p(-y)
    h, ld1 = first.forward(h, exact=True)
    h, ld2 = second.forward((h - shift) / scale, exact=True)
    expected = (_normal_log_prob(h) - tf.reduce_sum(tf.math.log(y * (1 - y)), -1) + ld1
                - 4 * tf.math.log(scale) + ld2)
    _close(dist.log_prob(y), expected, 1e-10)
    samples = dist.sample(4, seed=(1, 2))
    assert np.all((samples > 0) & (samples < 1))
    z = dist.distribution.sample(4, seed=(1, 2))
    _close(samples, tf.sigmoid(first.inverse(second.inverse(z) * scale + shift)), 1e-12)
    _close(dist.log_prob(samples), tf.reshape(
        [dist.log_prob(samples[i:i + 1])[0] for i in range(4)], [4]), 1e-12)


def test_real_nvp_plain_function_with_views():
    rng = np.random.default_rng(4)
    a, b = tf.constant(rng.standard_normal((2, 2))), tf.constant(rng.standard_normal((2, 2)))

    def shift_and_log_scale(x, units):
        return tf.sin(x) @ a, tf.tanh(x @ b)

    first, second = _dense(5), _dense(6)
    real_nvp = tfb.RealNVP(num_masked=2, shift_and_log_scale_fn=shift_and_log_scale)
    chain = B.Chain([B.FlowBijector(first, exact=True), real_nvp,
                     B.FlowBijector(second, exact=True)])
    dist = B.FlowDistribution(tfd.Sample(tfd.Normal(tf.constant(0.0, tf.float64), 1.0), [4]),
                              chain)
    x = tf.constant(rng.standard_normal((6, 4)))
    h, ld1 = first.forward(x, exact=True)
    kept, rest = h[:, :2], h[:, 2:]
    shift, log_scale = shift_and_log_scale(kept, 2)
    h = tf.concat([kept, (rest - shift) * tf.exp(-log_scale)], -1)
    z, ld2 = second.forward(h, exact=True)
    expected = _normal_log_prob(z) + ld1 - tf.reduce_sum(log_scale, -1) + ld2
    _close(dist.log_prob(x), expected, 1e-10)
    _close(dist.log_prob(dist.sample(3, seed=1)).shape, [3], 0)


# -- a stock TFP RealNVP trained inside a FlowModel ---------------------------------------------
def test_real_nvp_coupling_layer_trains_in_flow_model(tmp_path):
    model = snf_tf.FlowModel([B.RealNVPCoupling(hidden_units=(16,), dtype="float64"),
                              L.SelfNormDense(dtype="float64"),
                              B.RealNVPCoupling(hidden_units=(16,), reverse=True, dtype="float64")],
                             dtype="float64")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((256, 4)) * [1.0, 0.5, 2.0, 1.0]
    data[:, 2] += np.sin(2 * data[:, 0])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(data, batch_size=64, epochs=4, verbose=0, shuffle=False)
    losses = history.history["nll"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    coupling_weights = [w for w in model.trainable_weights if "coupling" in w.path]
    assert len(coupling_weights) == 8
    changed = [np.abs(w.numpy() - b).max() > 0 for w, b in zip(model.trainable_weights, before)]
    assert all(changed)
    # log-det of the coupling = slogdet of its autodiff Jacobian; exact round trip
    layer = model.flow_layers[0]
    x = tf.constant(data[:3])
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x)
    _close(log_det, np.linalg.slogdet(tape.batch_jacobian(z, x).numpy())[1], 1e-10)
    _close(layer.inverse(z), x, 1e-10)
    # a .keras round trip keeps it
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    _close(loaded.log_prob(x), model.log_prob(x), 1e-10)
