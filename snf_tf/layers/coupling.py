"""A flow layer around TFP's stock ``tfb.RealNVP`` (Dinh, Sohl-Dickstein & Bengio, ICLR 2017).

The TFP interop in the other direction from :mod:`snf_tf.bijectors`: a stock bijector whose
shift/log-scale network is made of Keras 3 ``Dense`` layers owned by a flow layer, so that
``FlowModel.fit`` trains it.
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from snf_tf.layers.base import FlowLayer

__all__ = ["RealNVPCoupling"]

tfb = tfp.bijectors


@keras.saving.register_keras_serializable(package="snf_tf")
class RealNVPCoupling(FlowLayer):
    """A flow layer around a stock ``tfb.RealNVP`` whose shift/log-scale network is made of
    Keras 3 ``Dense`` layers owned by this layer (so ``FlowModel.fit`` trains it).

    Dense inputs ``[batch, D]``: the first ``num_masked`` features condition an affine map of the
    rest. Normalizing direction (layer ``forward``) = the bijector's ``inverse``; log-det = its
    ``inverse_log_det_jacobian``. A new ``tfb.RealNVP`` is made per call (TFP's cache then cannot
    return values computed with old weights).

    Args:
        hidden_units: widths of the hidden ``Dense`` layers (ReLU).
        num_masked: size of the conditioning half (default D // 2).
        reverse: condition on the *last* ``num_masked`` features instead (alternate in stacks).
    """

    input_rank = 2
    needs_known_shape = True

    def __init__(self, hidden_units=(64,), num_masked=None, reverse=False, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.num_masked = None if num_masked is None else int(num_masked)
        self.reverse = bool(reverse)

    def _build_for_shape(self, event_shape):
        dim = event_shape[0]
        if self.num_masked is None:
            self.num_masked = dim // 2
        if not 0 < self.num_masked < dim:
            raise ValueError(f"{self.name}: num_masked must be in (0, D={dim}), got "
                             f"{self.num_masked}.")
        self.hidden = [keras.layers.Dense(u, activation="relu", dtype=self.dtype_policy,
                                          name=f"hidden_{i}")
                       for i, u in enumerate(self.hidden_units)]
        self.out = keras.layers.Dense(2 * (dim - self.num_masked), kernel_initializer="zeros",
                                      dtype=self.dtype_policy, name="shift_and_log_scale")
        shape = (None, self.num_masked)
        for layer in self.hidden:
            layer.build(shape)
            shape = (None, layer.units)
        self.out.build(shape)

    def _shift_and_log_scale(self, x, output_units, **kwargs):
        h = x
        for layer in self.hidden:
            h = layer(h)
        shift, log_scale = tf.split(self.out(h), 2, axis=-1)
        return shift, tf.tanh(log_scale)

    def bijector(self):
        """A fresh stock ``tfb.RealNVP`` (generative direction) reading this layer's weights."""
        real_nvp = tfb.RealNVP(num_masked=self.num_masked,
                               shift_and_log_scale_fn=self._shift_and_log_scale)
        if not self.reverse:
            return real_nvp
        dim = self.event_shape[0]
        perm = tfb.Permute(np.arange(dim)[::-1].copy())
        return tfb.Chain([perm, real_nvp, perm])

    def _forward(self, x, exact, training):
        bijector = self.bijector()
        return bijector.inverse(x), bijector.inverse_log_det_jacobian(x, event_ndims=1)

    def _inverse(self, z, exact):
        return self.bijector().forward(z)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), num_masked=self.num_masked,
                      reverse=self.reverse)
        return config
