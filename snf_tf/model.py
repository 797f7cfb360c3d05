"""FlowModel: a Keras model over a stack of flow layers, with exact evaluation and sampling.

Keller et al., ICML 2021, §3-§5: train with the cheap self-normalized objective, report the exact
likelihood. ``log p(x) = log N(z; 0, I) + Σ_k log|det J_k|`` with ``z`` the output of the last
layer; layers that factor dimensions out (``SplitPrior``) add their own log-density terms to their
log-det.

Conditional flows model ``p(x | y)``: ``FlowModel(layers, num_classes=K)`` (integer labels) or
``context_dim=d`` (real vectors). The context is one-hot encoded (labels) and handed to every
layer that declares ``uses_context`` (couplings, SplitPrior); the base is then a learned
``N(μ(y), σ(y)²)`` (:class:`ConditionalNormal`; per class for labels, as class-conditional
Glow), and ``fit`` trains on ``(x, y)`` pairs.
"""

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from snf_tf import bijectors
from snf_tf.layers.base import FlowLayer, NonFiniteError, check_batch_values, check_temperature
from snf_tf.layers.preprocess import pixel_domain, pixel_range

__all__ = ["ConditionalNormal", "FlowModel", "check_temperature"]

_LN2 = math.log(2.0)

#: the unit-scale rule (:attr:`FlowModel.check_unit_scaled`) looks at batches of at least this
#: many values (one 8×8 image) ...
UNIT_SCALED_MIN_VALUES = 64
#: ... for models whose pixel range is [0, high) with high at least this (4-bit images and up)
UNIT_SCALED_MIN_HIGH = 16


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


def _step_logs(logs):
    """Keras 3 reduces multi-worker step outputs with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails on scalars (tensorflow#72388): give them a length-1 axis there."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {key: tf.reshape(value, [1]) for key, value in logs.items()}
    return logs


class _naming_the_culprit:
    """Re-raise a layer's :class:`NonFiniteError` about its inputs as one about the layer that
    produced them (eager calls only: traced functions do not check values)."""

    def __init__(self, producer, direction):
        self.producer, self.direction = producer, direction

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if self.producer is not None and kind is not None and issubclass(kind, NonFiniteError):
            hint = ("" if self.direction == "forward" else
                    " Its inverse is numerically unstable (a learned inverse far from W⁻¹, or a "
                    "singular weight matrix); try exact_inverse=True / exact=True.")
            raise NonFiniteError(
                f"FlowModel: the {self.direction} of layer {self.producer.name!r} produced "
                f"non-finite values from finite inputs ({error}).{hint}") from None
        return False


def _seed_pair(seed, k):
    """The stateless seed of the k-th random layer of one call: ``(seed, k)`` (int32)."""
    return tf.stack([tf.cast(seed, tf.int32), tf.constant(k, tf.int32)])


def _check_fit_data(x):
    """``ValueError`` for data ``fit``/``evaluate`` cannot use: an empty array or dataset, or an
    array with NaN/inf (which would turn the first step's weights into NaN)."""
    if isinstance(x, tf.data.Dataset):
        if int(x.cardinality()) == 0:
            raise ValueError("FlowModel: the dataset is empty (cardinality 0).")
        return
    if isinstance(x, (tuple, list)) and x:
        x = x[0]
    if not isinstance(x, (np.ndarray, tf.Tensor)) or not hasattr(x, "shape"):
        return
    array = np.asarray(x)
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"FlowModel: the data is empty (shape {array.shape}).")
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise NonFiniteError(f"FlowModel: the data has {bad} non-finite value(s) (NaN or inf) "
                                 f"out of {array.size}.")


_LABEL_RANGE = "FlowModel: a label is out of range"
_CONTEXT_BATCH = "FlowModel: the context's batch differs from the data's"


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


