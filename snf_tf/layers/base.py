"""The flow-layer protocol shared by every layer of snf_tf (DESIGN.md §3)."""

import keras
import tensorflow as tf

__all__ = ["FlowLayer", "in_xla_context"]


def in_xla_context():
    """True while tracing a function compiled with ``jit_compile=True`` (slogdet/LU unavailable)."""
    try:
        from tensorflow.python.ops import control_flow_util  # no public API for this question
    except ImportError:  # pragma: no cover - TF moved it; assume the worst-case-safe answer
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _outside_keras_call():
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover
        return False
    return global_state.get_global_attribute("current_call_ctx") is None


class FlowLayer(keras.layers.Layer):
    """Base of all flow layers: an invertible map with a log-det, usable as a plain Keras layer.

    Subclasses implement ``forward(x, exact=False, training=False) -> (z, log_det)`` with
    ``log_det`` of shape ``[batch]`` in nats, ``inverse(z, exact=False) -> x`` and, where the layer
    learns its inverse, ``reconstruction_loss(x)``. ``call(x)`` returns ``forward(x)[0]``.
    """

    #: rank of the inputs the layer accepts (batch axis included)
    input_rank = None

    def call(self, inputs, training=None):
        return self.forward(inputs, training=bool(training))[0]

    def compute_output_shape(self, input_shape):
        return input_shape

    def forward(self, x, exact=False, training=False):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def forward_with_reconstruction(self, x, exact=False, training=False):
        """``(z, log_det, reconstruction loss or None)``; layers without a learned inverse give None."""
        z, log_det = self.forward(x, exact=exact, training=training)
        return z, log_det, None

    def inverse(self, z, exact=False):
        raise NotImplementedError(f"{type(self).__name__} must implement inverse()")

    def reconstruction_loss(self, x):
        """λ-weighted reconstruction loss of the learned inverse; 0 for exactly invertible layers."""
        return tf.zeros([], dtype=self.compute_dtype)

    # -- helpers -----------------------------------------------------------------------------
    def _check_input(self, x, name="x"):
        """Convert ``x`` to a tensor of the layer's dtype, with a clear error for bad input."""
        if not tf.is_tensor(x):
            x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise ValueError(
                f"{self.name}: {name} must be a floating-point tensor, got dtype {x.dtype.name}. "
                "Cast integer images to float (e.g. with a Dequantize layer) first."
            )
        rank = x.shape.rank
        if self.input_rank is not None and rank != self.input_rank:
            raise ValueError(
                f"{self.name}: {name} must have rank {self.input_rank} "
                f"({self._layout_description()}), got shape {x.shape}."
            )
        if not self.built:
            self.build(tuple(x.shape))
        self._check_shape(x.shape, name)
        return tf.cast(x, self.compute_dtype)

    def _layout_description(self):
        return "batch first"

    def _check_shape(self, shape, name):
        """Hook: raise ``ValueError`` if ``shape`` does not match the built layer."""

    def _register_reconstruction(self, loss):
        """``add_loss`` that does not pile up when ``forward`` is used outside a Keras call."""
        if _outside_keras_call():
            self._clear_losses()
        self.add_loss(loss)
