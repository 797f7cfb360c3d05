"""Argument and data checks shared by the layers, the model, the TFP views and export.

Each check returns the value it accepts (converted where it says so) or raises ``ValueError``
with a message that names its owner (``"FlowModel.sample: ..."``); the tests match those words.
Value checks run eagerly only: inside a ``tf.function`` they are either graph assertions with
the same words (:func:`check_temperature`) or no-ops (a per-step check would cost every training
step, and a non-finite value there makes the loss non-finite, which the training loop catches).

The data range of image models (``docs/design.md``, the data contract): a model that starts with
the image preprocessing takes ``[low, high)``; :func:`check_data_range` is the eager check and
``snf_tf.export`` builds the same test into the served graph from the helpers below.
"""

import contextlib
import math

import numpy as np
import tensorflow as tf

__all__ = ["NonFiniteError", "UNIT_SCALED_MIN_HIGH", "UNIT_SCALED_MIN_VALUES",
           "check_batch_values", "check_data_range", "check_fit_data", "check_inputs",
           "check_positive_int", "naming_the_producer",
           "check_temperature", "outside_data_range", "range_words", "unit_scaled_message",
           "unit_scaled_rule_applies"]

#: the unit-scale rule (:func:`check_data_range`) looks at batches of at least this many
#: values (one 8×8 image) ...
UNIT_SCALED_MIN_VALUES = 64
#: ... for models whose pixel range is [0, high) with high at least this (4-bit images and up)
UNIT_SCALED_MIN_HIGH = 16


class NonFiniteError(ValueError):
    """Inputs (or values passed between layers) hold NaN or inf: a likelihood of them would be
    silently NaN. A ``ValueError``, so callers treating bad input alike need no special case."""


def check_positive_int(value, what, owner):
    """``int(value)``, or ``ValueError(f"{owner}: {what} must be a positive int, got ...")``
    unless ``value`` is an int ≥ 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {what} must be a positive int, got {value!r}.")
    return int(value)


def check_temperature(value, where="FlowModel.sample", allow_zero=False):
    """``value`` if it is a finite number > 0 (``allow_zero``: ≥ 0, the mode), else
    ``ValueError(f"{where}: temperature must be a finite number > 0, got {value!r}")`` (``>= 0``
    with ``allow_zero``). Bools, strings and None are refused. A scalar tensor is checked by value
    eagerly; inside a ``tf.function`` it gets a graph assertion with the same words (without the
    value) and is returned through it. The one check of every temperature: ``FlowModel.sample``,
    ``inverse`` (zero allowed), the TFP views, layers that sample on inverse, ``snf-tf sample``."""
    bound = ">= 0" if allow_zero else "> 0"
    message = f"{where}: temperature must be a finite number {bound}"
    if tf.is_tensor(value) and not (tf.executing_eagerly() and hasattr(value, "numpy")):
        # a symbolic tensor (inside tf.function): an assertion in the graph
        if value.shape.rank != 0 or not (value.dtype.is_floating or value.dtype.is_integer):
            raise ValueError(f"{message}, got a {value.dtype.name} tensor of shape "
                             f"{tuple(value.shape)}")
        as_float = tf.cast(value, tf.float64)
        ok = tf.math.is_finite(as_float) & (as_float >= 0 if allow_zero else as_float > 0)
        with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
            return tf.identity(value)
    number = value
    if tf.is_tensor(value):
        number = value.numpy() if value.shape.rank == 0 else None
    valid = (not isinstance(number, (bool, np.bool_))
             and isinstance(number, (int, float, np.integer, np.floating))
             and math.isfinite(number) and (number >= 0 if allow_zero else number > 0))
    if not valid:
        raise ValueError(f"{message}, got {value!r}")
    return value


def check_batch_values(x, owner, name):
    """Eagerly: ``ValueError`` for an empty batch, :class:`NonFiniteError` for NaN or inf values
    (with their count, never the values). A no-op while tracing a ``tf.function``."""
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


@contextlib.contextmanager
def naming_the_producer(producer, direction, owner="FlowModel"):
    """Re-raise a layer's :class:`NonFiniteError` about its inputs as one about ``producer``,
    the layer that produced them in the ``direction`` ("forward" or "inverse") of a walk (eager
    calls only: traced functions do not check values). ``producer`` None: re-raised as it is."""
    try:
        yield
    except NonFiniteError as error:
        if producer is None:
            raise
        hint = ("" if direction == "forward" else
                " Its inverse is numerically unstable (a learned inverse far from W⁻¹, or a "
                "singular weight matrix); try exact_inverse=True / exact=True.")
        raise NonFiniteError(
            f"{owner}: the {direction} of layer {producer.name!r} produced non-finite values "
            f"from finite inputs ({error}).{hint}") from None


def check_inputs(x, data_shape=None, owner="FlowModel"):
    """A batch of data for a model of per-example shape ``data_shape`` (None: not built yet, any
    rank ≥ 2): ``ValueError`` for a missing batch axis (named as such), another per-example
    shape or a dtype that is not a number; then :func:`check_batch_values`."""
    rank = x.shape.rank
    if data_shape is not None and rank == len(data_shape):
        hint = "; add one with x[None]" if tuple(x.shape) == tuple(data_shape) else ""
        raise ValueError(f"{owner}: inputs need a batch axis: got shape {tuple(x.shape)}, "
                         f"the model takes {(None,) + tuple(data_shape)}{hint}.")
    if rank is None or rank < 2:
        shape = "unknown" if rank is None else tuple(x.shape)
        raise ValueError(f"{owner}: inputs need a batch axis: got shape {shape}; add one "
                         "with x[None].")
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
        raise ValueError(f"{owner}: inputs have shape {tuple(x.shape[1:])} per example but the "
                         f"model was built for {tuple(data_shape)}.")
    if not (x.dtype.is_floating or x.dtype.is_integer):
        raise ValueError(f"{owner}: inputs must be numbers, got dtype {x.dtype.name}.")
    check_batch_values(x, owner, "inputs")


def check_fit_data(x, owner="FlowModel"):
    """The shape of data given to ``fit``/``evaluate`` (an array, a tensor, a tuple of them
    or a ``tf.data`` dataset; None for generators and PyDatasets, which are not read here), after
    ``ValueError`` for an empty array or dataset and :class:`NonFiniteError` for an array with
    NaN/inf (it would turn the first step's weights into NaN)."""
    if isinstance(x, tf.data.Dataset):
        if int(x.cardinality()) == 0:
            raise ValueError(f"{owner}: the dataset is empty (cardinality 0).")
        return tf.nest.flatten(x.element_spec)[0].shape
    if isinstance(x, (tuple, list)) and x:
        x = x[0]
    if not isinstance(x, (np.ndarray, tf.Tensor)) or not hasattr(x, "shape"):
        return getattr(x, "shape", None)
    array = np.asarray(x)
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"{owner}: the data is empty (shape {array.shape}).")
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise NonFiniteError(f"{owner}: the data has {bad} non-finite value(s) (NaN or inf) "
                                 f"out of {array.size}.")
    return array.shape


