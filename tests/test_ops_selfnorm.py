"""snf_tf.ops.selfnorm helpers: tap counts, kernel flip, value-zero surrogates."""

import numpy as np
import pytest
import tensorflow as tf

from snf_tf.ops import selfnorm as ops


@pytest.mark.parametrize("k,h,w", [(1, 5, 5), (3, 28, 28), (3, 4, 6), (5, 7, 3), (5, 3, 3),
                                   (7, 2, 4)])
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
        t = ops.conv_log_det_surrogate(kc, rc, m)
    assert float(t) == 0.0
    dk, dr = tape.gradient(t, [kc, rc])
    flip = lambda a: np.transpose(a[::-1, ::-1], (0, 1, 3, 2))  # noqa: E731
    np.testing.assert_allclose(dk, 0.5 * m * flip(rc.numpy()))
    np.testing.assert_allclose(dr, -0.5 * m * flip(kc.numpy()))
