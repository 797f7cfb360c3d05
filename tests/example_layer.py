"""The worked example of docs/adding_a_layer.md (the page shows this file; a test keeps them
equal)."""

import keras
import tensorflow as tf

from snf_tf.layers.base import FlowLayer


@keras.saving.register_keras_serializable(package="snf_tf_example")
class ElementwiseAffine(FlowLayer):
    r"""``z = x·exp(s) + t`` with a learned log-scale ``s`` and shift ``t`` per element.

    .. math::
        \log|\det ∂z/∂x| = \textstyle\sum_i s_i,\qquad x = (z − t)·\exp(−s).

    Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP*, ICLR 2017 (the affine map
    of a coupling, without the coupling).
    """

    needs_known_shape = True   # one s and t per element: the shape must be known at build
    constant_jacobian = True   # the log-det does not depend on x

    def _build_for_shape(self, event_shape):
        self.log_scale = self.add_weight(name="log_scale", shape=event_shape,
                                         initializer="zeros")
        self.shift = self.add_weight(name="shift", shape=event_shape, initializer="zeros")

    def _forward(self, x, exact, training):
        log_scale = tf.convert_to_tensor(self.log_scale)
        return x * tf.exp(log_scale) + self.shift, tf.reduce_sum(log_scale)

    def _inverse(self, z, exact):
        return (z - self.shift) * tf.exp(-tf.convert_to_tensor(self.log_scale))

    def exact_log_abs_det(self, event_shape=None):
        return tf.reduce_sum(tf.convert_to_tensor(self.log_scale))
