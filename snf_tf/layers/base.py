"""The flow-layer protocol shared by every layer of snf_tf (DESIGN.md §3)."""

import warnings

import keras
import numpy as np
import tensorflow as tf

__all__ = ["FixedShapeFlowLayer", "FlowLayer", "NonFiniteError", "check_batch_values",
           "check_event_shape", "check_float_policy", "in_xla_context", "sum_per_example",
           "warn_if_singular"]

#: dtypes flow layers compute in: log-dets (slogdet, QR, sums of logs over D terms) and exact
#: inverses lose too much in half precision, and TF has no float16/bfloat16 slogdet kernel.
SUPPORTED_DTYPES = ("float32", "float64")


class NonFiniteError(ValueError):
    """Inputs (or values passed between layers) hold NaN or inf: a likelihood of them would be
    silently NaN. A ``ValueError``, so callers treating bad input alike need no special case."""


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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        check_float_policy(self)

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

    def as_bijector(self, exact=False, **kwargs):
        """A ``tfb.Bijector`` view of this (built) layer: :class:`snf_tf.bijectors.FlowBijector`.

        Forward = generative (z → x, learned inverse unless exact), inverse = normalizing."""
        from snf_tf.bijectors import FlowBijector  # bijectors is a higher floor than layers

        return FlowBijector(self, exact=exact, **kwargs)

    # -- saving --------------------------------------------------------------------------------
    # Keras saves variables but not the state of a layer's SeedGenerators (Dequantize noise,
    # SplitPrior sampling): store them too, so a reloaded model continues the same random stream.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, generator in enumerate(self._seed_generators):
            store[f"seed_generator_{i}"] = generator.state.numpy()

    def load_own_variables(self, store):
        keys = list(store.keys())
        seeds = sorted(k for k in keys if str(k).startswith("seed_generator_"))
        super().load_own_variables({k: store[k] for k in keys if k not in seeds})
        for key, generator in zip(seeds, self._seed_generators):
            generator.state.assign(store[key])

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
        check_batch_values(x, self.name, name)
        return tf.cast(x, self.compute_dtype)

    def _layout_description(self):
        return {2: "[batch, D]", 4: "NHWC: [batch, height, width, channels]"}.get(
            self.input_rank, "batch first")

    def _check_shape(self, shape, name):
        """Hook: raise ``ValueError`` if ``shape`` does not match the built layer."""

    def _register_reconstruction(self, loss):
        """``add_loss`` that does not pile up when ``forward`` is used outside a Keras call."""
        if _outside_keras_call():
            self._clear_losses()
        self.add_loss(loss)


def sum_per_example(values):
    """Sum over every non-batch axis: ``[batch, ...] → [batch]``."""
    return tf.reduce_sum(tf.reshape(values, [tf.shape(values)[0], -1]), axis=-1)


def check_float_policy(layer):
    """``ValueError`` unless the layer computes and stores weights in float32 or float64: the
    log-det and the exact inverse need the weights' own precision (no mixed precision)."""
    policy = layer.dtype_policy
    if policy.compute_dtype != policy.variable_dtype:
        raise ValueError(
            f"{type(layer).__name__}: mixed precision ({policy.name}) is not supported: the log-det "
            "and the exact inverse need the weights' precision. Use float32 or float64."
        )
    if policy.compute_dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{type(layer).__name__}: dtype {policy.compute_dtype} is not supported (log-dets and "
            f"exact inverses need {' or '.join(SUPPORTED_DTYPES)})."
        )


def check_batch_values(x, owner, name):
    """Eagerly: ``ValueError`` for an empty batch, :class:`NonFiniteError` for NaN or inf values.

    A no-op while tracing a ``tf.function``: a per-step check would cost every training step, and
    there a non-finite value makes the loss non-finite, which the training loop's divergence
    policy catches (``keras.callbacks.TerminateOnNaN``; see ``snf_tf.training``).
    """
    if not tf.executing_eagerly() or not hasattr(x, "numpy"):
        return
    if x.shape.rank and x.shape[0] == 0:
        raise ValueError(f"{owner}: empty batch in {name} (shape {tuple(x.shape)}); pass at "
                         "least one example.")
    if x.dtype.is_floating:
        finite = tf.math.is_finite(x)
        if not bool(tf.reduce_all(finite)):
            bad = int(tf.size(x)) - int(tf.math.count_nonzero(finite))
            raise NonFiniteError(
                f"{owner}: {bad} non-finite value(s) (NaN or inf) in {name}, out of "
                f"{int(tf.size(x))}."
            )


