"""The private framework internals snf_tf uses, in one place.

Each name below reaches into ``tensorflow.python``, ``keras.src`` or
``tensorflow_probability.python`` because the public API has no answer to the question it asks;
each says why, and falls back where a cheap fallback exists. No other module of the library
imports those packages (``tests/test_compat.py``): when a TensorFlow, Keras or TFP release moves
one, this file is the one to change.
"""

import tensorflow as tf
import tensorflow_probability as tfp

# TFP binds a per-instance forward/inverse cache from the class attribute ``Bijector._cache``;
# there is no public way to switch it off (snf_tf.bijectors._NoCache subclasses this). No
# fallback: without the class the views cannot opt out of caching, so failing loudly is right.
from tensorflow_probability.python.internal.cache_util import BijectorCache

try:  # the class stock tfb.Chain returns for parts that are not CompositeTensors (our views)
    from tensorflow_probability.python.bijectors.chain import _Chain as ChainBase
except ImportError:  # pragma: no cover - TFP layout changed: the public class, its metaclass
    ChainBase = tfp.bijectors.Chain
try:  # likewise for TransformedDistribution
    from tensorflow_probability.python.distributions.transformed_distribution import (
        _TransformedDistribution as TransformedDistributionBase,
    )
except ImportError:  # pragma: no cover
    TransformedDistributionBase = tfp.distributions.TransformedDistribution

__all__ = ["BijectorCache", "ChainBase", "TransformedDistributionBase", "in_xla_context",
           "learning_rate_schedule", "mkl_enabled", "outside_keras_call"]


def in_xla_context() -> bool:
    """True while tracing a function compiled with ``jit_compile=True`` (where ``slogdet`` and LU
    have no kernel). No public API asks this; the fallback answers False (not under XLA)."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TF moved it
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def outside_keras_call() -> bool:
    """True unless a Keras ``Layer.__call__`` is running (its call context, which Keras keeps
    in a private global; ``add_loss`` outside a call piles up). Fallback: False (inside)."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover
        return False
    return global_state.get_global_attribute("current_call_ctx") is None


def mkl_enabled() -> bool | None:
    """Whether the loaded TensorFlow uses oneDNN (MKL) kernels: TF exposes this only through
    its pywrap test utilities. None if it cannot tell."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def learning_rate_schedule(optimizer):
    """The ``LearningRateSchedule`` object a Keras optimizer was given, or None for a float rate.
    ``optimizer.learning_rate`` answers with the schedule's current value, not the object, and no
    public attribute holds it (Keras keeps it in ``_learning_rate``)."""
    import keras

    schedule = getattr(optimizer, "_learning_rate", None)
    return schedule if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) \
        else None