@keras.saving.register_keras_serializable(package="snf_tf")
class FlowModel(keras.Model):
    """A normalizing flow ``x → z`` from a list of flow layers and a standard-normal base.

    - ``fit``: minimises the batch-mean NLL of the cheap path (``exact=False``: SNF layers give the
      self-normalized gradient) plus every layer's λ·reconstruction loss; logs ``loss``, ``nll`` and
      ``recon`` (``nll`` is *not* the true NLL for SNF models: their log-det values are 0 in
      training).
    - ``evaluate`` (and ``fit(validation_data=...)``): the exact NLL in nats (``nll``) and bits/dim
      (``bpd``), with every layer's cached exact log-det refreshed first (outside XLA).
    - ``log_prob(x, exact=True)``, ``sample(n, ...)``, ``reconstruct(x)``, ``inverse_errors()``.

    ``forward``, ``inverse`` and ``sample`` are the only walks of the layer stack in snf_tf: the
    TFP views, the SavedModel endpoints and ``snf-tf sample`` are wrappers around them. One seed
    scheme: with an int (or int32 tensor) ``seed`` the k-th random layer met in a call (k = 0,
    1, ... in the order of the walk) draws statelessly with ``(seed, k)``; ``sample`` draws the
    latent with ``(seed, 0)`` and walks back with ``seed + 1``.

    Conditional models (``num_classes`` or ``context_dim``) take ``context=`` in every method
    above — integer labels ``[batch]`` (or one label for all of ``sample``'s examples), or float
    vectors ``[batch, context_dim]`` — and ``fit``/``evaluate`` take ``(x, y)`` pairs. Layers
    without a context (SNF, exact linear, ActNorm, ...) are unchanged by it.

    Args:
        flow_layers: the flow layers, data side first (preprocessing layers included, so their
            log-dets count in the likelihood).
        num_classes: a class-conditional model ``p(x | y)`` for integer labels ``0 ≤ y < K``
            (one-hot encoded for the layers).
        context_dim: a model conditional on real vectors of this width.
        conditional_base: conditional models: learn the base ``N(μ(y), σ(y)²)``
            (:class:`ConditionalNormal`); False keeps N(0, I) and conditions the layers only.
    """

    def __init__(self, flow_layers, num_classes=None, context_dim=None, conditional_base=True,
                 **kwargs):
        super().__init__(**kwargs)
        flow_layers = list(flow_layers)
        if not flow_layers:
            raise ValueError("FlowModel needs at least one flow layer.")
        for layer in flow_layers:
            if not isinstance(layer, FlowLayer):
                raise ValueError(
                    f"FlowModel: {layer!r} is not a snf_tf flow layer (it has no forward/inverse "
                    "with a log-det); wrap plain Keras layers in a flow layer."
                )
        for value, what in ((num_classes, "num_classes"), (context_dim, "context_dim")):
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"FlowModel: {what} must be a positive int, got {value!r}.")
        if num_classes is not None and context_dim is not None:
            raise ValueError("FlowModel: give num_classes (integer labels) or context_dim (real "
                             "vectors), not both.")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.context_dim = None if context_dim is None else int(context_dim)
        self.conditional_base = bool(conditional_base)
        width = self.num_classes or self.context_dim  # of the context the layers see
        for layer in flow_layers:
            if layer.uses_context and width is None:
                raise ValueError(
                    f"FlowModel: layer {layer.name!r} is conditional (context_dim="
                    f"{layer.context_dim}); give the model num_classes or context_dim.")
            if layer.uses_context and layer.context_dim != width:
                raise ValueError(
                    f"FlowModel: layer {layer.name!r} takes a context of width "
                    f"{layer.context_dim}, the model gives {width} (num_classes / context_dim).")
        self.flow_layers = flow_layers
        self.base = None  # the ConditionalNormal of a conditional model, made in build
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.nll_tracker = keras.metrics.Mean(name="nll")
        self.recon_tracker = keras.metrics.Mean(name="recon")
        self.bpd_tracker = keras.metrics.Mean(name="bpd")

    # -- the flow ----------------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """Whether the model is ``p(x | context)`` (``num_classes`` or ``context_dim`` given)."""
        return self.num_classes is not None or self.context_dim is not None

    def forward(self, x, exact: bool = False, training: bool = False, noise: bool | None = None,
                seed=None, context=None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(z, Σ log-det)`` of the whole stack; ``log_det`` has shape [batch]. ``noise``
        switches dequantization noise on/off (None: the layers' own rule), ``seed`` makes it
        stateless (see the class docstring); ``context`` for conditional models."""
        z, log_det, _ = self.forward_with_reconstruction(x, exact=exact, training=training,
                                                         noise=noise, seed=seed, context=context)
        return z, log_det

    def forward_with_reconstruction(self, x, exact: bool = False, training: bool = False,
                                    noise: bool | None = None, seed=None, context=None,
                                    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(z, Σ log-det, Σ λ·reconstruction)``: the reconstruction losses are returned by the
        layers (not collected with ``add_loss``, whose lists replicas of tf.distribute share)."""
        x = self._check_data(x)
        encoded = self.encode_context(context, tf.shape(x)[0], x.shape[0])
        return self._walk_forward(x, exact, training, noise, seed, encoded)

    def _walk_forward(self, x, exact, training, noise, seed, context):
        """The walk of :meth:`forward_with_reconstruction` on checked data and encoded context."""
        log_det = tf.zeros(tf.shape(x)[:1], dtype=self.compute_dtype)
        recon = tf.zeros([], dtype=self.compute_dtype)
        k = 0  # the k-th layer that draws noise gets the stateless seed (seed, k)
        for i, layer in enumerate(self.flow_layers):
            layer_seed = None
            if layer.draws_on_forward:
                layer_seed = None if seed is None else _seed_pair(seed, k)
                k += 1
            with _naming_the_culprit(self.flow_layers[i - 1] if i else None, "forward"):
                x, layer_log_det, layer_recon = layer.forward_with_reconstruction(
                    x, exact=exact, training=training, noise=noise, seed=layer_seed,
                    context=context if layer.uses_context else None)
            log_det = log_det + tf.cast(layer_log_det, log_det.dtype)
            if layer_recon is not None:
                recon = recon + tf.cast(layer_recon, recon.dtype)
        return x, log_det, recon

    def inverse(self, z, exact: bool = False, temperature: float = 1.0, seed=None,
                context=None) -> tf.Tensor:
        """``x = f⁻¹(z)`` through every layer's inverse (learned R unless ``exact``). Layers that
        factored dimensions out (SplitPrior) sample them at ``temperature``; with an int ``seed``
        the k-th of them met on the way back draws statelessly with seed ``(seed, k)``;
        ``temperature`` is a finite number ≥ 0 (0: the mode, the factored-out halves set to 0).
        Conditional models need the ``context`` (labels or vectors) of the examples."""
        if not tf.is_tensor(z):
            z = tf.convert_to_tensor(z)
        if not self.built:
            raise ValueError("FlowModel.inverse: build the model first (call it on data once).")
        temperature = check_temperature(temperature, "FlowModel.inverse", allow_zero=True)
        encoded = self.encode_context(context, tf.shape(z)[0], z.shape[0])
        return self._walk_inverse(z, exact, temperature, seed, encoded)

    def _walk_inverse(self, z, exact, temperature, seed, context):
        """The walk of :meth:`inverse` with an encoded context."""
        k = 0
        previous = None
        for layer in reversed(self.flow_layers):
            layer_seed = None
            if layer.samples_on_inverse:
                layer_seed = None if seed is None else _seed_pair(seed, k)
                k += 1
            with _naming_the_culprit(previous, "inverse"):
                z = layer.inverse(z, exact=exact, temperature=temperature, seed=layer_seed,
                                  context=context if layer.uses_context else None)
            previous = layer
        return z

    def encode_context(self, context, batch, static_batch=None):
        """The context as the layers see it: one-hot ``[batch, num_classes]`` for labels,
        ``[batch, context_dim]`` floats for vectors, None for unconditional models. Checks:
        a context is given exactly when the model is conditional; labels are integers in
        ``[0, num_classes)`` and vectors finite floats of the right width; one row per example
        (``batch``). Eagerly every check raises ``ValueError``; inside ``tf.function`` the value
        checks (range, batch) are graph assertions with the same message."""
        if not self.conditional:
            if context is not None:
                raise ValueError("FlowModel: this model is unconditional and takes no context; "
                                 "build it with num_classes=... or context_dim=... to model "
                                 "p(x | context).")
            return None
        if context is None:
            kind = (f"integer labels in [0, {self.num_classes})" if self.num_classes else
                    f"[batch, {self.context_dim}] float vectors")
            raise ValueError(f"FlowModel: this model is conditional and needs context= ({kind}).")
        if not tf.is_tensor(context):
            context = tf.convert_to_tensor(context)
        eager = tf.executing_eagerly()
        if self.num_classes is not None:
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
                bad = values[(values < 0) | (values >= self.num_classes)]
                if bad.size:
                    raise ValueError(f"{_LABEL_RANGE}: labels must be in [0, "
                                     f"{self.num_classes}), got {sorted(set(bad.tolist()))[:5]}.")
            else:
                with tf.control_dependencies([
                        tf.debugging.assert_non_negative(labels, message=_LABEL_RANGE),
                        tf.debugging.assert_less(labels, tf.constant(self.num_classes, tf.int64),
                                                 message=_LABEL_RANGE)]):
                    labels = tf.identity(labels)
            context = tf.one_hot(labels, self.num_classes, dtype=self.compute_dtype)
        else:
            if not context.dtype.is_floating:
                raise ValueError(f"FlowModel: the context must be float vectors, got dtype "
                                 f"{context.dtype.name} (for class labels build the model with "
                                 "num_classes=...).")
            if context.shape.rank != 2 or context.shape[-1] != self.context_dim:
                raise ValueError(f"FlowModel: the context must have shape [batch, "
                                 f"{self.context_dim}], got {tuple(context.shape)}.")
            check_batch_values(context, "FlowModel", "the context")
            context = tf.cast(context, self.compute_dtype)
        rows = context.shape[0]
        if static_batch is not None and rows is not None and rows != static_batch:
            raise ValueError(f"{_CONTEXT_BATCH}: {rows} context rows for {static_batch} "
                             "examples; give one label or vector per example.")
        if not eager:
            with tf.control_dependencies([tf.debugging.assert_equal(
                    tf.shape(context)[0], tf.cast(batch, tf.int32), message=_CONTEXT_BATCH)]):
                context = tf.identity(context)
        return context

    #: refuse eager batches of images scaled to [0, 1] (the unit-scale rule, see
    #: :meth:`_check_data_range`); set False on a model (not saved) to score such a batch anyway.
    #: A SavedModel exported while it is False leaves the rule out of its graph.
    check_unit_scaled = True

    @property
    def data_range(self) -> tuple[float, float] | None:
        """``(low, high)``: the model takes data in ``[low, high)`` — ``(0.0, 256.0)`` for a
        model that starts with the image preprocessing (every ``snf_tf.models`` builder; see
        :func:`snf_tf.layers.preprocess.pixel_range`); None: any finite values."""
        return pixel_range(self.flow_layers)

    def _check_data(self, x):
        if not tf.is_tensor(x):
            x = tf.convert_to_tensor(x)
        rank = x.shape.rank
        if self.built and rank == len(self.data_shape):
            hint = "; add one with x[None]" if tuple(x.shape) == self.data_shape else ""
            raise ValueError(f"FlowModel: inputs need a batch axis: got shape {tuple(x.shape)}, "
                             f"the model takes {(None,) + self.data_shape}{hint}.")
        if rank is None or rank < 2:
            shape = "unknown" if rank is None else tuple(x.shape)
            raise ValueError(f"FlowModel: inputs need a batch axis: got shape {shape}; add one "
                             "with x[None].")
        if not self.built:
            self.build(tuple(x.shape))
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"FlowModel: inputs have shape {tuple(x.shape[1:])} per example but the model was "
                f"built for {self.data_shape}."
            )
        if not (x.dtype.is_floating or x.dtype.is_integer):
            raise ValueError(f"FlowModel: inputs must be numbers, got dtype {x.dtype.name}.")
        check_batch_values(x, "FlowModel", "inputs")
        self._check_data_range(x)
        return tf.cast(x, self.compute_dtype)

    def _check_data_range(self, x):
        """Eagerly, for models with a :attr:`data_range`: ``ValueError`` for values outside it
        (naming the range and the batch's min and max; values within the logit pre-scaling's
        margin, where the model's own samples may land, pass), and the unit-scale rule — a batch
        of at least ``UNIT_SCALED_MIN_VALUES`` values, all in [0, 1] and not all 0, for a model
        whose range is ``[0, high)`` with ``high ≥ UNIT_SCALED_MIN_HIGH``, is taken for images
        scaled to [0, 1] (real 8-bit pixels of a whole batch practically never all lie in {0, 1}; an
        all-black batch is the same in both scales and passes). ``check_unit_scaled = False``
        switches the rule off. A no-op while tracing (no value checks per training step)."""
        data_range = self.data_range
        if data_range is None or not tf.executing_eagerly() or not hasattr(x, "numpy"):
            return
        minimum, maximum = float(tf.reduce_min(x)), float(tf.reduce_max(x))
        if outside_data_range(minimum, maximum, data_range, pixel_domain(self.flow_layers)):
            raise ValueError(f"FlowModel: inputs must be {range_words(data_range)} (the model "
                             f"starts with image preprocessing), got min {minimum:.7g}, max "
                             f"{maximum:.7g}.")
        size = int(tf.size(x))
        if (self.check_unit_scaled and unit_scaled_rule_applies(data_range)
                and size >= UNIT_SCALED_MIN_VALUES and minimum >= 0 and 0 < maximum <= 1):
            raise ValueError(f"{unit_scaled_message('FlowModel', data_range, size)} (or, for a "
                             "batch that really is this dark, set model.check_unit_scaled = "
                             "False).")

    def build(self, input_shape):
        self._build_from_shape(tuple(input_shape))

    def _build_from_shape(self, input_shape):
        if any(d is None for d in input_shape[1:]):
            raise ValueError(f"FlowModel: the per-example shape must be known, got {input_shape}.")
        self.data_shape = tuple(int(d) for d in input_shape[1:])
        shape = (None,) + self.data_shape
        for layer in self.flow_layers:
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        self.latent_shape = tuple(int(d) for d in shape[1:])
        if self.conditional and self.conditional_base and self.base is None:
            self.base = ConditionalNormal(self.latent_shape, self.num_classes or self.context_dim,
                                          dtype=self.dtype_policy, name="conditional_base")
        self.built = True

    @property
    def data_dimension(self):
        return int(np.prod(self.data_shape))

    def base_log_prob(self, z, encoded_context=None):
        """``log N(z; 0, I)`` summed over all non-batch dims; for a conditional base
        ``log N(z; μ(c), σ(c)²)`` with ``encoded_context`` c (from :meth:`encode_context`)."""
        if self.base is not None:
            if encoded_context is None:
                raise ValueError("FlowModel.base_log_prob: the conditional base needs the "
                                 "encoded context (FlowModel.encode_context).")
            return self.base.log_prob(z, encoded_context)
        normal = tfp.distributions.Normal(tf.zeros([], z.dtype), tf.ones([], z.dtype))
        return tf.reduce_sum(tf.reshape(normal.log_prob(z), [tf.shape(z)[0], -1]), axis=-1)

    def log_prob(self, x, exact: bool = True, training: bool = False, noise: bool | None = None,
                 seed=None, context=None) -> tf.Tensor:
        """Per-example ``log p(x)`` (conditional models: ``log p(x | context)``) in nats on the
        data scale (exact by default; ``noise`` and ``seed`` as in :meth:`forward`)."""
        base, log_det, _ = self._forward_and_base(x, exact, training, noise, seed, context)
        return base + log_det

    def _forward_and_base(self, x, exact, training, noise=None, seed=None, context=None):
        """``(base log-density, Σ log-det, Σ λ·reconstruction)`` of a batch: the one place the
        flow and the base meet (log_prob, train and test steps)."""
        x = self._check_data(x)
        encoded = self.encode_context(context, tf.shape(x)[0], x.shape[0])
        z, log_det, recon = self._walk_forward(x, exact, training, noise, seed, encoded)
        return self.base_log_prob(z, encoded), log_det, recon

    def call(self, inputs, training=False, context=None):
        """Per-example log-likelihood: the cheap path when training, the exact one otherwise."""
        return self.log_prob(inputs, exact=not training, training=training, context=context)

    @property
    def _default_save_signature(self):
        # Keras traces ``self(x)`` as a SavedModel's default signature; a conditional model needs
        # its context there, and its exported endpoints (snf_tf.export) take it explicitly.
        return None if self.conditional else super()._default_save_signature

    def bits_per_dim(self, nats):
        """Convert an NLL in nats per example to bits per dimension."""
        return nats / (self.data_dimension * _LN2)

    # -- TensorFlow Probability views ---------------------------------------------------------
    def as_bijector(self, exact=False, exact_inverse=None, temperature=1.0, context=None):
        """``snf_tf.bijectors.Chain`` of the layers' TFP views (forward = z → x, inverse = x → z);
        see :func:`snf_tf.bijectors.model_bijector`. ``temperature``: a finite number > 0."""
        check_temperature(temperature, "FlowModel.as_bijector")
        return bijectors.model_bijector(self, exact=exact, exact_inverse=exact_inverse,
                                        temperature=temperature, context=context)

    def as_distribution(self, exact=True, exact_inverse=False, temperature=1.0, context=None):
        """``tfd.TransformedDistribution`` of the flow over N(0, I) on ``latent_shape``:
        ``log_prob`` = ``self.log_prob(x, exact=exact)``, ``sample`` goes through the learned
        inverses. Training still goes through ``fit`` (its ``trainable_variables`` are empty).
        Conditional models: ``context=y`` gives the batch of ``p(x | y_i)`` (one label: one
        distribution) over the learned conditional base. ``temperature`` (of the dimensions
        SplitPrior layers sample): a finite number > 0."""
        check_temperature(temperature, "FlowModel.as_distribution")
        return bijectors.model_distribution(self, exact=exact, exact_inverse=exact_inverse,
                                            temperature=temperature, context=context)

    # -- exact log-det caches ----------------------------------------------------------------
    def refresh_log_dets(self):
        """Recompute every layer's cached exact log|det| (outside XLA)."""
        for layer in self.flow_layers:
            if layer.has_log_det_cache and layer.built:
                layer.refresh_log_det()

    @contextlib.contextmanager
    def frozen_log_dets(self):
        """Refresh every cached exact log|det| and, inside the block, make every layer with a
        cache read it as it is instead of testing it or computing ``slogdet`` (also
        ``gradient="exact"`` layers, which otherwise compute it live): for tracing SavedModel
        exports, whose graphs then hold no determinant. Gradients are not meaningful inside."""
        self.refresh_log_dets()
        layers = [layer for layer in self.flow_layers if layer.has_log_det_cache]
        before = [layer.frozen_log_det for layer in layers]
        for layer in layers:
            layer.frozen_log_det = True
        try:
            yield self
        finally:
            for layer, value in zip(layers, before):
                layer.frozen_log_det = value

    def _build_from_data(self, x):
        """Check in-memory data (empty, non-finite) and empty datasets before any step runs, and
        build eagerly from the data's shape: TF traces (and XLA compiles) the first step, and
        XLA cannot create variables."""
        _check_fit_data(x)
        if self.built or x is None:
            return
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            spec = spec[0] if isinstance(spec, (tuple, list)) else spec
            shape = tuple(spec.shape)
        elif isinstance(x, (tuple, list)) and x and hasattr(x[0], "shape"):
            shape = tuple(x[0].shape)
        elif hasattr(x, "shape"):
            shape = tuple(x.shape)
        else:
            return  # a generator or PyDataset: Keras builds at trace time
        with self.distribute_strategy.scope():
            self.build((None,) + shape[1:])

    def fit(self, x=None, *args, **kwargs):
        self._build_from_data(x)
        if self.conditional:
            y = args[0] if args else kwargs.get("y")
            self._check_context_data(x, y, "fit")
            validation = kwargs.get("validation_data")
            if validation is not None:
                pairs = isinstance(validation, (tuple, list)) and len(validation) > 1
                self._check_context_data(validation[0] if pairs else validation,
                                         validation[1] if pairs else None, "validation_data")
        if isinstance(x, tf.data.Dataset) and len(args) < 8:
            kwargs.setdefault("shuffle", False)  # Keras ignores it for datasets, but warns
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._build_from_data(x)
        if self.conditional:
            self._check_context_data(x, args[0] if args else kwargs.get("y"), "evaluate")
        self.refresh_log_dets()
        return super().evaluate(x, *args, **kwargs)

    def _check_context_data(self, x, y, where):
        """Before any step of a conditional model: every context of the data is checked as
        :meth:`encode_context` does (``ValueError`` otherwise), so a bad label never trains.
        Arrays at once; a finite ``tf.data`` dataset in one pass over its contexts (the images
        are not decoded twice: only the second component is read); an infinite one at its first
        batch (later batches are asserted in the step, except under XLA)."""
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
                    self.encode_context(context, int(rows), int(rows))
                except ValueError as error:
                    raise ValueError(f"FlowModel.{where}: batch {number + 1} of the data: "
                                     f"{error}") from None
            return
        if x is None or isinstance(x, (tuple, list)) and not hasattr(x, "shape"):
            if isinstance(x, (tuple, list)) and len(x) > 1:
                x, y = x[0], x[1]
            else:
                return  # generators and PyDatasets: checked per batch in the step
        if y is None:
            raise ValueError(f"FlowModel.{where}: this model is conditional: give the contexts "
                             "too (fit(x, y) or a dataset of (x, y) pairs).")
        rows = len(x)
        try:
            self.encode_context(y, rows, rows)
        except ValueError as error:
            raise ValueError(f"FlowModel.{where}: {error}") from None

    # -- training / evaluation steps ----------------------------------------------------------
    def _unpack(self, data):
        """``(x, context)`` of a batch: ``(x, y)`` pairs for conditional models (the labels or
        vectors); unconditional models use ``x`` and ignore anything after it."""
        if not isinstance(data, (tuple, list)):
            if self.conditional:
                raise ValueError("FlowModel: this model is conditional: train and evaluate it on "
                                 "(x, y) pairs (a dataset of (image, label) or fit(x, y)).")
            return data, None
        if self.conditional:
            if len(data) < 2 or data[1] is None:
                raise ValueError("FlowModel: this model is conditional: train and evaluate it on "
                                 "(x, y) pairs (a dataset of (image, label) or fit(x, y)).")
            return data[0], data[1]
        return data[0], None

    def train_step(self, data):
        x, context = self._unpack(data)
        with tf.GradientTape() as tape:
            base, log_det, recon = self._forward_and_base(x, exact=False, training=True,
                                                          context=context)
            nll = -tf.reduce_mean(base + log_det)
            loss = nll + recon
            # tf.distribute sums replica gradients: scale so the update is the global-batch mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / replicas if replicas > 1 else loss
        weights = self.trainable_weights
        gradients = tape.gradient(scaled, weights)
        self.optimizer.apply(gradients, weights)
        self.loss_tracker.update_state(loss)
        self.nll_tracker.update_state(nll)
        self.recon_tracker.update_state(recon)
        return _step_logs({"loss": self.loss_tracker.result(), "nll": self.nll_tracker.result(),
                           "recon": self.recon_tracker.result()})

    def test_step(self, data):
        x, context = self._unpack(data)
        nll = -self.log_prob(x, exact=True, context=context)
        self.nll_tracker.update_state(nll)
        self.bpd_tracker.update_state(self.bits_per_dim(nll))
        return _step_logs({"nll": self.nll_tracker.result(), "bpd": self.bpd_tracker.result()})

    @property
    def metrics(self):
        return [self.loss_tracker, self.nll_tracker, self.recon_tracker, self.bpd_tracker]

    # -- generation and diagnostics ------------------------------------------------------------
    def sample(self, n, exact_inverse: bool = False, temperature: float = 1.0,
               seed=None, context=None) -> tf.Tensor:
        """``n`` samples: ``z ~ N(0, T²I)`` (conditional base: ``μ(y) + σ(y)·N(0, T²I)``) pushed
        through the inverse (learned R by default).

        ``n`` and ``seed`` may be Python ints or int32 scalar tensors (inside a ``tf.function``).
        With a ``seed`` the result depends on nothing else (see the class docstring).
        ``temperature``: a finite number > 0 (:func:`check_temperature`).
        Conditional models need ``context``: ``n`` labels (or one label for all) or ``n``
        vectors."""
        if not self.built:
            raise ValueError("FlowModel.sample: build the model first (call it on data once).")
        if not tf.is_tensor(n) and (isinstance(n, bool) or not isinstance(n, (int, np.integer))
                                    or n < 1):
            raise ValueError(f"FlowModel.sample: n must be a positive int, got {n!r}.")
        temperature = check_temperature(temperature, "FlowModel.sample")
        if context is not None and self.num_classes is not None:
            context = tf.convert_to_tensor(context)
            if context.shape.rank == 0:  # one label for every sample
                context = tf.fill(tf.reshape(tf.cast(n, tf.int32), [1]), context)
        static_n = None if tf.is_tensor(n) else int(n)
        encoded = self.encode_context(context, n, static_n)
        shape = tf.concat([tf.reshape(tf.cast(n, tf.int32), [1]),
                           tf.constant(self.latent_shape, tf.int32)], axis=0)
        if seed is None:
            z = tf.random.normal(shape, stddev=temperature, dtype=self.compute_dtype)
        else:
            z = tf.random.stateless_normal(shape, seed=_seed_pair(seed, 0), stddev=temperature,
                                           dtype=self.compute_dtype)
        if self.base is not None:
            z = self.base.from_standard(z, encoded)
        walk_seed = None if seed is None else tf.cast(seed, tf.int32) + 1
        return self._walk_inverse(z, exact_inverse, temperature, walk_seed, encoded)

    def class_log_probs(self, x, seed=0) -> tf.Tensor:
        """``[batch, num_classes]``: ``log p(x | y = k)`` of a class-conditional model for every
        class k, all with the same dequantization noise (stateless ``seed``), so that
        ``argmax_k`` is the model's generative classification of x (Bayes' rule with a uniform
        class prior; add ``log p(y)`` for another)."""
        if self.num_classes is None:
            raise ValueError("FlowModel.class_log_probs: the model is not class-conditional "
                             "(build it with num_classes=...).")
        x = self._check_data(x)
        rows = tf.shape(x)[0]
        return tf.stack([self.log_prob(x, seed=seed, context=tf.fill([rows], k))
                         for k in range(self.num_classes)], axis=-1)

    def marginal_log_prob(self, x, seed=0) -> tf.Tensor:
        """``log p(x) = log Σ_k p(y = k) p(x | y = k)`` of a class-conditional model with a
        uniform class prior: an exact unconditional likelihood, comparable with an unconditional
        model's ``log_prob`` (one dequantization sample, ``seed``, shared by the classes)."""
        scores = self.class_log_probs(x, seed=seed)
        return tf.reduce_logsumexp(scores, axis=-1) - math.log(self.num_classes)

    def reconstruct(self, x, context=None):
        """``f⁻¹(f(x))`` with the learned inverses: equals ``x`` where every R is exact."""
        z, _ = self.forward(x, context=context)
        return self.inverse(z, context=context)

    def inverse_errors(self):
        """``{layer name: ‖RW − I‖_F}`` for every layer with a learned inverse."""
        return {layer.name: float(layer.inverse_error()) for layer in self.flow_layers
                if layer.learns_inverse}

    def get_config(self):
        config = super().get_config()
        config["flow_layers"] = [keras.saving.serialize_keras_object(layer)
                                 for layer in self.flow_layers]
        if self.conditional:  # absent for unconditional models, as in files of earlier versions
            config.update(num_classes=self.num_classes, context_dim=self.context_dim,
                          conditional_base=self.conditional_base)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layers = [keras.saving.deserialize_keras_object(layer)
                  for layer in config.pop("flow_layers")]
        return cls(layers, **config)