# -- the data range of image models ---------------------------------------------------------------
def range_words(data_range) -> str:
    """``"pixel values in [0, 256)"``: how every message names a declared data range."""
    low, high = data_range
    return f"pixel values in [{low:g}, {high:g})"


def outside_data_range(minimum, maximum, data_range, domain):
    """Whether a batch with this min and max falls outside ``[low, high)`` and also outside the
    open ``domain`` of finite logits (the range plus the logit pre-scaling's margin, see
    :func:`snf_tf.layers.preprocess.pixel_domain`). Python numbers or (in a graph) tensors."""
    low, high = data_range
    if domain is None:
        domain = data_range
    if tf.is_tensor(minimum):
        lower_ok = tf.logical_or(minimum >= low, minimum > domain[0])
        upper_ok = tf.logical_or(maximum < high, maximum < domain[1])
        return tf.logical_not(tf.logical_and(lower_ok, upper_ok))
    return not ((minimum >= low or minimum > domain[0]) and (maximum < high or maximum < domain[1]))


def unit_scaled_rule_applies(data_range) -> bool:
    """Whether the unit-scale rule can tell images scaled to [0, 1] from real pixels of a model
    with this data range: ``[0, high)`` with ``high ≥ UNIT_SCALED_MIN_HIGH``."""
    return data_range is not None and data_range[0] == 0 and data_range[1] >= UNIT_SCALED_MIN_HIGH


def unit_scaled_message(where, data_range, size) -> str:
    """The words of the unit-scale refusal (Python and the SavedModel; ``size`` a str or int)."""
    return (f"{where}: the model takes {range_words(data_range)}, not images scaled to [0, 1] "
            f"(all {size} values of the batch lie in [0, 1]); scale them back, e.g. x * 255")


def check_data_range(x, data_range, domain=None, unit_scaled=True, owner="FlowModel"):
    """Eagerly, for a model with a ``data_range``: ``ValueError`` for values outside it (naming
    the range and the batch's min and max; values inside the logit pre-scaling's margin
    ``domain``, where the model's own samples may land, pass), and the unit-scale rule — a batch
    of at least ``UNIT_SCALED_MIN_VALUES`` values, all in [0, 1] and not all 0, for a range
    ``[0, high)`` with ``high ≥ UNIT_SCALED_MIN_HIGH``, is taken for images scaled to [0, 1]
    (real 8-bit pixels of a whole batch practically never all lie in {0, 1}; an all-black batch
    is the same in both scales and passes). ``unit_scaled=False`` leaves the rule out. A no-op
    while tracing and for ``data_range=None``."""
    if data_range is None or not tf.executing_eagerly() or not hasattr(x, "numpy"):
        return
    minimum, maximum = float(tf.reduce_min(x)), float(tf.reduce_max(x))
    if outside_data_range(minimum, maximum, data_range, domain):
        raise ValueError(f"{owner}: inputs must be {range_words(data_range)} (the model "
                         f"starts with image preprocessing), got min {minimum:.7g}, max "
                         f"{maximum:.7g}.")
    size = int(tf.size(x))
    if (unit_scaled and unit_scaled_rule_applies(data_range)
            and size >= UNIT_SCALED_MIN_VALUES and minimum >= 0 and 0 < maximum <= 1):
        raise ValueError(f"{unit_scaled_message(owner, data_range, size)} (or, for a batch that "
                         "really is this dark, set model.check_unit_scaled = False).")
