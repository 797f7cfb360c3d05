"""A flow layer around TFP's stock ``tfb.RealNVP`` (Dinh, Sohl-Dickstein & Bengio, ICLR 2017).

The TFP interop in the other direction from :mod:`snf_tf.bijectors`: a stock bijector whose
shift/log-scale network is made of Keras 3 ``Dense`` layers owned by a flow layer, so that
``FlowModel.fit`` trains it.
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from snf_tf.checks import check_positive_int
from snf_tf.layers.base import FlowLayer

__all__ = ["RealNVPCoupling"]

tfb = tfp.bijectors


@keras.saving.register_keras_serializable(package="snf_tf")
class RealNVPCoupling(FlowLayer):
    """A flow layer around a stock ``tfb.RealNVP`` whose shift/log-scale network is made of
    Keras 3 ``Dense`` layers owned by this layer (so ``FlowModel.fit`` trains it).

    Dense inputs ``[batch, D]``: the first ``num_masked`` features condition an affine map of the
    rest. Normalizing direction (layer ``forward``) = the bijector's ``inverse``; log-det = its
    ``inverse_log_det_jacobian``. A new ``tfb.RealNVP`` with a new network function is made per
    call, so TFP's cache never returns values computed with old weights.

    Conditional (``context_dim`` given): the network sees ``[x_masked, context]`` — TFP's own
    convention, ``conditional_input`` passed through the bijector to ``shift_and_log_scale_fn``.

    Args:
        hidden_units: widths of the hidden ``Dense`` layers (ReLU).
        num_masked: size of the conditioning half (default D // 2).
        reverse: condition on the *last* ``num_masked`` features instead (alternate in stacks).
        context_dim: width of the context vector of a conditional coupling (None: unconditional).
    """

    input_rank = 2
    needs_known_shape = True

    def __init__(self, hidden_units=(64,), num_masked=None, reverse=False, context_dim=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.num_masked = None if num_masked is None else int(num_masked)
        self.reverse = bool(reverse)
        self.context_dim = None if context_dim is None else check_positive_int(
            context_dim, "context_dim", "RealNVPCoupling")
        self.uses_context = self.context_dim is not None

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
        shape = (None, self.num_masked + (self.context_dim or 0))
        for layer in self.hidden:
            layer.build(shape)
            shape = (None, layer.units)
        self.out.build(shape)

    def _shift_and_log_scale(self, x, output_units, conditional_input=None):
        h = x if conditional_input is None else tf.concat([x, conditional_input], axis=-1)
        for layer in self.hidden:
            h = layer(h)
        # the Dense layers compute in ``network_dtype``; shift and scale in the flow's dtype
        shift, log_scale = tf.split(tf.cast(self.out(h), x.dtype), 2, axis=-1)
        return shift, tf.tanh(log_scale)

    def _real_nvp(self):
        # A new function object per bijector: TFP's cache keys on the input tensor and the
        # bijector's parameters, and a bound method compares equal across calls, so the same
        # tensor after a weight change would get the values computed with the old weights.
        def shift_and_log_scale(x, output_units, **kwargs):
            return self._shift_and_log_scale(x, output_units, **kwargs)

        return tfb.RealNVP(num_masked=self.num_masked, shift_and_log_scale_fn=shift_and_log_scale)

    def bijector(self):
        """A fresh stock bijector (generative direction) reading this layer's weights: the
        ``tfb.RealNVP``, between two reversing ``tfb.Permute`` for ``reverse``. A conditional
        layer's takes ``conditional_input=context`` (``bijector_kwargs`` of its RealNVP)."""
        real_nvp = self._real_nvp()
        if not self.reverse:
            return real_nvp
        dim = self.event_shape[0]
        perm = tfb.Permute(np.arange(dim)[::-1].copy())
        return tfb.Chain([perm, real_nvp, perm])

    # The walks reverse the features by hand (a permutation: log-det 0) rather than through the
    # Chain, whose keyword routing by bijector name breaks in graphs (TFP uniquifies the names).
    def _forward(self, x, exact, training, context=None):
        condition = {} if context is None else {"conditional_input": context}
        real_nvp = self._real_nvp()
        x = x[:, ::-1] if self.reverse else x
        z = real_nvp.inverse(x, **condition)
        log_det = real_nvp.inverse_log_det_jacobian(x, event_ndims=1, **condition)
        return (z[:, ::-1] if self.reverse else z), log_det

    def _inverse(self, z, exact, context=None):
        condition = {} if context is None else {"conditional_input": context}
        z = z[:, ::-1] if self.reverse else z
        x = self._real_nvp().forward(z, **condition)
        return x[:, ::-1] if self.reverse else x

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), num_masked=self.num_masked,
                      reverse=self.reverse)
        if self.context_dim is not None:
            config.update(context_dim=self.context_dim)
        return config
