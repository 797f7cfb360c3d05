r"""FlowModel: a Keras model over a stack of flow layers, with exact evaluation and sampling.

Keller et al., ICML 2021, §3-§5: train with the cheap self-normalized objective, report the exact
likelihood :math:`\log p(x) = \log \mathcal N(z; 0, I) + \sum_k \log\lvert\det J_k\rvert`, ``z``
the output of the last layer (``SplitPrior`` adds the log-density of the dimensions it factors
out to its log-det). Conditioning is :mod:`snf_tf.context`, the checks :mod:`snf_tf.checks`.
"""

import contextlib
import itertools
import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from snf_tf import bijectors
from snf_tf import context as conditioning
from snf_tf.checks import (
    check_data_range,
    check_fit_data,
    check_inputs,
    check_positive_int,
    check_temperature,
    naming_the_producer,
)
from snf_tf.context import ConditionalNormal
from snf_tf.layers.base import FlowLayer
from snf_tf.layers.preprocess import pixel_domain, pixel_range

__all__ = ["ConditionalNormal", "FlowModel", "check_temperature"]

_LN2 = math.log(2.0)


def _step_logs(logs):
    """Keras 3 reduces multi-worker step outputs with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails on scalars (tensorflow#72388): give them a length-1 axis there."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {key: tf.reshape(value, [1]) for key, value in logs.items()}
    return logs


def _seed_pair(seed, k):
    """The stateless seed of the k-th random draw of one call: ``(seed, k)`` as int32."""
    return tf.stack([tf.cast(seed, tf.int32), tf.constant(k, tf.int32)])


def _seeds(seed, draws):
    """The seed of each layer of one walk (``draws[i]``: whether the i-th layer draws):
    ``(seed, k)`` for the k-th that draws, None for the others and for all without a seed."""
    k = itertools.count()
    return [_seed_pair(seed, next(k)) if random and seed is not None else None
            for random in draws]


@keras.saving.register_keras_serializable(package="snf_tf")
class FlowModel(keras.Model):
    """A normalizing flow ``x → z`` from a list of flow layers and a standard-normal base.

    - ``fit``: minimises the batch-mean NLL of the cheap path (``exact=False``: SNF layers give the
      self-normalized gradient) plus every layer's λ·reconstruction loss; logs ``loss``, ``nll``
      (*not* the true NLL of SNF models: their log-det values are 0 in training) and ``recon``.
    - ``evaluate`` (and ``fit(validation_data=...)``): the exact NLL in nats (``nll``) and bits/dim
      (``bpd``), with every layer's cached exact log-det refreshed first (outside XLA).

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
                    "with a log-det); wrap plain Keras layers in a flow layer.")
        self.num_classes, self.context_dim = conditioning.check_widths(
            flow_layers, num_classes, context_dim)
        self.conditional_base = bool(conditional_base)
        self.flow_layers = flow_layers
        self.base = None  # the ConditionalNormal of a conditional model, made in build
        self.loss_tracker, self.nll_tracker, self.recon_tracker, self.bpd_tracker = (
            keras.metrics.Mean(name=name) for name in ("loss", "nll", "recon", "bpd"))

    @property
    def compute_dtype(self):
        """The dtype of the likelihood: the variable dtype. Under a mixed policy
        (``mixed_bfloat16``, ``mixed_float16``) x, z, every log-det, the base density and the
        NLL stay float32; only the layers' sub-networks compute in half precision
        (:attr:`snf_tf.layers.FlowLayer.network_dtype`)."""
        return self.variable_dtype

    @property
    def conditional(self) -> bool:
        """Whether the model is ``p(x | context)`` (``num_classes`` or ``context_dim`` given)."""
        return self.num_classes is not None or self.context_dim is not None

    def encode_context(self, context, batch, static_batch=None):
        """The context as the layers and the base see it, checked for ``batch`` examples
        (:func:`snf_tf.context.encode`); None for unconditional models."""
        return conditioning.encode(context, self.num_classes, self.context_dim, batch,
                                   static_batch, self.compute_dtype)

    # -- the walks -----------------------------------------------------------------------------
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
        return self._walk_forward(x, context, exact, training, noise, seed)[:3]

    def _walk_forward(self, x, context, exact, training, noise, seed):
        """``(z, Σ log-det, Σ λ·reconstruction, encoded context)`` of a batch, checked here."""
        x = self._check_data(x)
        context = self.encode_context(context, tf.shape(x)[0], x.shape[0])
        log_det = tf.zeros(tf.shape(x)[:1], dtype=self.compute_dtype)
        recon = tf.zeros([], dtype=self.compute_dtype)
        layers, previous = self.flow_layers, None
        draws = [layer.draws_on_forward for layer in layers]
        for layer, layer_seed in zip(layers, _seeds(seed, draws)):
            with naming_the_producer(previous, "forward"):
                x, layer_log_det, layer_recon = layer.forward_with_reconstruction(
                    x, exact=exact, training=training, noise=noise, seed=layer_seed,
                    context=context if layer.uses_context else None)
            log_det = log_det + tf.cast(layer_log_det, log_det.dtype)
            if layer_recon is not None:
                recon = recon + tf.cast(layer_recon, recon.dtype)
            previous = layer
        return x, log_det, recon, context

    def inverse(self, z, exact: bool = False, temperature: float = 1.0, seed=None,
                context=None) -> tf.Tensor:
        """``x = f⁻¹(z)`` through every layer's inverse (learned R unless ``exact``). Layers that
        factored dimensions out (SplitPrior) sample them at ``temperature``, a finite number ≥ 0
        (0: their mode, 0), seeded as in the class docstring; ``context`` as in :meth:`forward`."""
        z = tf.convert_to_tensor(z)
        if not self.built:
            raise ValueError("FlowModel.inverse: build the model first (call it on data once).")
        temperature = check_temperature(temperature, "FlowModel.inverse", allow_zero=True)
        encoded = self.encode_context(context, tf.shape(z)[0], z.shape[0])
        return self._walk_inverse(z, exact, temperature, seed, encoded)

    def _walk_inverse(self, z, exact, temperature, seed, context):
        layers, previous = self.flow_layers[::-1], None
        draws = [layer.samples_on_inverse for layer in layers]
        for layer, layer_seed in zip(layers, _seeds(seed, draws)):
            with naming_the_producer(previous, "inverse"):
                z = layer.inverse(z, exact=exact, temperature=temperature, seed=layer_seed,
                                  context=context if layer.uses_context else None)
            previous = layer
        return z

    # -- the data contract (docs/design.md) ---------------------------------------------------
    #: refuse eager batches of images scaled to [0, 1] (the unit-scale rule of
    #: :func:`snf_tf.checks.check_data_range`); set False on a model (not saved) to score such a
    #: batch anyway. A SavedModel exported while it is False leaves the rule out of its graph.
    check_unit_scaled = True

    @property
    def data_range(self) -> tuple[float, float] | None:
        """``(low, high)``: the model takes data in ``[low, high)`` — ``(0.0, 256.0)`` for a
        model that starts with the image preprocessing (every ``snf_tf.architectures`` builder; see
        :func:`snf_tf.layers.preprocess.pixel_range`); None: any finite values."""
        return pixel_range(self.flow_layers)

    def _check_data(self, x):
        """``x`` checked (shape, dtype, values, range) in the compute dtype; builds the model."""
        x = tf.convert_to_tensor(x)
        if not self.built and x.shape.rank is not None and x.shape.rank >= 2:
            self.build(tuple(x.shape))
        check_inputs(x, self.data_shape if self.built else None)
        check_data_range(x, self.data_range, pixel_domain(self.flow_layers),
                         self.check_unit_scaled)
        return tf.cast(x, self.compute_dtype)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
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
                                          dtype=self.variable_dtype, name="conditional_base")
        self.built = True

    @property
    def data_dimension(self):
        return int(np.prod(self.data_shape))

    # -- the likelihood ------------------------------------------------------------------------
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
        z, log_det, recon, encoded = self._walk_forward(x, context, exact, training, noise, seed)
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

    def class_log_probs(self, x, seed=0) -> tf.Tensor:
        """``[batch, num_classes]``: ``log p(x | y = k)`` of a class-conditional model for every
        class k, all with the same dequantization noise (stateless ``seed``), so that
        ``argmax_k`` is the model's generative classification of x (Bayes' rule with a uniform
        class prior; add ``log p(y)`` for another)."""
        if self.num_classes is None:
            raise ValueError("FlowModel.class_log_probs: the model is not class-conditional "
                             "(build it with num_classes=...).")
        x = self._check_data(x)
        return tf.stack([self.log_prob(x, seed=seed, context=tf.fill(tf.shape(x)[:1], k))
                         for k in range(self.num_classes)], axis=-1)

    def marginal_log_prob(self, x, seed=0) -> tf.Tensor:
        """``log p(x) = log Σ_k p(y = k) p(x | y = k)`` of a class-conditional model with a
        uniform class prior: an exact unconditional likelihood, comparable with an unconditional
        model's ``log_prob`` (one dequantization sample, ``seed``, shared by the classes)."""
        scores = self.class_log_probs(x, seed=seed)
        return tf.reduce_logsumexp(scores, axis=-1) - math.log(self.num_classes)

    # -- TensorFlow Probability views ---------------------------------------------------------
    def as_bijector(self, exact=False, exact_inverse=None, temperature=1.0, context=None):
        """``snf_tf.bijectors.Chain`` of the layers' TFP views (forward = z → x, inverse = x → z);
        see :func:`snf_tf.bijectors.model_bijector`. ``temperature``: a finite number > 0."""
        return bijectors.model_bijector(self, exact=exact, exact_inverse=exact_inverse,
                                        temperature=temperature, context=context)

    def as_distribution(self, exact=True, exact_inverse=False, temperature=1.0, context=None):
        """``tfd.TransformedDistribution`` of the flow (:func:`snf_tf.bijectors.
        model_distribution`): ``log_prob`` = ``self.log_prob(x, exact=exact)``, ``sample`` through
        the learned inverses; ``context=y``: the batch of ``p(x | y_i)``."""
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
        """Refresh every cached exact log|det|, then, inside the block, every layer with a cache
        reads it as it is (no ``slogdet``, no staleness test): for tracing SavedModel exports,
        whose graphs then hold no determinant. Gradients are not meaningful inside."""
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

    # -- fit / evaluate ----------------------------------------------------------------------
    def _build_from_data(self, x, y, where, validation=None):
        """Check the data and a conditional model's contexts (also of ``validation`` data)
        before any step runs, and build from its shape: TF traces (and XLA compiles) the first
        step, and XLA cannot create variables."""
        shape = check_fit_data(x)
        if self.conditional:
            conditioning.check_data_contexts(x, y, where, self.num_classes, self.context_dim)
            if validation is not None:  # (x, y) pairs or a dataset of them
                conditioning.check_data_contexts(validation, None, "validation_data",
                                                 self.num_classes, self.context_dim)
        if shape is not None and not self.built:  # generators: Keras builds at trace time
            with self.distribute_strategy.scope():
                self.build((None,) + tuple(shape)[1:])

    def fit(self, x=None, *args, **kwargs):
        self._build_from_data(x, args[0] if args else kwargs.get("y"), "fit",
                           kwargs.get("validation_data"))
        if isinstance(x, tf.data.Dataset) and len(args) < 8:
            kwargs.setdefault("shuffle", False)  # Keras ignores it for datasets, but warns
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._build_from_data(x, args[0] if args else kwargs.get("y"), "evaluate")
        self.refresh_log_dets()
        return super().evaluate(x, *args, **kwargs)

    def train_step(self, data):
        x, context = conditioning.split_batch(data, self.conditional)
        with tf.GradientTape() as tape:
            base, log_det, recon = self._forward_and_base(x, exact=False, training=True,
                                                          context=context)
            nll = -tf.reduce_mean(base + log_det)
            loss = nll + recon
            # tf.distribute sums replica gradients: scale so the update is the global-batch mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / replicas if replicas > 1 else loss
            # mixed_float16: compile() wraps the optimizer in Keras's LossScaleOptimizer, which
            # scales here and unscales (skipping non-finite steps) in apply()
            scaled = self.optimizer.scale_loss(scaled)
        weights = self.trainable_weights
        self.optimizer.apply(tape.gradient(scaled, weights), weights)
        self.loss_tracker.update_state(loss)
        self.nll_tracker.update_state(nll)
        self.recon_tracker.update_state(recon)
        return _step_logs({"loss": self.loss_tracker.result(), "nll": self.nll_tracker.result(),
                           "recon": self.recon_tracker.result()})

    def test_step(self, data):
        x, context = conditioning.split_batch(data, self.conditional)
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
        through the inverse (learned R by default). ``n`` and ``seed`` are ints or int32 scalar
        tensors; ``temperature`` a finite number > 0; ``context``: ``n`` rows, or one for all."""
        if not self.built:
            raise ValueError("FlowModel.sample: build the model first (call it on data once).")
        static_n = None if tf.is_tensor(n) else check_positive_int(n, "n", "FlowModel.sample")
        temperature = check_temperature(temperature, "FlowModel.sample")
        encoded = self.encode_context(conditioning.broadcast(context, n), n, static_n)
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
        if self.conditional:  # absent for unconditional models, so files without it load as such
            config.update(num_classes=self.num_classes, context_dim=self.context_dim,
                          conditional_base=self.conditional_base)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layers = [keras.saving.deserialize_keras_object(layer)
                  for layer in config.pop("flow_layers")]
        return cls(layers, **config)
