"""Test set-up (quiet TensorFlow, fixed seeds, offline data directory) and the few helpers that
several test files share (``from conftest import nll``)."""

import math
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_shared_data = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and _shared_data.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(_shared_data)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

LOG_2PI = math.log(2 * math.pi)


@pytest.fixture(autouse=True)
def fixed_seed():
    keras.utils.set_random_seed(1234)
    yield


def nll(z, log_det):
    """Batch-mean negative log-likelihood under a standard-normal base, summed over dims."""
    z = tf.reshape(z, [tf.shape(z)[0], -1])
    d = tf.cast(tf.shape(z)[1], z.dtype)
    return -tf.reduce_mean(-0.5 * tf.reduce_sum(z * z, -1) - 0.5 * d * LOG_2PI + log_det)


def fresh_process_env():
    """This process's environment for a child interpreter that must import the installed
    package, not the checkout (no PYTHONPATH), with TensorFlow's start-up chatter off."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, TF_CPP_MIN_LOG_LEVEL="3")


def built(layer, input_shape):
    """``layer`` after ``layer.build(input_shape)``: one-line cases of bad-input tables."""
    layer.build(input_shape)
    return layer


def perturb(layer, scale, seed=99):
    """Add ``scale``·N(0, 1) to every trainable weight (zero-initialised convs, identity inits)."""
    rng = np.random.default_rng(seed)
    for w in layer.trainable_weights:
        w.assign(w.numpy() + scale * rng.standard_normal(w.shape))


def conv_matrix(kernel, h, w):
    """Dense T with vec(conv(x, K)) = vec(x) @ T ('same', stride 1, float64), by convolving the
    identity basis; differentiable in ``kernel``."""
    c = kernel.shape[2]
    d = h * w * c
    basis = tf.reshape(tf.eye(d, dtype=tf.float64), [d, h, w, c])
    return tf.reshape(tf.nn.conv2d(basis, kernel, strides=1, padding="SAME"), [d, d])


class TinyFlow(keras.Model):
    """Smallest Keras model over flow layers: NLL under N(0, I) + registered reconstruction."""

    def __init__(self, flow_layers, **kwargs):
        super().__init__(**kwargs)
        self.flow_layers = flow_layers

    def call(self, x, training=False):
        log_det = tf.zeros(tf.shape(x)[:1])
        for layer in self.flow_layers:
            x, ld = layer.forward(x, training=training)
            log_det = log_det + ld
        return x, log_det

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        z, log_det = y_pred
        return nll(z, log_det) + tf.add_n([tf.zeros([])] + self.losses)
