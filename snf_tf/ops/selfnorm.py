"""Self-normalized dense and convolution ops with hand-written gradients.

Keller et al., *Self Normalizing Flows*, ICML 2021, eq. (3)-(6) and appendix A.

Keras kernel convention: a dense layer computes ``z = x @ K + b`` (``K = Wᵀ``) and its learned
inverse ``x ≈ (z - b) @ K_r`` (``K_r = Rᵀ``); a conv layer computes ``z = conv(x, K) + b`` with an
HWIO kernel and its learned inverse ``x ≈ conv(z - b, K_r)``. With ``δ = ∂L/∂z`` the ops return

    ∂L/∂x   = δ Kᵀ                         (exact; passed on, not halved)
    ∂L/∂b   = Σ δ                          (exact, not halved)
    ∂L/∂K   = ½ xᵀ δ         + recon       (the data half of the f-likelihood)
    ∂L/∂K_r = −½ (z − b)ᵀ ∂L/∂x + recon    (the data half of the g-likelihood)

and, fused into the same matmuls, the gradient of the reconstruction loss
``λ · mean_n ‖(x K) K_r − x‖²`` with ``x`` held constant. The log-det halves (``−½ K_rᵀ`` for K,
``+½ Kᵀ`` for K_r; conv: with ``flip`` and the tap counts ``m``) are not part of these ops: they
come from the value-zero surrogates ``*_log_det_surrogate`` (exactly 0, with a custom gradient)
so that they follow however the loss weights the log-det.
"""

import numpy as np
import tensorflow as tf

__all__ = [
    "flip_kernel",
    "tap_counts",
    "selfnorm_dense",
    "selfnorm_conv2d",
    "relative_dense",
    "dense_log_det_surrogate",
    "conv_log_det_surrogate",
    "relative_log_det_surrogate",
    "value_zero",
]


def flip_kernel(kernel):
    """Kernel of the transposed conv: mirror both spatial axes and swap in/out channels (HWIO).

    ``T(flip(K)) = T(K)ᵀ`` for 'same' padding and odd kernels.
    """
    return tf.transpose(tf.reverse(kernel, axis=[0, 1]), perm=[0, 1, 3, 2])


def tap_counts(kernel_size, height, width):
    """``m[a, b]``: how many output positions kernel tap ``(a, b)`` touches ('same', stride 1).

    Equals the weight gradient of an all-ones input against an all-ones output (paper A.2.1);
    closed form ``(H − |a − p|)(W − |b − p|)`` with ``p = k // 2``, clipped at 0.
    Shape [k, k, 1, 1].
    """
    p = kernel_size // 2
    off = np.abs(np.arange(kernel_size) - p)
    rows = np.maximum(height - off, 0)
    cols = np.maximum(width - off, 0)
    return (rows[:, None] * cols[None, :]).astype(np.float64)[:, :, None, None]


def _masked_recon(x, x_hat, weight, axes):
    """λ · mean over the batch of Σ (x̂ − x)²; examples whose error is not finite count as 0."""
    err = x_hat - x
    per_example = tf.reduce_sum(tf.square(err), axis=axes)
    finite = tf.math.is_finite(per_example)
    recon = weight * tf.reduce_mean(tf.where(finite, per_example, tf.zeros_like(per_example)))
    return recon, err, finite


def _recon_input_grad(err, finite, weight, upstream):
    """∂recon/∂x̂, zero for masked examples (so a NaN example never reaches the weights)."""
    n = tf.cast(tf.shape(err)[0], err.dtype)
    scale = (2.0 * weight / n) * upstream
    return _zero_masked(scale * err, finite)


def _matmul_transposed(a, b):
    """``a @ bᵀ`` for a batch ``a`` [N, D] and a square ``b``: computed as ``(b @ aᵀ)ᵀ``, because
    TF's default (Eigen) CPU kernels are slow with ``transpose_b=True`` at large D (docs/traps.md,
    "Further traps handled in the code")."""
    return tf.transpose(tf.matmul(b, a, transpose_b=True))


def _zero_masked(t, finite):
    """Rows of non-finite examples set to 0, so 0·NaN never enters a weight gradient."""
    mask = tf.reshape(finite, [-1] + [1] * (t.shape.rank - 1))
    return tf.where(mask, t, tf.zeros_like(t))


def selfnorm_dense(x, kernel, bias, inverse_kernel, reconstruction_weight=None):
    """``z = x @ kernel + bias`` with the self-normalized gradient; returns ``(z, recon)``.

    ``recon`` is ``λ·mean_n ‖x K K_r − x‖²`` (0, not computed, when ``reconstruction_weight`` is
    None) and its gradient
    reaches ``kernel`` and ``inverse_kernel`` only, through the same two matmuls as the data terms.
    """
    fused = reconstruction_weight is not None

    @tf.custom_gradient
    def op(x, kernel, bias, inverse_kernel):
        h = tf.matmul(x, kernel)
        z = h + bias
        if fused:
            weight = tf.cast(reconstruction_weight, x.dtype)
            x_hat = tf.matmul(h, inverse_kernel)
            recon, err, finite = _masked_recon(x, x_hat, weight, axes=-1)
        else:
            recon = tf.zeros([], dtype=z.dtype)

        def grad(dz, drecon):
            dx = _matmul_transposed(dz, kernel)
            dh = 0.5 * dz
            dg = -0.5 * dx
            if fused and drecon is not None:
                dx_hat = _recon_input_grad(err, finite, weight, drecon)
                dh = dh + _matmul_transposed(dx_hat, inverse_kernel)
                dg = dg + dx_hat
            xs, hs = (_zero_masked(x, finite), _zero_masked(h, finite)) if fused else (x, h)
            dkernel = tf.matmul(xs, dh, transpose_a=True)
            dinverse = tf.matmul(hs, dg, transpose_a=True)
            dbias = tf.reduce_sum(dz, axis=0)
            return dx, dkernel, dbias, dinverse

        return (z, recon), grad

    return op(x, kernel, bias, inverse_kernel)


