"""Public numbers that had no check against an independent reference (the registry
``tests/reference_checks.py``): each against NumPy computed from the weights."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import conv_matrix, perturb

from snf_tf import FlowModel, callbacks, data
from snf_tf import layers as L

LOG_2PI = math.log(2 * math.pi)


def _numpy_same_conv(x, kernel):
    """'same' cross-correlation, stride 1, NHWC × HWIO, by explicit sums (no TensorFlow)."""
    k = kernel.shape[0]
    p = k // 2
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[3],))
    for a in range(k):
        for b in range(k):
            window = padded[:, a:a + x.shape[1], b:b + x.shape[2], :]
            out += np.einsum("nhwc,co->nhwo", window, kernel[a, b])
    return out


def test_toeplitz_matrix_is_the_matrix_of_the_convolution():
    layer = L.SelfNormConv2D(3, dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 2))
    layer.forward(x)
    perturb(layer, 0.3)
    kernel = layer.kernel.numpy()
    t = layer.toeplitz_matrix().numpy()
    np.testing.assert_allclose(t, conv_matrix(tf.constant(kernel), 4, 5).numpy(), atol=1e-14)
    # vec(conv(x)) = vec(x) @ T, with the convolution summed by hand
    np.testing.assert_allclose(x.reshape(3, -1) @ t,
                               _numpy_same_conv(x, kernel).reshape(3, -1), atol=1e-12)
    assert layer.toeplitz_size == 4 * 5 * 2


def _numpy_coupling(layer, x, context=None):
    """The affine coupling of a RealNVPCoupling from its Dense weights: the normalizing
    direction (z, log-det) and the generative one (x from z) of the unreversed layout."""
    d = layer.num_masked
    h = x[:, :d] if context is None else np.concatenate([x[:, :d], context], axis=1)
    for dense in layer.hidden:
        h = np.maximum(h @ dense.kernel.numpy() + dense.bias.numpy(), 0.0)
    out = h @ layer.out.kernel.numpy() + layer.out.bias.numpy()
    shift, log_scale = np.split(out, 2, axis=1)
    log_scale = np.tanh(log_scale)
    z = np.concatenate([x[:, :d], (x[:, d:] - shift) * np.exp(-log_scale)], axis=1)
    return z, -log_scale.sum(axis=1), shift, log_scale


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("conditional", [False, True])
def test_realnvp_bijector_is_the_affine_coupling_of_the_layer_weights(reverse, conditional):
    context_dim = 3 if conditional else None
    layer = L.RealNVPCoupling((8,), reverse=reverse, context_dim=context_dim, dtype="float64")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6))
    c = rng.standard_normal((5, 3)) if conditional else None
    extra = {"context": c} if conditional else {}
    layer.forward(x, **extra)
    perturb(layer, 0.3)
    flip = (lambda v: v[:, ::-1]) if reverse else (lambda v: v)
    z_ref, log_det_ref, _, _ = _numpy_coupling(layer, flip(x), c)
    z_ref = flip(z_ref)
    bijector, kwargs = layer.bijector(), {}
    if conditional:  # the RealNVP's conditional_input; through a Chain, keyed by its name
        kwargs = ({bijector.bijectors[1].name: {"conditional_input": c}} if reverse
                  else {"conditional_input": c})
    np.testing.assert_allclose(bijector.inverse(x, **kwargs), z_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bijector.forward(z_ref, **kwargs), x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bijector.inverse_log_det_jacobian(x, event_ndims=1, **kwargs),
                               log_det_ref, rtol=1e-12, atol=1e-12)
    z, log_det = layer.forward(x, **extra)  # the layer is the same map
    np.testing.assert_allclose(z, z_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det, log_det_ref, rtol=1e-12, atol=1e-12)


def _dense_model(weights=(0.7, 1.3), n=16, data_seed=2, scale=0.2, perturb_seed=5):
    """SNF dense → Smooth Leaky ReLU → SNF dense in float64 on 3-D data, weights perturbed."""
    keras.utils.set_random_seed(0)
    model = FlowModel([L.SelfNormDense(reconstruction_weight=weights[0], dtype="float64"),
                       L.SmoothLeakyReLU(dtype="float64"),
                       L.SelfNormDense(reconstruction_weight=weights[1], dtype="float64")],
                      dtype="float64")
    x = np.random.default_rng(data_seed).standard_normal((n, 3))
    model(x[:2])
    for layer in model.flow_layers:
        perturb(layer, scale, seed=perturb_seed)
    return model, x


def _numpy_walk(model, x):
    """(z, the activation's log-det, Σ λ·reconstruction, Σ log|det W|) of the dense model from
    its weights in NumPy (the activation from its layer: the layer table checks it)."""
    first, activation, last = model.flow_layers
    recon, log_abs_det, h = 0.0, 0.0, x
    for layer in (first, last):
        k, b, r = layer.kernel.numpy(), layer.bias.numpy(), layer.inverse_kernel.numpy()
        recon += float(layer.reconstruction_weight.numpy()) * np.mean(
            np.sum((h @ k @ r - h) ** 2, axis=1))
        log_abs_det += np.linalg.slogdet(k)[1]
        h = h @ k + b
        if layer is first:
            h, act_log_det = (np.asarray(v) for v in activation.forward(h))
    return h, act_log_det, recon, log_abs_det


def test_forward_with_reconstruction_sums_the_layers_numbers():
    model, x = _dense_model()
    z_ref, act_log_det, recon_ref, log_abs_det = _numpy_walk(model, x)
    z, log_det, recon = model.forward_with_reconstruction(x, training=True)
    np.testing.assert_allclose(z, z_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(log_det, act_log_det, rtol=1e-10, atol=1e-12)  # SNF: value 0
    np.testing.assert_allclose(recon, recon_ref, rtol=1e-10)
    z, log_det, _ = model.forward_with_reconstruction(x, exact=True)
    np.testing.assert_allclose(log_det, act_log_det + log_abs_det, rtol=1e-10, atol=1e-10)


def test_the_logged_loss_nll_and_recon_of_a_training_step():
    """``fit``'s ``nll`` is −mean(log N(z) + the non-SNF log-dets) — not the NLL — and
    ``loss`` = ``nll`` + Σ λ·reconstruction, all of the weights before the step."""
    model, x = _dense_model()
    z, act_log_det, recon, _ = _numpy_walk(model, x)
    log_normal = -0.5 * np.sum(z ** 2, axis=1) - 0.5 * z.shape[1] * LOG_2PI
    nll = -np.mean(log_normal + act_log_det)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    history = model.fit(x, batch_size=len(x), epochs=1, verbose=0, shuffle=False).history
    # Keras's Mean metrics keep their totals in float32
    np.testing.assert_allclose(history["nll"][0], nll, rtol=1e-6)
    np.testing.assert_allclose(history["recon"][0], recon, rtol=1e-6)
    np.testing.assert_allclose(history["loss"][0], nll + recon, rtol=1e-6)


class _Errors(keras.callbacks.Callback):
    """Each SNF layer's last reconstruction error after every batch (placed before Geco)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append({layer.name: float(layer.last_reconstruction_error.numpy())
                          for layer in self.model.flow_layers if layer.uses_reconstruction})


