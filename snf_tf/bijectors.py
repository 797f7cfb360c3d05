"""TensorFlow Probability views of snf_tf flow layers and models (``docs/design.md``).

A class cannot be both a Keras layer and a ``tfb.Bijector`` (their ``__call__``, variable
tracking and ``name`` conventions collide), so the Keras layer owns
the variables and :class:`FlowBijector` is a thin ``tfb.Bijector`` *view* that reads them on every
call. TFP's direction convention is the generative one:

- bijector ``forward``  = z → x (the layer's ``inverse``: the learned inverse R of SNF layers unless
  ``exact_inverse=True``),
- bijector ``inverse``  = x → z (the layer's ``forward``, through W),
- ``inverse_log_det_jacobian(x)`` = the layer's log-det at x (for SNF layers with ``exact=False``
  the value-zero surrogate whose gradient is the self-normalized one, so gradients through TFP equal
  the model's own training gradients; ``exact=True`` gives the true value),
- ``forward_log_det_jacobian(z)`` = ``−inverse_log_det_jacobian(forward(z))``, i.e. at the point
  the view actually maps z to.

**No caching.** TFP caches ``forward``/``inverse`` pairs by tensor identity; with a learned inverse
that hides W (``log_prob(sample())`` would reuse the sampled z instead of recomputing x → z through
W) and returns stale values after a weight update when one input tensor is reused. The views and
:class:`Chain` therefore carry a cache that never stores anything (:class:`_NoCache`); a stock
``tfb.Chain`` around our views *does* cache at the chain level — use :class:`snf_tf.bijectors.Chain`
(a drop-in ``tfb.Chain``) when a chain contains learned inverses.

**SplitPrior** factors dimensions out; it is not a bijection, so ``FlowBijector(split_prior)``
raises. ``FlowModel.as_bijector`` / ``as_distribution`` include it as a *surjective* step: its
inverse keeps half of the channels and its "inverse log-det" is the layer's term (coupling log-det +
log N of the dropped half, as in ``FlowModel.log_prob``); its forward samples the dropped half from
N(0, T²). Its ``forward_log_det_jacobian`` raises; the distribution's
``experimental_sample_and_log_prob`` samples and then evaluates ``log_prob`` (through W), which is
also what SNF models need.

**Conditional** layers and models: a view holds the (encoded) context it applies,
``FlowBijector(layer, context=c)`` with ``c`` of shape ``[rows, context_dim]``; an input of
``k · rows`` examples (e.g. ``sample(k)`` of a batch of contexts) uses each row for its ``k``
examples. ``FlowModel.as_distribution(context=y)`` is then the batch of distributions
``p(x | y_i)`` (batch shape ``[len(y)]``; ``[]`` for one label) over the learned conditional base.

When to use the views: interop with TFP code (composing with stock bijectors,
``TransformedDistribution`` APIs), sampling and evaluation. Training goes through the Keras model
(``FlowModel.fit``): ``TransformedDistribution.trainable_variables`` does not see Keras 3 variables,
although gradients taken with a ``tf.GradientTape`` w.r.t. ``model.trainable_weights`` flow through
the views.

:class:`snf_tf.layers.RealNVPCoupling` goes the other way: a flow layer (trainable inside
``FlowModel``) whose transform is a stock ``tfb.RealNVP`` with Keras 3 ``Dense`` networks.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from snf_tf import context as conditioning
from snf_tf._compat import BijectorCache, ChainBase, TransformedDistributionBase
from snf_tf.checks import check_temperature
from snf_tf.layers.base import FlowLayer
from snf_tf.layers.realnvp import RealNVPCoupling

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["Chain", "FlowBijector", "FlowDistribution", "RealNVPCoupling", "model_bijector",
           "model_distribution"]


class _NoCache(BijectorCache):
    """A TFP bijector cache that never stores anything: every call recomputes.

    Bound as the class attribute ``_cache`` (TFP's own mechanism: ``Bijector._cache`` is a
    descriptor returning a cache bound to the instance), so it survives copies of the bijector.
    """

    def forward(self, x, **kwargs):
        return self.bijector._forward(x, **kwargs)  # pylint: disable=protected-access

    def inverse(self, y, **kwargs):
        return self.bijector._inverse(y, **kwargs)  # pylint: disable=protected-access

    def forward_attributes(self, x, **kwargs):
        return {}

    def inverse_attributes(self, y, **kwargs):
        return {}


def _event_shape(layer):
    """Per-example input (data-side) shape of a built flow layer."""
    if not layer.built:
        raise ValueError(
            f"{layer.name}: build the layer (call it on data once, or build the FlowModel) before "
            "taking a TFP view of it: the view needs its event shape.")
    return tuple(layer.event_shape)


def _per_example(fn, t, event_rank):
    """Apply ``fn`` (a function of ``[batch] + event`` tensors returning a tuple of tensors with a
    leading batch axis) to ``t`` with any number (≥ 0) of leading batch axes."""
    rank = t.shape.rank
    if rank == event_rank + 1:
        return fn(t)
    if rank is None or rank < event_rank:
        raise ValueError(f"expected a tensor with at least {event_rank} event dims, got shape "
                         f"{t.shape}.")
    batch_shape = tf.shape(t)[:rank - event_rank]
    static_batch = t.shape[:rank - event_rank]
    event = [d if d is not None else tf.shape(t)[rank - event_rank + i]
             for i, d in enumerate(t.shape[rank - event_rank:])]
    flat = tf.reshape(t, [-1] + event)
    flat.set_shape([None] + list(t.shape[rank - event_rank:]))
    outputs = fn(flat)
    restored = []
    for out in outputs:
        new = tf.reshape(out, tf.concat([batch_shape, tf.shape(out)[1:]], 0))
        new.set_shape(static_batch.concatenate(out.shape[1:]))
        restored.append(new)
    return tuple(restored)


class FlowBijector(tfb.Bijector):
    """A ``tfb.Bijector`` view of a flow layer (generative direction: forward = z → x).

    Args:
        layer: a built :class:`snf_tf.layers.FlowLayer` (not ``SplitPrior``, which is not a
            bijection: use ``FlowModel.as_distribution``).
        exact: log-det mode of the normalizing direction: ``False`` = the cheap training path
            (SNF layers: value 0, self-normalized gradient), ``True`` = the true log-det.
        exact_inverse: ``forward`` (z → x) through an exact solve instead of the learned inverse R;
            defaults to ``exact``.
        training: passed to the layer's ``forward`` (e.g. Dequantize adds noise when True).
        context: a conditional layer's context, ``[rows, context_dim]`` floats (required for
            conditional layers, refused by others).

    The view holds no variables of its own and reads the layer's at every call (nothing is cached).
    Inputs may have any number of leading batch axes (including none).
    """

    _cache = _NoCache()

    def __init__(self, layer, exact=False, exact_inverse=None, training=False,
                 validate_args=False, name=None, context=None):
        parameters = dict(locals())
        if not isinstance(layer, FlowLayer):
            raise ValueError(f"FlowBijector: {layer!r} is not a snf_tf flow layer.")
        self._context = conditioning.check_layer_context(layer, context)
        if layer.samples_on_inverse and not self._allows_sampling_inverse:
            raise ValueError(
                f"FlowBijector: {layer.name} ({type(layer).__name__}) drops dimensions and is not "
                "a bijection, so it has no bijector view. FlowModel.as_distribution() / "
                "as_bijector() include it as a surjective step (log N of the dropped half in the "
                "inverse direction, sampling it in the forward direction).")
        self._layer = layer
        self._exact = bool(exact)
        self._exact_inverse = self._exact if exact_inverse is None else bool(exact_inverse)
        self._training = bool(training)
        self._x_event = _event_shape(layer)
        self._z_event = tuple(layer.compute_output_shape((None,) + self._x_event))[1:]
        self._same_shape = self._z_event == self._x_event
        super().__init__(
            forward_min_event_ndims=len(self._z_event),
            inverse_min_event_ndims=len(self._x_event),
            is_constant_jacobian=layer.constant_jacobian,
            validate_args=validate_args,
            dtype=tf.as_dtype(layer.compute_dtype),
            parameters=parameters,
            name=name or f"{layer.name}_bijector",
        )

    _allows_sampling_inverse = False

    @property
    def layer(self):
        """The flow layer this view reads."""
        return self._layer

    @property
    def exact(self):
        return self._exact

    @property
    def exact_inverse(self):
        return self._exact_inverse

    # -- the maps ---------------------------------------------------------------------------
    def _context_for(self, t):
        """``{"context": ...}`` with one row per example of ``t`` (the view's rows, each repeated
        for the k samples of a ``k · rows`` input), ``{}`` for unconditional layers."""
        if self._context is None:
            return {}
        return {"context": conditioning.repeat_rows(self._context, tf.shape(t)[0], self.name)}

    def _layer_inverse(self, z):
        return self._layer.inverse(z, exact=self._exact_inverse, **self._context_for(z))

    def _forward(self, z):
        return _per_example(lambda t: (self._layer_inverse(t),), z, len(self._z_event))[0]

    def _normalize(self, x):
        """``(z, log_det)`` of the layer at x, any leading batch axes."""
        return _per_example(
            lambda t: self._layer.forward(t, exact=self._exact, training=self._training,
                                          **self._context_for(t)),
            x, len(self._x_event))

    def _inverse(self, x):
        return self._normalize(x)[0]

    def _inverse_log_det_jacobian(self, x):
        return self._normalize(x)[1]

    def _forward_log_det_jacobian(self, z):
        return -self._inverse_log_det_jacobian(self._forward(z))

    # -- shapes -----------------------------------------------------------------------------
    # The layers are fixed to one per-example shape; dims left free at build time (H×W of
    # channel-only layers) are taken from the argument where the ranks agree.
    @staticmethod
    def _fill(target, given):
        given = tuple(given) if given is not None and given.rank is not None else None
        if given is None or len(given) != len(target):
            return tf.TensorShape(target)
        return tf.TensorShape([g if t is None else t for t, g in zip(target, given)])

    def _forward_event_shape(self, input_shape):
        if self._same_shape:
            return input_shape
        return self._fill(self._x_event, input_shape)

    def _inverse_event_shape(self, output_shape):
        if self._same_shape:
            return output_shape
        if output_shape.rank == len(self._x_event):
            return tf.TensorShape(tuple(self._layer.compute_output_shape(
                (None,) + tuple(output_shape)))[1:])
        return tf.TensorShape(self._z_event)

    def _shape_tensor(self, shape_fn, shape_tensor):
        static = tf.get_static_value(shape_tensor)
        known = shape_fn(tf.TensorShape(None if static is None else [int(d) for d in static]))
        if known.is_fully_defined():
            return tf.constant(known.as_list(), dtype=tf.int32)
        target = known.as_list()
        if static is None and len(target) == int(shape_tensor.shape[0] or -1):
            return tf.stack([shape_tensor[i] if d is None else d for i, d in enumerate(target)])
        raise ValueError(f"{self.name}: cannot tell the event shape for input shape "
                         f"{shape_tensor}.")

    def _forward_event_shape_tensor(self, input_shape):
        if self._same_shape:
            return input_shape
        return self._shape_tensor(self._forward_event_shape, input_shape)

    def _inverse_event_shape_tensor(self, output_shape):
        if self._same_shape:
            return output_shape
        return self._shape_tensor(self._inverse_event_shape, output_shape)


class _SplitPriorView(FlowBijector):
    """Surjective view of a ``SplitPrior`` (used only inside model chains, see module docstring)."""

    _allows_sampling_inverse = True

    def __init__(self, layer, exact=False, exact_inverse=None, training=False, temperature=1.0,
                 validate_args=False, name=None, context=None):
        self._temperature = float(temperature)
        super().__init__(layer, exact=exact, exact_inverse=exact_inverse, training=training,
                         validate_args=validate_args, name=name, context=context)
        self._parameters = dict(self._parameters, temperature=temperature)

    def _layer_inverse(self, z):
        return self._layer.inverse(z, exact=self._exact_inverse, temperature=self._temperature,
                                   **self._context_for(z))

    def _forward_log_det_jacobian(self, z):
        raise NotImplementedError(
            f"{self.name}: SplitPrior samples the dropped half in the forward direction, so it has "
            "no forward log-det Jacobian. Use log_prob(x) (the distribution's "
            "experimental_sample_and_log_prob does).")


class Chain(ChainBase):
    """``tfb.Chain`` without TFP's forward/inverse cache (drop-in replacement).

    A stock chain caches ``chain.forward(z) → x`` and returns ``z`` for ``chain.inverse(x)``, which
    skips W when the chain contains learned inverses. Same arguments as ``tfb.Chain``.
    """

    _cache = _NoCache()

    def __init__(self, bijectors=None, validate_args=False, validate_event_size=True,
                 parameters=None, name=None):
        parameters = dict(locals()) if parameters is None else parameters
        super().__init__(bijectors=bijectors, validate_args=validate_args,
                         validate_event_size=validate_event_size, parameters=parameters,
                         name=name)


class FlowDistribution(TransformedDistributionBase):
    """A ``TransformedDistribution`` that scores ``y`` entirely in the normalizing direction.

    ``log_prob(y) = base.log_prob(bijector.inverse(y)) + bijector.inverse_log_det_jacobian(y)``.
    Stock TFP instead adds ``−forward_log_det_jacobian`` at the base point ``z``, which a chain
    evaluates by walking *forward* from ``z`` (through the learned inverses R): with R ≠ W⁻¹ and a
    nonlinear layer after an SNF layer that is not ``model.log_prob``. Likewise
    ``experimental_sample_and_log_prob`` samples (through R) and then calls ``log_prob`` (through
    W) instead of ``base_log_prob(z) − fldj(z)``. Use it (not a stock ``TransformedDistribution``)
    around chains that contain SNF views; ``FlowModel.as_distribution`` returns one.
    """

    def __init__(self, distribution, bijector, validate_args=False, name=None):
        parameters = dict(locals())
        super().__init__(distribution=distribution, bijector=bijector,
                         validate_args=validate_args, parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return TransformedDistributionBase._parameter_properties(dtype, num_classes=num_classes)

    def experimental_local_measure(self, y, backward_compat=False, **kwargs):
        distribution_kwargs, bijector_kwargs = self._kwargs_split_fn(kwargs)
        x = self.bijector.inverse(y, **bijector_kwargs)
        event_ndims = tf.nest.map_structure(_rank, self._event_shape_tensor(), self.event_shape)
        base_log_prob, tangent_space = self.distribution.experimental_local_measure(
            x, backward_compat=backward_compat, **distribution_kwargs)
        ildj = self.bijector.inverse_log_det_jacobian(y, event_ndims=event_ndims,
                                                      **bijector_kwargs)
        return base_log_prob + tf.cast(ildj, base_log_prob.dtype), tangent_space

    def _sample_and_log_prob(self, sample_shape, seed, **kwargs):
        y = self.sample(sample_shape, seed=seed, **kwargs)
        return y, self.log_prob(y, **kwargs)


def _rank(shape_tensor, shape):
    """The rank of an event shape: static where known (as TFP's ``prefer_static``)."""
    return tf.size(shape_tensor) if shape.rank is None else shape.rank


def _view(layer, exact, exact_inverse, training, temperature, context=None):
    context = context if layer.uses_context else None
    if layer.samples_on_inverse:
        return _SplitPriorView(layer, exact=exact, exact_inverse=exact_inverse, training=training,
                               temperature=temperature, context=context)
    return FlowBijector(layer, exact=exact, exact_inverse=exact_inverse, training=training,
                        context=context)


def _encoded_context(model, context):
    """``(encoded [rows, width] or None, whether one label was given for the whole batch)``."""
    if context is None:
        return model.encode_context(None, 0), False  # ValueError for conditional models
    context = tf.convert_to_tensor(context)
    scalar = model.num_classes is not None and context.shape.rank == 0
    if scalar:
        context = conditioning.broadcast(context, 1)
    rows = int(context.shape[0]) if context.shape.rank else 1
    return model.encode_context(context, rows, rows), scalar


def _chain(model, encoded, exact, exact_inverse, training, temperature):
    views = [_view(layer, exact, exact_inverse, training, temperature, encoded)
             for layer in model.flow_layers]
    return Chain(views, validate_event_size=False, name=f"{model.name}_bijector")


def model_bijector(model, exact=False, exact_inverse=None, training=False, temperature=1.0,
                   context=None):
    """:class:`Chain` of the views of ``model.flow_layers`` (forward = z → x, inverse = x → z);
    conditional models: the views of their conditional layers hold ``context``."""
    if not model.built:
        raise ValueError("FlowModel.as_bijector: build the model first (call it on data once).")
    check_temperature(temperature, "FlowModel.as_bijector")
    encoded, _ = _encoded_context(model, context)
    return _chain(model, encoded, exact, exact_inverse, training, temperature)


def model_distribution(model, exact=True, exact_inverse=False, temperature=1.0, context=None):
    """``TransformedDistribution`` of the model over N(0, I) on ``model.latent_shape``.

    ``log_prob(x)`` equals ``model.log_prob(x, exact=exact)``; ``sample()`` pushes base samples
    through the layers' inverses (learned R unless ``exact_inverse``), like ``model.sample``.
    Conditional models: the batch of ``p(x | y_i)`` for the rows of ``context`` (batch shape
    ``[rows]``, ``[]`` for one label) over the conditional base.
    """
    if not model.built:
        raise ValueError("FlowModel.as_distribution: build the model first (call it on data "
                         "once).")
    check_temperature(temperature, "FlowModel.as_distribution")
    encoded, scalar = _encoded_context(model, context)
    bijector = _chain(model, encoded, exact, exact_inverse, False, temperature)
    dtype = tf.as_dtype(model.compute_dtype)
    if encoded is None:
        base = tfd.Sample(tfd.Normal(tf.zeros([], dtype), tf.ones([], dtype)),
                          sample_shape=list(model.latent_shape))
    else:
        if model.base is not None:
            mean, log_scale = model.base.parameters(encoded)
            scale = tf.exp(log_scale)
        else:
            mean = tf.zeros(tf.concat([tf.shape(encoded)[:1], model.latent_shape], 0), dtype)
            scale = tf.ones_like(mean)
        if scalar:
            mean, scale = mean[0], scale[0]
        base = tfd.Independent(tfd.Normal(mean, scale),
                               reinterpreted_batch_ndims=len(model.latent_shape))
    return FlowDistribution(base, bijector, name=f"{model.name}_distribution")