def _conv(x, kernel):
    return tf.nn.conv2d(x, kernel, strides=1, padding="SAME")


def _conv_input_grad(dz, kernel, x_shape):
    return tf.nn.conv2d_transpose(dz, kernel, output_shape=x_shape, strides=1, padding="SAME")


def _conv_kernel_grad(x, dz, kernel_shape):
    return tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=kernel_shape, out_backprop=dz, strides=[1, 1, 1, 1], padding="SAME"
    )


def selfnorm_conv2d(x, kernel, bias, inverse_kernel, reconstruction_weight=None):
    """``z = conv(x, kernel) + bias`` ('same', stride 1, NHWC) with the self-normalized gradient.

    The conv twin of :func:`selfnorm_dense`: outer products become conv weight gradients.
    Returns ``(z, recon)``.
    """
    fused = reconstruction_weight is not None

    @tf.custom_gradient
    def op(x, kernel, bias, inverse_kernel):
        h = _conv(x, kernel)
        z = h + bias
        if fused:
            weight = tf.cast(reconstruction_weight, x.dtype)
            x_hat = _conv(h, inverse_kernel)
            recon, err, finite = _masked_recon(x, x_hat, weight, axes=[1, 2, 3])
        else:
            recon = tf.zeros([], dtype=z.dtype)

        def grad(dz, drecon):
            dx = _conv_input_grad(dz, kernel, tf.shape(x))
            dh = 0.5 * dz
            dg = -0.5 * dx
            if fused and drecon is not None:
                dx_hat = _recon_input_grad(err, finite, weight, drecon)
                dh = dh + _conv_input_grad(dx_hat, inverse_kernel, tf.shape(h))
                dg = dg + dx_hat
            xs, hs = (_zero_masked(x, finite), _zero_masked(h, finite)) if fused else (x, h)
            dkernel = _conv_kernel_grad(xs, dh, tf.shape(kernel))
            dinverse = _conv_kernel_grad(hs, dg, tf.shape(inverse_kernel))
            dbias = tf.reduce_sum(dz, axis=[0, 1, 2])
            return dx, dkernel, dbias, dinverse

        return (z, recon), grad

    return op(x, kernel, bias, inverse_kernel)


def relative_dense(x, kernel, bias):
    """``z = x @ kernel + bias`` with Gresele et al.'s relative gradient for the kernel.

    Gresele et al., *Relative gradient optimization of the Jacobian term*, NeurIPS 2020:
    ``ΔW = (∂L/∂W) WᵀW``; in the Keras convention ``ΔK = K Kᵀ (xᵀ δ) = (h Kᵀ)ᵀ δ`` with
    ``h = x K`` — two O(N·D²) matmuls, no inverse. Input and bias gradients are the ordinary ones.
    """

    @tf.custom_gradient
    def op(x, kernel, bias):
        h = tf.matmul(x, kernel)

        def grad(dz):
            dx = tf.matmul(dz, kernel, transpose_b=True)
            dkernel = tf.matmul(tf.matmul(h, kernel, transpose_b=True), dz, transpose_a=True)
            return dx, dkernel, tf.reduce_sum(dz, axis=0)

        return h + bias, grad

    return op(x, kernel, bias)


def value_zero(t):
    """``t − stop_gradient(t)``: exactly 0 in value, the gradient of ``t`` in backprop."""
    return t - tf.stop_gradient(t)


def _zero_with_gradient(grad_fn, *tensors):
    """A scalar whose value is exactly 0 and whose gradient w.r.t. ``tensors`` is
    ``grad_fn(upstream, *tensors)``: the log-det surrogates, with no forward work at all."""

    @tf.custom_gradient
    def op(*tensors):
        return tf.zeros([], tensors[0].dtype), lambda upstream: grad_fn(upstream, *tensors)

    return op(*tensors)


def dense_log_det_surrogate(kernel, inverse_kernel):
    """Value 0; ``∂/∂K = ½ K_rᵀ`` (≈ ½ K⁻ᵀ) and ``∂/∂K_r = −½ Kᵀ`` (≈ −½ K_r⁻ᵀ)."""
    return _zero_with_gradient(
        lambda g, k, r: (0.5 * g * tf.transpose(r), -0.5 * g * tf.transpose(k)),
        kernel, inverse_kernel)


def conv_log_det_surrogate(kernel, inverse_kernel, counts):
    """Conv twin, value 0: ``∂/∂K = ½ flip(K_r)⊙m`` and ``∂/∂K_r = −½ flip(K)⊙m`` (paper A.2.1)."""
    counts = tf.cast(counts, kernel.dtype)
    return _zero_with_gradient(
        lambda g, k, r: (0.5 * g * counts * flip_kernel(r), -0.5 * g * counts * flip_kernel(k)),
        kernel, inverse_kernel)


def relative_log_det_surrogate(kernel):
    """Value 0; ``∂/∂K = K``: the relative gradient of ``log|det K|`` (``K Kᵀ · K⁻ᵀ = K``)."""
    return _zero_with_gradient(lambda g, k: g * k, kernel)