def test_geco_average_and_lambda_follow_the_recurrence():
    model, x = _dense_model()
    start = {layer.name: float(layer.reconstruction_weight.numpy())
             for layer in model.flow_layers if layer.uses_reconstruction}
    errors, geco = _Errors(), callbacks.Geco(rate=0.05, decay=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=4, epochs=2, verbose=0, shuffle=False, callbacks=[errors, geco])
    assert len(errors.seen) == 8
    for name, weight in start.items():
        ema = None
        for seen in errors.seen:
            r = seen[name]
            ema = r if ema is None else 0.9 * ema + 0.1 * r
            weight *= math.exp(0.05 * ema)
        layer = next(layer for layer in model.flow_layers if layer.name == name)
        assert geco.ema[name] == pytest.approx(ema, rel=1e-9)
        assert float(layer.reconstruction_weight.numpy()) == pytest.approx(weight, rel=1e-9)


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.environ.get("TFDS_DATA_DIR", ""),
                                                   "mnist")),
                    reason="real MNIST ($TFDS_DATA_DIR) not available")
@pytest.mark.parametrize("split, limit", [("validation", None), ("train", 1234),
                                          ("train", None)])
def test_num_examples_is_what_load_yields(split, limit):
    counted = sum(int(batch.shape[0]) for batch in data.load("mnist", split, 5000, limit=limit,
                                                              cache=False))
    assert data.num_examples("mnist", split, limit=limit) == counted
    assert counted == {("validation", None): 10_000, ("train", 1234): 1234,
                       ("train", None): 50_000}[(split, limit)]


def test_a_training_step_applies_half_the_exact_kernel_gradient_where_r_is_w_inverse():
    """With R = W⁻¹ exactly and λ = 0 the self-normalized gradient of each kernel is half the
    exact one (the data half ½ xᵀδ and −½ Rᵀ = −½ W⁻ᵀ) and that of each bias the exact one: one
    SGD step of ``fit`` moves the weights by exactly that, the exact gradient taken by autodiff
    through ``slogdet`` of a plain TensorFlow NLL of the same weights."""
    model, x = _dense_model(weights=(0.0, 0.0), n=32, data_seed=3, scale=0.3, perturb_seed=8)
    dense = [model.flow_layers[0], model.flow_layers[2]]
    for layer in dense:
        layer.inverse_kernel.assign(np.linalg.inv(layer.kernel.numpy()))
    before = [tf.Variable(w.numpy()) for layer in dense for w in (layer.kernel, layer.bias)]
    activation = model.flow_layers[1]

    with tf.GradientTape() as tape:
        k0, b0, k2, b2 = before
        h, act_log_det = activation.forward(tf.constant(x) @ k0 + b0)
        z = h @ k2 + b2
        log_p = (-0.5 * tf.reduce_sum(z ** 2, axis=1) - 1.5 * LOG_2PI + act_log_det
                 + tf.linalg.slogdet(k0)[1] + tf.linalg.slogdet(k2)[1])
        nll = -tf.reduce_mean(log_p)
    exact = tape.gradient(nll, before)
    model.compile(optimizer=keras.optimizers.SGD(0.125))  # exact in the float32 it is kept in
    model.fit(x, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    after = [w.numpy() for layer in dense for w in (layer.kernel, layer.bias)]
    for i, (old, new, g) in enumerate(zip(before, after, exact)):
        share = 0.5 if i % 2 == 0 else 1.0  # kernels half, biases whole
        # R = W⁻¹ to round-off: the two gradients agree to about 1e-9
        np.testing.assert_allclose(new, old.numpy() - 0.125 * share * g.numpy(), rtol=1e-7,
                                   atol=1e-10)
