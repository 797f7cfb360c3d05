"""snf_tf.ops.selfnorm helpers: tap counts, kernel flip, value-zero surrogates."""

import numpy as np
import pytest
import tensorflow as tf

from snf_tf.ops import selfnorm as ops


@pytest.mark.parametrize("k,h,w", [(1, 5, 5), (3, 28, 28), (3, 4, 6), (5, 7, 3), (5, 3, 3),
                                   (7, 2, 4), (7, 4, 2)])
def test_tap_counts_equal_weight_gradient_of_ones(k, h, w):
    ones = tf.ones([1, h, w, 1], tf.float64)
    expected = tf.raw_ops.Conv2DBackpropFilter(
        input=ones, filter_sizes=[k, k, 1, 1], out_backprop=ones, strides=[1, 1, 1, 1],
        padding="SAME").numpy()
    np.testing.assert_array_equal(ops.tap_counts(k, h, w), expected)


def test_tap_counts_paper_values():
    m = ops.tap_counts(3, 28, 28)[:, :, 0, 0]
    assert m[1, 1] == 784 and m[0, 1] == 756 and m[0, 0] == 729
    assert ops.tap_counts(1, 32, 32)[0, 0, 0, 0] == 1024


def test_flip_kernel_is_the_transposed_conv():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 4))
    x = rng.standard_normal((2, 5, 6, 4))
    transposed = tf.nn.conv2d_transpose(x, kernel, output_shape=[2, 5, 6, 2], strides=1,
                                        padding="SAME")
    flipped = tf.nn.conv2d(x, ops.flip_kernel(kernel), strides=1, padding="SAME")
    np.testing.assert_allclose(flipped, transposed, atol=1e-12)


def test_value_zero_has_zero_value_and_the_gradient_of_its_argument():
    v = tf.Variable([1.5, -2.0], dtype=tf.float64)
    with tf.GradientTape() as tape:
        out = ops.value_zero(tf.reduce_sum(v ** 3))
    assert float(out) == 0.0
    np.testing.assert_allclose(tape.gradient(out, v), 3 * v.numpy() ** 2)


def test_relative_surrogate_is_zero_with_the_kernel_as_gradient():
    k = tf.Variable(np.random.default_rng(1).standard_normal((4, 4)))
    with tf.GradientTape() as tape:
        t = 3.0 * ops.relative_log_det_surrogate(k)
    assert float(t) == 0.0
    np.testing.assert_allclose(tape.gradient(t, k), 3.0 * k.numpy())


def test_dense_and_conv_surrogates_are_zero_with_the_paper_gradients():
    rng = np.random.default_rng(2)
    k, r = tf.Variable(rng.standard_normal((3, 3))), tf.Variable(rng.standard_normal((3, 3)))
    with tf.GradientTape() as tape:
        t = 2.0 * ops.dense_log_det_surrogate(k, r)
    assert float(t) == 0.0
    dk, dr = tape.gradient(t, [k, r])
    np.testing.assert_allclose(dk, r.numpy().T)
    np.testing.assert_allclose(dr, -k.numpy().T)
    kc = tf.Variable(rng.standard_normal((3, 3, 2, 2)))
    rc = tf.Variable(rng.standard_normal((3, 3, 2, 2)))
    m = ops.tap_counts(3, 4, 5)
    with tf.GradientTape() as tape:
        t = 1.5 * ops.conv_log_det_surrogate(kc, rc, m)
    assert float(t) == 0.0
    dk, dr = tape.gradient(t, [kc, rc])
    flip = lambda a: np.transpose(a[::-1, ::-1], (0, 1, 3, 2))  # noqa: E731
    np.testing.assert_allclose(dk, 0.75 * m * flip(rc.numpy()))
    np.testing.assert_allclose(dr, -0.75 * m * flip(kc.numpy()))


# The fused ops against autodiff of the formulas they document (module docstring): for a loss
# L = Σ c ⊙ z + μ·recon, ∂x = c Kᵀ and ∂b = Σ c exactly, ∂K = ½ ∂(Σ c ⊙ xK)/∂K and
# ∂K_r = −½ ∂(Σ stop(∂x) ⊙ stop(h) K_r)/∂K_r, plus the gradient of μ·λ·mean_n ‖x̂ − x‖² with x
# held constant; an example whose input is not finite counts as zero in recon and in the weight
# gradients. Shapes are all different (N ≠ D, H ≠ W ≠ C), kernels not symmetric, bias nonzero,
# λ and μ not 1, so a swapped axis, sign or factor shows.


def _numpy_conv(x, kernel):
    """'same', stride-1 NHWC conv written out tap by tap."""
    k = kernel.shape[0]
    p = k // 2
    padded = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[3],))
    for a in range(k):
        for b in range(k):
            out += np.einsum("nhwc,co->nhwo", padded[:, a:a + h, b:b + w], kernel[a, b])
    return out


