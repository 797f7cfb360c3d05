"""SelfNormDense and SelfNormConv2D: gradients against independent references (float64).

References: autodiff of the exact NLL through slogdet, NumPy formulas of the paper (§3, A.1-A.2),
dense Toeplitz matrices built by pushing basis images through ``tf.nn.conv2d`` (independent of the
index scatter used by the layers), and ``batch_jacobian``. The generic checks of every flow layer
are in ``test_layer_table.py``.
"""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TinyFlow, built, conv_matrix, nll

from snf_tf import SelfNormConv2D, SelfNormDense
from snf_tf.layers import NonFiniteError


def layer_gradients(layer, x, exact=False, training=True, extra_loss=None):
    """Loss = NLL (+ registered reconstruction) through ``layer.forward``; grads by weight name."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x, exact=exact, training=training)
        loss = nll(z, log_det) + tf.add_n([tf.zeros([], x.dtype)] + layer.losses)
        if extra_loss is not None:
            loss = loss + extra_loss(x)
    weights = layer.trainable_weights
    grads = tape.gradient(loss, [x] + weights)
    return {"x": grads[0], **{w.name: g for w, g in zip(weights, grads[1:])}}, z


def make_dense(dim, rng, gradient="self_normalized", inverse="exact", **kwargs):
    layer = SelfNormDense(gradient=gradient, dtype="float64", **kwargs)
    layer.build((None, dim))
    kernel = np.eye(dim) + 0.3 * rng.standard_normal((dim, dim))
    layer.kernel.assign(kernel)
    layer.bias.assign(0.5 * rng.standard_normal(dim))
    if layer.learns_inverse:
        inv = np.linalg.inv(kernel)
        if inverse != "exact":
            inv = inv + 0.1 * rng.standard_normal((dim, dim))
        layer.inverse_kernel.assign(inv)
    return layer


def project_to_kernel(matrix, kernel_shape, h, w):
    """Adjoint of K ↦ T(K): Σ of ``matrix`` over the entries where each kernel tap sits."""
    kernel = tf.Variable(tf.zeros(kernel_shape, tf.float64))
    with tf.GradientTape() as tape:
        inner = tf.reduce_sum(conv_matrix(kernel, h, w) * matrix)
    return tape.gradient(inner, kernel).numpy()


def make_conv(k, c, h, w, rng, gradient="self_normalized", **kwargs):
    layer = SelfNormConv2D(k, gradient=gradient, dtype="float64", **kwargs)
    layer.build((None, h, w, c))
    kernel = 0.15 * rng.standard_normal((k, k, c, c))
    kernel[k // 2, k // 2] += np.eye(c)
    layer.kernel.assign(kernel)
    layer.bias.assign(0.3 * rng.standard_normal(c))
    if layer.learns_inverse:
        inverse = 0.15 * rng.standard_normal((k, k, c, c))
        inverse[k // 2, k // 2] += np.linalg.inv(kernel[k // 2, k // 2])
        layer.inverse_kernel.assign(inverse)
    return layer


# -- 1. dense SNF gradient ---------------------------------------------------------------------
def test_dense_snf_gradient_is_half_the_exact_gradient_when_r_is_the_inverse():
    rng = np.random.default_rng(0)
    layer = make_dense(6, rng, reconstruction_weight=0.7)
    x = rng.standard_normal((9, 6))
    snf, _ = layer_gradients(layer, x)

    kernel = tf.Variable(layer.kernel.numpy())
    bias = tf.Variable(layer.bias.numpy())
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        z = xt @ kernel + bias
        loss = nll(z, tf.linalg.slogdet(kernel)[1] * tf.ones(9, tf.float64))
    d_kernel, d_bias, d_x = tape.gradient(loss, [kernel, bias, xt])

    np.testing.assert_allclose(snf["kernel"], 0.5 * d_kernel.numpy(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(snf["bias"], d_bias, rtol=1e-10)
    np.testing.assert_allclose(snf["x"], d_x, rtol=1e-10)


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_dense_gradients_equal_the_paper_formulas_in_numpy(weight):
    rng = np.random.default_rng(1)
    layer = make_dense(5, rng, inverse="perturbed", reconstruction_weight=weight)
    x = rng.standard_normal((7, 5))
    snf, _ = layer_gradients(layer, x)

    # Column convention of the paper: z = W x + b, R ≈ W⁻¹; Keras stores kernel = Wᵀ.
    W, R, b = layer.kernel.numpy().T, layer.inverse_kernel.numpy().T, layer.bias.numpy()
    n = len(x)
    z = x @ W.T + b
    delta = z / n                      # ∂L/∂z of the batch-mean NLL
    dx = delta @ W                     # Wᵀδ per example
    wx = x @ W.T
    err = wx @ R.T - x                 # R W x − x
    dW = 0.5 * (delta.T @ x - R.T) + 2 * weight / n * R.T @ err.T @ x
    dR = 0.5 * (-dx.T @ wx + W.T) + 2 * weight / n * err.T @ wx
    np.testing.assert_allclose(snf["kernel"], dW.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(snf["inverse_kernel"], dR.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(snf["bias"], delta.sum(0), rtol=1e-10)
    np.testing.assert_allclose(snf["x"], dx, rtol=1e-10)


@pytest.mark.parametrize("mode", ["default", "symmetric", "only_inverse"])
@pytest.mark.parametrize("make", ["dense", "conv"])
def test_fused_reconstruction_equals_standalone_reconstruction_loss(make, mode):
    """forward(training=True) registers the loss (fused into the op for "default") whose value
    and gradients (against NumPy below) are those of ``reconstruction_loss``."""
    rng = np.random.default_rng(2)
    if make == "dense":
        layer, x = make_dense(5, rng, inverse="perturbed", reconstruction_weight=0.3,
                              reconstruction=mode), rng.standard_normal((4, 5))
    else:
        layer, x = make_conv(3, 2, 4, 5, rng, reconstruction_weight=0.3,
                             reconstruction=mode), rng.standard_normal((3, 4, 5, 2))
    fused, _ = layer_gradients(layer, x, training=True)
    recon_fused = float(layer.losses[0])
    standalone, _ = layer_gradients(layer, x, training=False, extra_loss=layer.reconstruction_loss)
    assert recon_fused > 0
    np.testing.assert_allclose(recon_fused, float(layer.reconstruction_loss(x)), rtol=1e-12)
    for name in fused:
        np.testing.assert_allclose(fused[name], standalone[name], rtol=1e-9, atol=1e-12)


def numpy_conv_matrix(kernel, h, w):
    """NumPy twin of :func:`conv_matrix` by explicit loops over the taps ('same', stride 1):
    ``conv(x, K)[i, j, o] = Σ_{a, b, c} x[i + a − p, j + b − p, c] K[a, b, c, o]``."""
    k, _, c, _ = kernel.shape
    p = k // 2
    t = np.zeros((h, w, c, h, w, c))
    for i in range(h):
        for j in range(w):
            for a in range(k):
                for b in range(k):
                    ii, jj = i + a - p, j + b - p
                    if 0 <= ii < h and 0 <= jj < w:
                        t[ii, jj, :, i, j, :] += kernel[a, b]
    return t.reshape(h * w * c, h * w * c)


def numpy_project_to_kernel(matrix, k, h, w, c):
    """NumPy adjoint of ``K ↦ numpy_conv_matrix(K)``: a gradient w.r.t. the Toeplitz matrix
    summed over the entries where each kernel tap sits."""
    p = k // 2
    m = matrix.reshape(h, w, c, h, w, c)
    out = np.zeros((k, k, c, c))
    for i in range(h):
        for j in range(w):
            for a in range(k):
                for b in range(k):
                    ii, jj = i + a - p, j + b - p
                    if 0 <= ii < h and 0 <= jj < w:
                        out[a, b] += m[ii, jj, :, i, j, :]
    return out


def numpy_reconstruction(x, K, R, weight, mode):
    """Value and hand-written gradients w.r.t. K and R of the reconstruction loss, Keras row
    convention (h = x K, x̂ = h R, x held constant), batch mean:

    default       λ·mean_b Σ (h R − x)²
    only_inverse  the same value, h = sg(x K): no gradient into K
    symmetric     λ·mean_b ½[Σ (h R − x)² + Σ (sg(h) − h R K)²]: the target sg(h) is a
                  constant, the round trip h R K carries gradient into both K's and into R.
    """
    n = len(x)
    h = x @ K
    r = h @ R
    e1 = r - x
    if mode == "symmetric":
        e2 = h - r @ K
        value = weight * np.mean(0.5 * (np.sum(e1 ** 2, 1) + np.sum(e2 ** 2, 1)))
        g_r = e1 - e2 @ K.T          # ∂/∂r of ½Σe1² + ½Σe2² (per example, before λ/n)
        d_k = r.T @ (-e2) + x.T @ (g_r @ R.T)  # last K of the round trip + h = x K
        d_r = h.T @ g_r
    else:
        value = weight * np.mean(np.sum(e1 ** 2, 1))
        d_r = 2 * h.T @ e1
        d_k = np.zeros_like(K) if mode == "only_inverse" else 2 * x.T @ (e1 @ R.T)
    return value, weight / n * d_k, weight / n * d_r


def _tape_reconstruction(layer, x):
    with tf.GradientTape() as tape:
        loss = layer.reconstruction_loss(x)
    d_kernel, d_inverse = tape.gradient(loss, [layer.kernel, layer.inverse_kernel])
    d_kernel = np.zeros(layer.kernel.shape) if d_kernel is None else d_kernel.numpy()
    return float(loss), d_kernel, d_inverse.numpy()


@pytest.mark.parametrize("mode", ["default", "symmetric", "only_inverse"])
def test_dense_reconstruction_variants_value_and_gradients_match_numpy(mode):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4))
    layer = make_dense(4, rng, inverse="perturbed", reconstruction_weight=2.0,
                       reconstruction=mode)
    K, R = layer.kernel.numpy(), layer.inverse_kernel.numpy()
    value, d_k, d_r = numpy_reconstruction(x, K, R, 2.0, mode)
    got_value, got_k, got_r = _tape_reconstruction(layer, x)
    np.testing.assert_allclose(got_value, value, rtol=1e-12)
    np.testing.assert_allclose(got_k, d_k, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_r, d_r, rtol=1e-10, atol=1e-12)
    assert np.abs(d_r).max() > 0.1 and (mode == "only_inverse" or np.abs(d_k).max() > 0.1)


@pytest.mark.parametrize("mode", ["default", "symmetric", "only_inverse"])
@pytest.mark.parametrize("k,c,h,w", [(3, 2, 4, 5), (1, 3, 3, 4), (5, 1, 4, 4)])
def test_conv_reconstruction_variants_value_and_gradients_match_numpy_toeplitz(k, c, h, w, mode):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((3, h, w, c))
    layer = make_conv(k, c, h, w, rng, reconstruction_weight=0.6, reconstruction=mode)
    t_k = numpy_conv_matrix(layer.kernel.numpy(), h, w)
    t_r = numpy_conv_matrix(layer.inverse_kernel.numpy(), h, w)
    value, d_tk, d_tr = numpy_reconstruction(x.reshape(3, -1), t_k, t_r, 0.6, mode)
    got_value, got_k, got_r = _tape_reconstruction(layer, x)
    np.testing.assert_allclose(got_value, value, rtol=1e-12)
    np.testing.assert_allclose(got_k, numpy_project_to_kernel(d_tk, k, h, w, c),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_r, numpy_project_to_kernel(d_tr, k, h, w, c),
                               rtol=1e-10, atol=1e-12)
    assert np.abs(d_tr).max() > 0.01 and (mode == "only_inverse" or np.abs(d_tk).max() > 0.01)


def test_numpy_conv_matrix_equals_the_conv():
    rng = np.random.default_rng(16)
    kernel = rng.standard_normal((3, 3, 2, 2))
    x = rng.standard_normal((2, 4, 5, 2))
    z = tf.nn.conv2d(x, kernel, strides=1, padding="SAME").numpy()
    np.testing.assert_allclose(x.reshape(2, -1) @ numpy_conv_matrix(kernel, 4, 5),
                               z.reshape(2, -1), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal((40, 40))
    np.testing.assert_allclose(numpy_project_to_kernel(g, 3, 4, 5, 2),
                               project_to_kernel(g, kernel.shape, 4, 5), rtol=1e-12, atol=1e-12)


def test_reconstruction_loss_ignores_non_finite_examples():
    """Traced, as in training (eager calls refuse non-finite inputs outright)."""
    rng = np.random.default_rng(4)
    layer = make_dense(3, rng, inverse="perturbed")
    x = rng.standard_normal((4, 3))
    bad = x.copy()
    bad[1, 0] = np.nan

    @tf.function
    def losses_and_gradients(clean_x, bad_x):
        with tf.GradientTape(persistent=True) as tape:
            clean = layer.reconstruction_loss(clean_x)
            masked = layer.reconstruction_loss(bad_x)
            _, _ = layer.forward(bad_x, training=True)
            fused = layer.losses[0]
        grads = [tape.gradient(loss, [layer.kernel, layer.inverse_kernel])
                 for loss in (masked, fused)]
        return clean, masked, fused, grads

    clean, masked, fused, grads = losses_and_gradients(np.delete(x, 1, axis=0), bad)
    np.testing.assert_allclose(float(masked), float(clean) * 3 / 4, rtol=1e-12)
    np.testing.assert_allclose(float(fused), float(masked), rtol=1e-12)
    assert all(np.all(np.isfinite(g.numpy())) for pair in grads for g in pair)
    with pytest.raises(NonFiniteError):
        layer.reconstruction_loss(bad)


def test_conv_reconstruction_ignores_non_finite_examples():
    """Conv twin of the dense test, traced as in training: one NaN example in the batch leaves the
    kernel and R gradients finite, and the fused (op) and standalone losses equal λ/N Σ over the
    clean examples only (batch mean over all N = 4, the NaN example counted as 0)."""
    rng = np.random.default_rng(17)
    k, c, h, w = 3, 2, 4, 5
    layer = make_conv(k, c, h, w, rng, reconstruction_weight=0.8)
    x = rng.standard_normal((4, h, w, c))
    bad = x.copy()
    bad[2, 1, 3, 0] = np.nan

    @tf.function
    def losses_and_gradients(clean_x, bad_x):
        with tf.GradientTape(persistent=True) as tape:
            clean = layer.reconstruction_loss(clean_x)
            masked = layer.reconstruction_loss(bad_x)
            z, _ = layer.forward(bad_x, training=True)
            fused = layer.losses[0]
        weights = [layer.kernel, layer.inverse_kernel]
        grads = [tape.gradient(loss, weights) for loss in (clean, masked, fused)]
        return clean, masked, fused, z, grads

    clean_x = np.delete(x, 2, axis=0)
    clean, masked, fused, z, (g_clean, g_masked, g_fused) = losses_and_gradients(clean_x, bad)
    t_k = numpy_conv_matrix(layer.kernel.numpy(), h, w)
    t_r = numpy_conv_matrix(layer.inverse_kernel.numpy(), h, w)
    flat = clean_x.reshape(3, -1)
    expected = 0.8 * np.sum((flat @ t_k @ t_r - flat) ** 2) / 4
    assert expected > 0.1
    np.testing.assert_allclose(float(masked), expected, rtol=1e-12)
    np.testing.assert_allclose(float(fused), expected, rtol=1e-12)
    np.testing.assert_allclose(float(clean), expected * 4 / 3, rtol=1e-12)
    _, d_tk, d_tr = numpy_reconstruction(flat, t_k, t_r, 0.8, "default")  # mean over the 3
    references = [numpy_project_to_kernel(d * 3 / 4, k, h, w, c) for d in (d_tk, d_tr)]
    assert all(np.all(np.isfinite(g.numpy())) for grads in (g_masked, g_fused) for g in grads)
    for masked_grads in (g_masked, g_fused):
        for got, reference in zip(masked_grads, references):
            np.testing.assert_allclose(got.numpy(), reference, rtol=1e-10, atol=1e-12)
    for got, reference in zip(g_clean, references):
        np.testing.assert_allclose(got.numpy(), reference * 4 / 3, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(np.delete(z.numpy(), 2, axis=0)))
    with pytest.raises(NonFiniteError):
        layer.forward(bad, training=True)


# -- 2. conv SNF gradient against a dense Toeplitz computation ----------------------------------
CONV_CASES = [(1, 1, 4, 4), (1, 3, 3, 5), (1, 4, 2, 3), (3, 1, 5, 5), (3, 3, 4, 6), (3, 4, 3, 3),
              (5, 1, 6, 5), (5, 3, 4, 4), (5, 4, 3, 4)]  # k, C, H, W


@pytest.mark.parametrize("k,c,h,w", CONV_CASES)
def test_conv_snf_gradients_equal_dense_toeplitz_formulas(k, c, h, w):
    rng = np.random.default_rng(5)
    weight = 0.4
    layer = make_conv(k, c, h, w, rng, reconstruction_weight=weight)
    x = rng.standard_normal((3, h, w, c))
    snf, _ = layer_gradients(layer, x)

    n, d = len(x), h * w * c
    t_w = conv_matrix(layer.kernel.numpy(), h, w).numpy()
    t_r = conv_matrix(layer.inverse_kernel.numpy(), h, w).numpy()
    xf = x.reshape(n, d)
    hf = xf @ t_w
    delta = (hf + np.tile(layer.bias.numpy(), h * w)) / n
    dx = delta @ t_w.T
    err = hf @ t_r - xf
    d_tw = 0.5 * (xf.T @ delta - t_r.T) + 2 * weight / n * xf.T @ (err @ t_r.T)
    d_tr = 0.5 * (-hf.T @ dx + t_w.T) + 2 * weight / n * hf.T @ err
    shape = layer.kernel.shape
    np.testing.assert_allclose(snf["kernel"], project_to_kernel(d_tw, shape, h, w),
                               rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(snf["inverse_kernel"], project_to_kernel(d_tr, shape, h, w),
                               rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(snf["bias"], delta.reshape(n, h, w, c).sum((0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(snf["x"], dx.reshape(x.shape), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gradient", ["self_normalized", "exact"])
@pytest.mark.parametrize("k,c,h,w", [(1, 3, 3, 4), (3, 2, 4, 4), (5, 1, 5, 6)])
def test_conv_exact_log_det_equals_slogdet_over_toeplitz_shapes(k, c, h, w, gradient):
    """More kernel sizes, channel counts and image sizes than the table's rows, both ways of
    computing the exact log-det (cached / live)."""
    rng = np.random.default_rng(6)
    layer = make_conv(k, c, h, w, rng, gradient=gradient)
    x = tf.constant(rng.standard_normal((2, h, w, c)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x, exact=True)
        z = tf.reshape(z, [2, -1])
    jac = tape.batch_jacobian(z, x).numpy().reshape(2, h * w * c, h * w * c)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jac)[1], rtol=1e-9, atol=1e-10)


def test_conv_toeplitz_log_det_equals_one_by_one_shortcut():
    from snf_tf.ops import toeplitz
    rng = np.random.default_rng(7)
    layer = make_conv(1, 3, 4, 5, rng)
    positions, taps = toeplitz.toeplitz_indices(4, 5, 3, 1)
    via_toeplitz = toeplitz.conv_log_abs_det(layer.kernel, positions, taps, 60)
    np.testing.assert_allclose(layer.exact_log_abs_det(), via_toeplitz, rtol=1e-12)
    np.testing.assert_allclose(layer.exact_log_abs_det(),
                               20 * np.linalg.slogdet(layer.kernel.numpy()[0, 0])[1], rtol=1e-12)


# -- 3. exact-gradient baseline ------------------------------------------------------------------
def test_dense_exact_mode_gradients_equal_plain_autodiff():
    rng = np.random.default_rng(9)
    layer = make_dense(6, rng, gradient="exact")
    assert not hasattr(layer, "inverse_kernel")
    x = rng.standard_normal((5, 6))
    got, _ = layer_gradients(layer, x)
    kernel, bias = tf.Variable(layer.kernel.numpy()), tf.Variable(layer.bias.numpy())
    with tf.GradientTape() as tape:
        loss = nll(x @ kernel + bias, tf.linalg.slogdet(kernel)[1] * tf.ones(5, tf.float64))
    d_kernel, d_bias = tape.gradient(loss, [kernel, bias])
    np.testing.assert_allclose(got["kernel"], d_kernel, rtol=1e-10)
    np.testing.assert_allclose(got["bias"], d_bias, rtol=1e-10)


@pytest.mark.parametrize("k", [1, 3])
def test_conv_exact_mode_gradients_equal_plain_autodiff(k):
    rng = np.random.default_rng(10)
    c, h, w = 2, 4, 3
    layer = make_conv(k, c, h, w, rng, gradient="exact")
    x = rng.standard_normal((3, h, w, c))
    got, _ = layer_gradients(layer, x)
    kernel, bias = tf.Variable(layer.kernel.numpy()), tf.Variable(layer.bias.numpy())
    with tf.GradientTape() as tape:
        z = tf.nn.conv2d(x, kernel, strides=1, padding="SAME") + bias
        log_det = tf.linalg.slogdet(conv_matrix(kernel, h, w))[1] * tf.ones(3, tf.float64)
        loss = nll(z, log_det)
    d_kernel, d_bias = tape.gradient(loss, [kernel, bias])
    np.testing.assert_allclose(got["kernel"], d_kernel, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["bias"], d_bias, rtol=1e-10)


# -- 4. relative gradient ------------------------------------------------------------------------
def test_relative_gradient_is_euclidean_gradient_times_wtw():
    rng = np.random.default_rng(11)
    layer = make_dense(5, rng, gradient="relative")
    x = rng.standard_normal((8, 5))
    got, _ = layer_gradients(layer, x)
    kernel, bias = tf.Variable(layer.kernel.numpy()), tf.Variable(layer.bias.numpy())
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = nll(xt @ kernel + bias, tf.linalg.slogdet(kernel)[1] * tf.ones(8, tf.float64))
    d_kernel, d_bias, d_x = tape.gradient(loss, [kernel, bias, xt])
    W = layer.kernel.numpy().T
    euclidean_w = d_kernel.numpy().T                    # ∂L/∂W in z = W x + b
    np.testing.assert_allclose(got["kernel"].numpy().T, euclidean_w @ W.T @ W, rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(got["bias"], d_bias, rtol=1e-10)
    np.testing.assert_allclose(got["x"], d_x, rtol=1e-10)


# -- 5. inverses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda: (SelfNormDense(), (16, 12)),
    lambda: (SelfNormDense(gradient="relative"), (16, 12)),
    lambda: (SelfNormConv2D(1), (4, 6, 6, 3)),
    lambda: (SelfNormConv2D(3), (4, 6, 5, 2)),
    lambda: (SelfNormConv2D(5, gradient="exact"), (2, 5, 5, 2)),
])
def test_exact_inverse_round_trip_float32(build):
    layer, shape = build()
    x = tf.random.normal(shape)
    layer.build(shape)
    layer.kernel.assign(layer.kernel + 0.1 * tf.random.normal(layer.kernel.shape))
    z, _ = layer.forward(x)
    np.testing.assert_allclose(layer.inverse(z, exact=True), x, atol=1e-5)


@pytest.mark.parametrize("layer,shape", [
    (SelfNormDense(), (64, 8)), (SelfNormConv2D(3), (16, 6, 6, 2)),
    (SelfNormConv2D(1), (16, 4, 4, 3)),
])
@pytest.mark.slow
def test_reconstruction_training_shrinks_inverse_error_tenfold(layer, shape):
    layer.build(shape)
    layer.kernel.assign(layer.kernel + 0.2 * tf.random.normal(layer.kernel.shape))
    layer.inverse_kernel.assign(layer.inverse_kernel + 0.2 * tf.random.normal(layer.kernel.shape))
    before = float(layer.inverse_error())
    optimizer = keras.optimizers.Adam(1e-2)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = layer.reconstruction_loss(x)
        weights = [layer.kernel, layer.inverse_kernel]
        optimizer.apply(tape.gradient(loss, weights), weights)

    for _ in range(300):
        step(tf.random.normal(shape))
    after = float(layer.inverse_error())
    assert after < before / 10, (before, after)


def test_inverse_error_is_frobenius_norm_of_rw_minus_identity():
    rng = np.random.default_rng(13)
    conv = make_conv(3, 2, 3, 4, rng)
    t_w = conv_matrix(conv.kernel.numpy(), 3, 4).numpy()
    t_r = conv_matrix(conv.inverse_kernel.numpy(), 3, 4).numpy()
    np.testing.assert_allclose(conv.inverse_error(), np.linalg.norm(t_w @ t_r - np.eye(24)),
                               rtol=1e-10)
    one = make_conv(1, 3, 3, 4, rng)
    t_w = conv_matrix(one.kernel.numpy(), 3, 4).numpy()
    t_r = conv_matrix(one.inverse_kernel.numpy(), 3, 4).numpy()
    np.testing.assert_allclose(one.inverse_error(), np.linalg.norm(t_w @ t_r - np.eye(36)),
                               rtol=1e-10)


# -- 6. Keras behaviour (generic checks: test_layer_table.py) -----------------------------------
ALL_MODES = [
    ("dense-snf", lambda: SelfNormDense(), (6, 5)),
    ("dense-exact", lambda: SelfNormDense(gradient="exact"), (6, 5)),
    ("dense-relative", lambda: SelfNormDense(gradient="relative"), (6, 5)),
    ("conv1-snf", lambda: SelfNormConv2D(1), (3, 4, 4, 3)),
    ("conv3-snf", lambda: SelfNormConv2D(3, reconstruction="symmetric"), (3, 5, 4, 2)),
    ("conv5-exact", lambda: SelfNormConv2D(5, gradient="exact"), (3, 5, 5, 2)),
]


@pytest.mark.parametrize("name,make,shape", ALL_MODES, ids=[m[0] for m in ALL_MODES])
def test_trainable_weights(name, make, shape):
    layer = make()
    layer.build(shape)
    expected = {"kernel", "bias"} | ({"inverse_kernel"} if layer.learns_inverse else set())
    assert {w.name for w in layer.trainable_weights} == expected


@pytest.mark.parametrize("make", ["dense", "conv"])
def test_options_and_the_fresh_log_det_cache_travel_with_a_keras_file(make, tmp_path):
    """Non-default options come back, and so do the cache and its fingerprint: under XLA, where a
    stale cache reads NaN, the loaded layer gives the exact log-det without a refresh."""
    rng = np.random.default_rng(18)
    if make == "dense":
        layer, x = make_dense(4, rng, inverse="perturbed", reconstruction_weight=0.3,
                              reconstruction="only_inverse"), rng.standard_normal((3, 4))
    else:
        layer, x = make_conv(3, 2, 4, 5, rng, reconstruction_weight=0.3,
                             reconstruction="symmetric"), rng.standard_normal((3, 4, 5, 2))
    _, log_det = layer.forward(x, exact=True)  # eagerly: computes and stores the cache
    path = str(tmp_path / "layer.keras")
    keras.Sequential([keras.Input(x.shape[1:], dtype="float64"), layer]).save(path)
    loaded = keras.models.load_model(path).layers[0]
    assert (loaded.reconstruction, loaded.gradient) == (layer.reconstruction, "self_normalized")
    assert float(loaded.reconstruction_weight) == 0.3
    xla = tf.function(lambda x: loaded.forward(x, exact=True)[1], jit_compile=True)
    np.testing.assert_allclose(xla(tf.constant(x)), log_det, rtol=1e-12)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_model_fit_trains_a_tiny_flow(kind, jit_compile):
    if kind == "dense":
        layers, data = [SelfNormDense(), SelfNormDense()], np.random.default_rng(0).normal(
            size=(64, 6)).astype("float32") * 3
    else:
        layers, data = [SelfNormConv2D(3), SelfNormConv2D(1)], np.random.default_rng(0).normal(
            size=(64, 4, 4, 2)).astype("float32") * 3
    model = TinyFlow(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    exact_before = _exact_nll(layers, data)
    history = model.fit(data, batch_size=16, epochs=3, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    assert len(model.losses) == 2  # one fused reconstruction loss per SNF layer
    assert _exact_nll(layers, data) < exact_before


def _exact_nll(layers, x):
    log_det = 0.0
    for layer in layers:
        x, ld = layer.forward(x, exact=True)
        log_det = log_det + ld
    return float(nll(x, log_det))


# -- exact log-det cache ------------------------------------------------------------------------
def test_cache_is_refreshed_eagerly_and_never_stale_in_graphs():
    layer = SelfNormDense()
    x = tf.random.normal((4, 5))
    layer.build(x.shape)
    layer.kernel.assign(layer.kernel + 0.3 * tf.random.normal((5, 5)))
    truth = lambda: np.linalg.slogdet(layer.kernel.numpy())[1]  # noqa: E731
    np.testing.assert_allclose(layer.forward(x, exact=True)[1], np.full(4, truth()), rtol=1e-5)
    np.testing.assert_allclose(layer.log_det_cache.numpy(), truth(), rtol=1e-5)  # stored

    graph = tf.function(lambda x: layer.forward(x, exact=True)[1])
    xla = tf.function(lambda x: layer.forward(x, exact=True)[1], jit_compile=True)
    np.testing.assert_allclose(xla(x), np.full(4, truth()), rtol=1e-5)  # fresh cache under XLA
    layer.kernel.assign(layer.kernel * 1.1)                              # cache now stale
    np.testing.assert_allclose(graph(x), np.full(4, truth()), rtol=1e-5)  # graph: computed live
    assert np.all(np.isnan(xla(x)))                                      # XLA: NaN, never stale
    layer.refresh_log_det()
    np.testing.assert_allclose(xla(x), np.full(4, truth()), rtol=1e-5)


def test_many_layers_refresh_their_log_dets_without_a_retracing_warning():
    # each layer traces its log-det once; tf.function must not see that as one function
    # retracing (it printed "5 out of the last 5 calls ... triggered tf.function retracing")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        layers = [built(SelfNormConv2D(1), (1, 4, 4, 3)) for _ in range(8)]
        for seed, layer in enumerate(layers):
            layer.kernel.assign(layer.kernel + 0.3 * tf.random.stateless_normal(
                layer.kernel.shape, [seed, 0]))
            layer.refresh_log_det()
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()]
    for layer in layers:
        np.testing.assert_allclose(layer.log_det_cache.numpy(), 16 * np.linalg.slogdet(
            layer.kernel.numpy()[0, 0])[1], rtol=1e-5)


def test_exact_flag_changes_values_not_gradients():
    rng = np.random.default_rng(14)
    layer = make_dense(4, rng, inverse="perturbed")
    x = rng.standard_normal((3, 4))
    cheap, _ = layer_gradients(layer, x, exact=False)
    exact, _ = layer_gradients(layer, x, exact=True)
    for name in cheap:
        np.testing.assert_allclose(cheap[name], exact[name], rtol=1e-12)


# -- clear errors (rank, dtype, empty batch, NaN: test_layer_table.py) ------------------------
BAD_INPUT = [
    ("non-square dense", lambda: SelfNormDense(units=3).build((None, 4)), "square"),
    ("dense feature mismatch", lambda: built(SelfNormDense(), (None, 4)).forward(tf.zeros((2, 5))),
     "D = 4"),
    ("even kernel", lambda: SelfNormConv2D(2), "odd"),
    ("non-square kernel", lambda: SelfNormConv2D((3, 5)), "square"),
    ("valid padding", lambda: SelfNormConv2D(3, padding="valid"), "padding"),
    ("stride 2", lambda: SelfNormConv2D(3, strides=2), "strides"),
    ("channel mismatch", lambda: built(SelfNormConv2D(3), (None, 4, 4, 2)).forward(
        tf.zeros((1, 4, 4, 3))), "channels"),
    ("spatial mismatch", lambda: built(SelfNormConv2D(3), (None, 4, 4, 2)).forward(
        tf.zeros((1, 5, 4, 2))), "spatial"),
    ("unknown gradient", lambda: SelfNormDense(gradient="approx"), "gradient"),
    ("relative conv", lambda: SelfNormConv2D(3, gradient="relative"), "gradient"),
    ("negative lambda", lambda: SelfNormDense(reconstruction_weight=-1), "reconstruction_weight"),
    ("unknown reconstruction", lambda: SelfNormDense(reconstruction="both"), "reconstruction"),
    ("unknown spatial size", lambda: SelfNormConv2D(3).build((None, None, None, 2)), "fully known"),
    ("inverse error without R",
     lambda: built(SelfNormDense(gradient="exact"), (None, 3)).inverse_error(), "learned inverse"),
]


@pytest.mark.parametrize("name,action,message", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_raises_a_clear_value_error(name, action, message):
    with pytest.raises(ValueError, match=message):
        action()


# -- initialisation (reference code, docs/paper.md: layer details) -----------------------------
def test_paper_initialisation():
    dense = built(SelfNormDense(), (None, 784))
    np.testing.assert_array_equal(dense.kernel.numpy(), np.eye(784))
    np.testing.assert_array_equal(dense.inverse_kernel.numpy(), np.eye(784))
    assert 0.03 < dense.bias.numpy().std() < 0.042  # N(0, std(I)²), std(I_784) ≈ 0.0357

    conv = built(SelfNormConv2D(3), (None, 28, 28, 16))
    kernel = conv.kernel.numpy()
    dirac = np.zeros_like(kernel)
    dirac[1, 1] = np.eye(16)
    noise_std = 0.01 / np.sqrt(16 * 9)  # Xavier normal, gain 0.01, fan_in = fan_out = C·k²
    assert 0.9 * noise_std < (kernel - dirac).std() < 1.1 * noise_std
    np.testing.assert_array_equal(conv.inverse_kernel.numpy(),
                                  np.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)))

    one = built(SelfNormConv2D(1), (None, 8, 8, 12))
    w = one.kernel.numpy()[0, 0]
    np.testing.assert_allclose(w @ w.T, np.eye(12), atol=1e-5)
    np.testing.assert_array_equal(one.inverse_kernel.numpy()[0, 0], w.T)


@pytest.mark.parametrize("make,shape", [
    (lambda: SelfNormDense(gradient="exact", dtype="float64"), (3, 6)),
    (lambda: SelfNormConv2D(3, gradient="exact", dtype="float64"), (3, 5, 5, 2)),
], ids=["dense", "conv"])
def test_exact_gradient_layer_outside_training_reads_a_fresh_cache_with_the_live_gradient(
        make, shape):
    """Evaluation refreshes the cache once; forward(training=False) then reads it instead of
    factorising per batch, its gradient is still the live one, and a stale cache is not used."""
    layer = make()
    x = tf.constant(np.random.default_rng(0).standard_normal(shape))
    layer(x)
    layer.refresh_log_det()
    live_calls = []
    live = layer._live_log_abs_det
    layer._live_log_abs_det = lambda kernel: live_calls.append(1) or live(kernel)
    with tf.GradientTape(persistent=True) as tape:
        _, cached = layer.forward(x, training=False)
        _, reference = layer.forward(x, training=True)
        cached_sum, reference_sum = tf.reduce_sum(cached), tf.reduce_sum(reference)
    assert len(live_calls) == 1  # the training call only: the cached value needs no factorisation
    np.testing.assert_allclose(cached.numpy(), reference.numpy(), rtol=1e-12)
    grad_cached = tape.gradient(cached_sum, layer.kernel).numpy()
    grad_live = tape.gradient(reference_sum, layer.kernel).numpy()
    np.testing.assert_allclose(grad_cached, grad_live, rtol=1e-10, atol=1e-12)
    layer.kernel.assign(layer.kernel * 1.1)  # stale: the value follows the new kernel
    _, moved = layer.forward(x, training=False)
    np.testing.assert_allclose(moved.numpy(), live(tf.convert_to_tensor(layer.kernel)).numpy()
                               * np.ones(shape[0]), rtol=1e-12)
    assert not np.allclose(moved.numpy(), cached.numpy())


@pytest.mark.parametrize("kind", ["dense", "conv3x3"])
def test_refresh_inside_a_graph_stores_the_slogdet_of_the_matrix(kind):
    """``refresh_log_det`` traced (as ``FlowModel.refresh_log_dets`` may be) computes live."""
    rng = np.random.default_rng(21)
    layer = make_dense(5, rng) if kind == "dense" else make_conv(3, 2, 4, 5, rng)
    matrix = (layer.kernel.numpy() if kind == "dense"
              else conv_matrix(layer.kernel, 4, 5).numpy())
    value = tf.function(layer.refresh_log_det)()
    truth = np.linalg.slogdet(matrix)[1]
    np.testing.assert_allclose(value.numpy(), truth, rtol=1e-10)
    np.testing.assert_allclose(layer.log_det_cache.numpy(), truth, rtol=1e-10)


@pytest.mark.parametrize("kind", ["dense", "conv3x3"])
def test_exact_gradient_layer_log_det_is_live_with_the_inverse_transpose_gradient(kind):
    """``gradient="exact"``: ``exact_log_abs_det()`` is differentiable, ``∂/∂T = T⁻ᵀ``
    (projected onto the kernel taps for a conv)."""
    rng = np.random.default_rng(22)
    layer = (make_dense(5, rng, gradient="exact") if kind == "dense"
             else make_conv(3, 2, 4, 5, rng, gradient="exact"))
    with tf.GradientTape() as tape:
        value = 1.5 * layer.exact_log_abs_det()
    grad = tape.gradient(value, layer.kernel).numpy()
    if kind == "dense":
        matrix = layer.kernel.numpy()
        expected = 1.5 * np.linalg.inv(matrix).T
    else:
        matrix = conv_matrix(layer.kernel, 4, 5).numpy()
        expected = 1.5 * project_to_kernel(np.linalg.inv(matrix).T, layer.kernel.shape, 4, 5)
    np.testing.assert_allclose(value.numpy(), 1.5 * np.linalg.slogdet(matrix)[1], rtol=1e-10)
    np.testing.assert_allclose(grad, expected, rtol=1e-8, atol=1e-10)


def test_exact_log_abs_det_takes_its_own_event_shape_and_refuses_another():
    layer = make_conv(3, 2, 4, 5, np.random.default_rng(23))
    truth = np.linalg.slogdet(conv_matrix(layer.kernel, 4, 5).numpy())[1]
    np.testing.assert_allclose(layer.exact_log_abs_det(event_shape=(4, 5, 2)), truth, rtol=1e-10)
    with pytest.raises(ValueError, match=r"built for per-example shape \(4, 5, 2\)"):
        layer.exact_log_abs_det(event_shape=(5, 4, 2))
