r"""The context of a conditional flow ``p(x | c)``: encoding, checks, broadcasting and the
conditional base, in one module (used by ``FlowModel``, the flow layers, the TFP views and
export).

A conditional ``FlowModel`` takes integer labels ``y ∈ {0, …, K−1}`` (``num_classes=K``) or real
vectors ``c ∈ ℝᵈ`` (``context_dim=d``). The layers and the base see one encoding, a
``[batch, width]`` float tensor:

.. math::

    c = \mathrm{onehot}(y, K) \quad\text{(labels)}, \qquad c = c \quad\text{(vectors)},

handed to every layer that declares ``uses_context`` (couplings, SplitPrior) and to the base
:math:`p(z \mid c) = \mathcal N(z;\ \mu(c),\ \mathrm{diag}\,\sigma(c)^2)`
(:class:`ConditionalNormal`). A context has one row per example; one label or one row given
for ``n`` samples is repeated (:func:`broadcast`). Checks raise ``ValueError`` eagerly; inside a
``tf.function`` the value checks (label range, rows) are graph assertions with the same words
(:data:`LABEL_RANGE`, :data:`CONTEXT_BATCH`), which a served SavedModel raises too.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from snf_tf.checks import check_batch_values, check_positive_int

__all__ = ["CONTEXT_BATCH", "LABEL_RANGE", "ConditionalNormal", "broadcast",
           "check_data_contexts", "check_layer_context", "check_widths", "encode", "repeat_rows",
           "split_batch"]

#: the graph assertion of a label outside [0, num_classes) (and the start of the eager message)
LABEL_RANGE = "FlowModel: a label is out of range"
#: the graph assertion of a context whose row count is not the batch's
CONTEXT_BATCH = "FlowModel: the context's batch differs from the data's"

_PAIRS = ("FlowModel: this model is conditional: train and evaluate it on (x, y) pairs (a "
          "dataset of (image, label) or fit(x, y)).")


def check_widths(flow_layers, num_classes=None, context_dim=None):
    """``(num_classes, context_dim)`` of a ``FlowModel`` over ``flow_layers``, as ints or None:
    each a positive int, not both, and every conditional layer taking the width the model gives
    (``num_classes`` for labels, ``context_dim`` for vectors)."""
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes", "FlowModel")
    if context_dim is not None:
        context_dim = check_positive_int(context_dim, "context_dim", "FlowModel")
    if num_classes is not None and context_dim is not None:
        raise ValueError("FlowModel: give num_classes (integer labels) or context_dim (real "
                         "vectors), not both.")
    width = num_classes or context_dim
    for layer in flow_layers:
        if layer.uses_context and width is None:
            raise ValueError(
                f"FlowModel: layer {layer.name!r} is conditional (context_dim="
                f"{layer.context_dim}); give the model num_classes or context_dim.")
        if layer.uses_context and layer.context_dim != width:
            raise ValueError(
                f"FlowModel: layer {layer.name!r} takes a context of width "
                f"{layer.context_dim}, the model gives {width} (num_classes / context_dim).")
    return num_classes, context_dim


def encode(context, num_classes=None, context_dim=None, batch=None, static_batch=None,
           dtype="float32"):
    """``[batch, width]`` in ``dtype``: ``onehot(y, num_classes)`` for labels, the vectors for
    ``context_dim``; None for an unconditional model (neither given).

    Checks: a context is given exactly when the model is conditional; labels are integers in
    ``[0, num_classes)`` of shape ``[batch]`` (or ``[batch, 1]``), vectors finite floats of shape
    ``[batch, context_dim]``; one row per example (``static_batch`` if known, else ``batch`` in a
    graph). Eagerly each raises ``ValueError``; in a graph the range and rows are assertions."""
    if num_classes is None and context_dim is None:
        if context is not None:
            raise ValueError("FlowModel: this model is unconditional and takes no context; "
                             "build it with num_classes=... or context_dim=... to model "
                             "p(x | context).")
        return None
    if context is None:
        kind = (f"integer labels in [0, {num_classes})" if num_classes else
                f"[batch, {context_dim}] float vectors")
        raise ValueError(f"FlowModel: this model is conditional and needs context= ({kind}).")
    context = tf.convert_to_tensor(context)
    eager = tf.executing_eagerly()
    if num_classes is not None:
        if not context.dtype.is_integer:
            raise ValueError(f"FlowModel: class labels must be integers, got dtype "
                             f"{context.dtype.name} (for real-valued context build the model "
                             "with context_dim=...).")
        if context.shape.rank == 2 and context.shape[-1] == 1:
            context = context[:, 0]
        if context.shape.rank != 1:
            raise ValueError(f"FlowModel: labels must have shape [batch], got "
                             f"{tuple(context.shape)}.")
        labels = tf.cast(context, tf.int64)
        if eager:
            values = labels.numpy()
            bad = values[(values < 0) | (values >= num_classes)]
            if bad.size:
                raise ValueError(f"{LABEL_RANGE}: labels must be in [0, {num_classes}), got "
                                 f"{sorted(set(bad.tolist()))[:5]}.")
        else:
            with tf.control_dependencies([
                    tf.debugging.assert_non_negative(labels, message=LABEL_RANGE),
                    tf.debugging.assert_less(labels, tf.constant(num_classes, tf.int64),
                                             message=LABEL_RANGE)]):
                labels = tf.identity(labels)
        context = tf.one_hot(labels, num_classes, dtype=dtype)
    else:
        if not context.dtype.is_floating:
            raise ValueError(f"FlowModel: the context must be float vectors, got dtype "
                             f"{context.dtype.name} (for class labels build the model with "
                             "num_classes=...).")
        if context.shape.rank != 2 or context.shape[-1] != context_dim:
            raise ValueError(f"FlowModel: the context must have shape [batch, {context_dim}], "
                             f"got {tuple(context.shape)}.")
        check_batch_values(context, "FlowModel", "the context")
        context = tf.cast(context, dtype)
    rows = context.shape[0]
    if static_batch is not None and rows is not None and rows != static_batch:
        raise ValueError(f"{CONTEXT_BATCH}: {rows} context rows for {static_batch} examples; "
                         "give one label or vector per example.")
    if not eager:
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(context)[0], tf.cast(batch, tf.int32), message=CONTEXT_BATCH)]):
            context = tf.identity(context)
    return context


def check_layer_context(layer, context, x=None):
    """The context of one flow layer's call: a ``[batch, layer.context_dim]`` tensor in the
    layer's dtype for a conditional layer (``layer.uses_context``), None for any other.
    ``ValueError`` if it is missing, of the wrong rank, width or dtype, not finite, or (given
    ``x``) of another batch than ``x``; or if given to a layer without one."""
    if not layer.uses_context:
        if context is not None:
            raise ValueError(f"{layer.name}: {type(layer).__name__} takes no context (it is "
                             "not conditional); pass context=None.")
        return None
    if context is None:
        raise ValueError(f"{layer.name}: this {type(layer).__name__} is conditional "
                         f"(context_dim={layer.context_dim}) and needs a context: pass "
                         f"context=[batch, {layer.context_dim}] floats.")
    context = tf.convert_to_tensor(context)
    if not context.dtype.is_floating:
        raise ValueError(f"{layer.name}: the context must be floats (a one-hot label or a "
                         f"vector), got dtype {context.dtype.name}.")
    if context.shape.rank != 2 or context.shape[-1] != layer.context_dim:
        raise ValueError(f"{layer.name}: the context must have shape [batch, "
                         f"{layer.context_dim}], got {tuple(context.shape)}.")
    batch = None if x is None else x.shape[0]
    if batch is not None and context.shape[0] is not None and batch != context.shape[0]:
        raise ValueError(f"{layer.name}: the context has {context.shape[0]} rows for a batch "
                         f"of {batch}; give one context row per example.")
    check_batch_values(context, layer.name, "the context")
    return tf.cast(context, layer.compute_dtype)


def broadcast(context, n):
    """The context of ``n`` examples from one given for all of them: a scalar integer label
    becomes ``n`` labels, a context of one row ``n`` rows; any other context is returned as it
    is (:func:`encode` checks its rows). ``n`` an int or an int32 scalar tensor."""
    if context is None:
        return None
    context = tf.convert_to_tensor(context)
    count = tf.reshape(tf.cast(n, tf.int32), [1])
    if context.shape.rank == 0:
        return tf.fill(count, context) if context.dtype.is_integer else context
    if context.shape.rank is None:
        return context
    shape = tf.concat([count, tf.shape(context)[1:]], axis=0)
    if context.shape[0] is not None:
        return tf.broadcast_to(context, shape) if context.shape[0] == 1 else context
    return tf.cond(tf.equal(tf.shape(context)[0], 1), lambda: tf.broadcast_to(context, shape),
                   lambda: context)


def repeat_rows(context, rows, owner):
    """An encoded ``[given, width]`` context for ``rows = k · given`` examples that hold ``k``
    samples of each of its rows in turn (TFP's ``sample(k)`` of a batch, flattened): the rows
    tiled ``k`` times. Eagerly ``ValueError`` unless ``given`` divides ``rows``."""
    given = tf.shape(context)[0]
    if tf.executing_eagerly() and int(rows) % int(given):
        raise ValueError(f"{owner}: {int(rows)} examples for a context of {int(given)} rows; "
                         "give one row per example (or k examples per row).")
    return tf.tile(context, [rows // given, 1])


def split_batch(data, conditional):
    """``(x, context)`` of a batch of ``fit`` / ``evaluate``: ``(x, y)`` pairs for a
    conditional model (``ValueError`` without ``y``); an unconditional model takes ``x`` and
    ignores anything after it."""
    pair = isinstance(data, (tuple, list))
    if conditional and (not pair or len(data) < 2 or data[1] is None):
        raise ValueError(_PAIRS)
    if not pair:
        return data, None
    return data[0], (data[1] if conditional else None)


def check_data_contexts(x, y, where, num_classes=None, context_dim=None):
    """Before any step of a conditional model's ``fit`` / ``evaluate`` (``where``): every
    context of the data is checked as :func:`encode` does (``ValueError`` otherwise), so a bad
    label never trains. Arrays at once (``x`` may be an ``(x, y)`` pair); a finite ``tf.data``
    dataset in one pass over its contexts (the images are not decoded twice: only the second
    component is read); an infinite one at its first batch (later batches are asserted in the
    step, except under XLA). Generators and PyDatasets are checked per batch in the step."""
    def check(context, rows):
        encode(context, num_classes, context_dim, rows, rows)

    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        if not isinstance(spec, (tuple, list)) or len(spec) < 2:
            raise ValueError(f"FlowModel.{where}: this model is conditional: the dataset must "
                             "yield (x, y) pairs, e.g. (image, label).")
        counted = x.map(lambda *batch: (tf.shape(batch[0])[0], batch[1]))
        if int(x.cardinality()) < 0:  # infinite or unknown: the first batch only
            counted = counted.take(1)
        for number, (rows, context) in enumerate(counted):
            try:
                check(context, int(rows))
            except ValueError as error:
                raise ValueError(f"FlowModel.{where}: batch {number + 1} of the data: "
                                 f"{error}") from None
        return
    if x is None or isinstance(x, (tuple, list)) and not hasattr(x, "shape"):
        if isinstance(x, (tuple, list)) and len(x) > 1:
            x, y = x[0], x[1]
        else:
            return
    if y is None:
        raise ValueError(f"FlowModel.{where}: this model is conditional: give the contexts "
                         "too (fit(x, y) or a dataset of (x, y) pairs).")
    try:
        check(y, len(x))
    except ValueError as error:
        raise ValueError(f"FlowModel.{where}: {error}") from None


@keras.saving.register_keras_serializable(package="snf_tf")
class ConditionalNormal(keras.layers.Layer):
    r"""The learned conditional base of a conditional flow:
    :math:`p(z \mid c) = \mathcal N\big(z;\ \mu(c),\ \mathrm{diag}\,\sigma(c)^2\big)` with
    ``[μ, log σ] = c @ kernel + bias`` (zero-initialised: N(0, I) before training). With a one-hot
    ``c`` (class labels) this is a table of one mean and one log-scale per class and latent
    dimension, the class-conditional prior of Glow (Kingma & Dhariwal 2018, §5).

    Args:
        latent_shape: per-example shape of ``z``.
        context_dim: width of ``c``.
    """

    def __init__(self, latent_shape, context_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_shape = tuple(int(d) for d in latent_shape)
        self.context_dim = int(context_dim)
        size = int(np.prod(self.latent_shape))
        self.kernel = self.add_weight(name="kernel", shape=(self.context_dim, 2 * size),
                                      initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(2 * size,), initializer="zeros")

    def parameters(self, context):
        """``(μ, log σ)``, each ``[batch] + latent_shape``."""
        h = tf.matmul(tf.cast(context, self.compute_dtype), tf.convert_to_tensor(self.kernel))
        mean, log_scale = tf.split(h + tf.convert_to_tensor(self.bias), 2, axis=-1)
        shape = tf.concat([tf.shape(context)[:1], tf.constant(self.latent_shape)], axis=0)
        return tf.reshape(mean, shape), tf.reshape(log_scale, shape)

    def log_prob(self, z, context):
        """``log p(z | c)`` summed over the latent dims: ``[batch]``."""
        mean, log_scale = self.parameters(context)
        standard = (z - mean) * tf.exp(-log_scale)
        terms = -0.5 * tf.square(standard) - log_scale - 0.5 * math.log(2 * math.pi)
        return tf.reduce_sum(tf.reshape(terms, [tf.shape(z)[0], -1]), axis=-1)

    def from_standard(self, noise, context):
        """``μ(c) + σ(c)·noise``: a latent of ``p(z | c)`` from standard-normal (or, for a
        temperature T, N(0, T²)) ``noise``."""
        mean, log_scale = self.parameters(context)
        return mean + tf.exp(log_scale) * noise

    def call(self, context):
        return self.parameters(context)

    def get_config(self):
        config = super().get_config()
        config.update(latent_shape=list(self.latent_shape), context_dim=self.context_dim)
        return config