def warn_if_singular(layer, log_abs_det):
    """Eagerly: a ``RuntimeWarning`` when an exact ``log|det|`` is not finite — ``-inf`` for a
    numerically singular matrix (the likelihood is then infinite), NaN for non-finite weights. The
    value is returned unchanged; a near-singular but invertible matrix gives a finite number."""
    if not tf.executing_eagerly() or not hasattr(log_abs_det, "numpy"):
        return log_abs_det
    values = np.asarray(log_abs_det)
    if np.all(np.isfinite(values)):
        return log_abs_det
    if np.any(np.isnan(values)):
        reason = "NaN: the layer's weights are not finite (a diverged run?)"
    else:
        reason = ("-inf: the weight matrix is numerically singular, so exact likelihoods through "
                  "this layer are infinite and its exact inverse does not exist")
    warnings.warn(f"{layer.name}: exact log|det| is {reason}.", RuntimeWarning, stacklevel=3)
    return log_abs_det


def check_event_shape(layer, shape, name, expected):
    """``ValueError`` unless ``shape`` is ``[batch] + expected`` (``None`` matches anything)."""
    shape = tuple(shape)
    if len(shape) != len(expected) + 1:
        raise ValueError(
            f"{layer.name}: {name} must have rank {len(expected) + 1} (batch axis + per-example "
            f"shape {expected}, as built), got shape {shape}."
        )
    got = shape[1:]
    if all(g is None or w is None or g == w for g, w in zip(got, expected)):
        return
    detail = ""
    if len(expected) == 1:
        detail = f": {got[0]} features instead of D = {expected[0]}"
    elif len(expected) == 3 and None not in (got[-1], expected[-1]) and got[-1] != expected[-1]:
        detail = f": {got[-1]} channels instead of C = {expected[-1]} (NHWC)"
    elif len(expected) == 3:
        detail = (f": spatial size {got[:2]} instead of {expected[:2]} (the log-det depends on "
                  "H×W)")
    raise ValueError(
        f"{layer.name}: {name} has per-example shape {got} but the layer was built for "
        f"{expected}{detail}. Use one layer per input shape."
    )


class FixedShapeFlowLayer(FlowLayer):
    """A flow layer fixed at build time to one per-example shape, ``event_shape``.

    ``build`` records it (``None`` for dims left free) and calls ``_build_for_shape``; later inputs
    must have the same rank and the same known dims, so a mis-assembled model fails with a clear
    ``ValueError`` instead of a shape error deep inside TensorFlow.
    """

    #: whether every per-example dim must be known at build time
    _needs_known_shape = False

    def build(self, input_shape):
        self._build_for_shape(self._record_event_shape(input_shape))

    def _record_event_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(
                f"{self.name}: inputs need a batch axis and at least one feature axis "
                f"(rank >= 2), got shape {input_shape}."
            )
        if self.input_rank is not None and len(input_shape) != self.input_rank:
            raise ValueError(
                f"{self.name}: inputs must have rank {self.input_rank} "
                f"({self._layout_description()}), got shape {input_shape}."
            )
        if self._needs_known_shape and any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"{self.name}: {type(self).__name__} needs a fully known per-example shape "
                f"({self._layout_description()}), got {input_shape}."
            )
        self.event_shape = tuple(None if d is None else int(d) for d in input_shape[1:])
        return self.event_shape

    def _build_for_shape(self, event_shape):
        """Hook: create weights / validate sizes for the per-example shape."""

    def _expected_shape(self, name):
        """Per-example shape that ``name`` ("x" or "z") must have."""
        return self.event_shape

    def _check_shape(self, shape, name):
        check_event_shape(self, shape, name, self._expected_shape(name))