def _reference(kind, x, kernel, bias, inverse_kernel, weight, cotangent, mu):
    """(z, recon, ∂x, ∂K, ∂b, ∂K_r) from the documented formulas, by TF autodiff in float64."""
    if kind == "dense":
        linear, z_np = tf.matmul, x @ kernel + bias
        batch_axes = (0,)
    else:
        linear = lambda a, k: tf.nn.conv2d(a, k, strides=1, padding="SAME")  # noqa: E731
        z_np, batch_axes = _numpy_conv(x, kernel) + bias, (0, 1, 2)
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    x0 = np.where(finite.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)  # masked examples: zero
    cotangent = np.where(np.isfinite(z_np), cotangent, 0.0)  # the loss skips non-finite z
    xt, k, r = tf.constant(x0), tf.Variable(kernel), tf.Variable(inverse_kernel)
    axes = list(range(1, x.ndim))

    def recon_of(kernel, inverse_kernel):  # λ·mean_n ‖(x K) K_r − x‖², x constant
        err = linear(linear(tf.constant(x0), kernel), inverse_kernel) - x0
        return weight * tf.reduce_mean(tf.reduce_sum(tf.square(err), axis=axes))

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        h = linear(xt, k)
        data = tf.reduce_sum(cotangent * h)
        if weight is not None:
            recon = recon_of(k, r)
    dx = tape.gradient(data, xt)
    with tf.GradientTape() as inner:
        back = tf.reduce_sum(tf.stop_gradient(dx) * linear(tf.stop_gradient(h), r))
    dk = 0.5 * tape.gradient(data, k)
    dr = -0.5 * inner.gradient(back, r)
    recon_value = 0.0
    if weight is not None:
        dk += mu * tape.gradient(recon, k)
        dr += mu * tape.gradient(recon, r)
        recon_value = float(recon)
    return z_np, recon_value, dx.numpy(), dk.numpy(), cotangent.sum(axis=batch_axes), dr.numpy()


def _op_outputs(kind, x, kernel, bias, inverse_kernel, weight, cotangent, mu, traced):
    op = ops.selfnorm_dense if kind == "dense" else ops.selfnorm_conv2d
    k, b, r = tf.Variable(kernel), tf.Variable(bias), tf.Variable(inverse_kernel)

    def step(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            z, recon = op(xt, k, b, r, reconstruction_weight=weight)
            terms = tf.where(tf.math.is_finite(z), cotangent * z, 0.0)
            loss = tf.reduce_sum(terms) + mu * recon
        return (z, recon, *tape.gradient(loss, [xt, k, b, r]))

    outputs = (tf.function(step) if traced else step)(tf.constant(x))
    return tuple(np.asarray(t) for t in outputs)


def _problem(kind, rng, nan_row):
    if kind == "dense":
        x, kernel = rng.standard_normal((6, 4)), rng.standard_normal((4, 4)) + 2 * np.eye(4)
        inverse_kernel = np.linalg.inv(kernel) + 0.1 * rng.standard_normal((4, 4))
        bias, cotangent = rng.standard_normal(4), rng.standard_normal((6, 4))
    else:
        x, kernel = rng.standard_normal((3, 5, 4, 2)), 0.3 * rng.standard_normal((3, 3, 2, 2))
        kernel[1, 1] += 2 * np.eye(2)
        inverse_kernel = 0.3 * rng.standard_normal((3, 3, 2, 2))
        inverse_kernel[1, 1] += 0.5 * np.eye(2)
        bias, cotangent = rng.standard_normal(2), rng.standard_normal((3, 5, 4, 2))
    if nan_row:
        x[1].flat[2] = np.nan
    return x, kernel, bias, inverse_kernel, cotangent


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("weight,nan_row", [(None, False), (2.5, False), (2.5, True)],
                         ids=["data-only", "fused-recon", "fused-recon-nan-example"])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_fused_op_values_and_gradients_equal_the_documented_formulas(kind, weight, nan_row,
                                                                     traced):
    args = _problem(kind, np.random.default_rng(4), nan_row)
    mu = 0.7
    got = _op_outputs(kind, *args[:4], weight, args[4], mu, traced)
    want = _reference(kind, *args[:4], weight, args[4], mu)
    names = ["z", "recon", "dx", "dkernel", "dbias", "dinverse"]
    for name, g, w in zip(names, got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)
    if weight is None:
        assert got[1] == 0.0


def test_relative_dense_gradient_is_the_relative_gradient():
    """Gresele et al.: ∂K = K Kᵀ · (ordinary ∂K); input and bias gradients are the ordinary ones."""
    rng = np.random.default_rng(5)
    x, kernel = rng.standard_normal((6, 4)), rng.standard_normal((4, 4))
    bias = rng.standard_normal(4)
    cotangent = rng.standard_normal((6, 4))
    xt, k, b = tf.constant(x), tf.Variable(kernel), tf.Variable(bias)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(cotangent * ops.relative_dense(xt, k, b))
    dx, dk, db = tape.gradient(loss, [xt, k, b])
    with tf.GradientTape() as tape:
        plain = tf.reduce_sum(cotangent * (tf.matmul(x, k) + bias))
    np.testing.assert_allclose(ops.relative_dense(xt, k, b), x @ kernel + bias, rtol=1e-12)
    np.testing.assert_allclose(dk, kernel @ kernel.T @ tape.gradient(plain, k).numpy(), rtol=1e-10)
    np.testing.assert_allclose(dx, cotangent @ kernel.T, rtol=1e-12)
    np.testing.assert_allclose(db, cotangent.sum(axis=0), rtol=1e-12)
