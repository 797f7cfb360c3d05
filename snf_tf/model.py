"""FlowModel: a Keras model over a stack of flow layers, with exact evaluation and sampling.

Keller et al., ICML 2021, §3-§5: train with the cheap self-normalized objective, report the exact
likelihood. ``log p(x) = log N(z; 0, I) + Σ_k log|det J_k|`` with ``z`` the output of the last
layer; layers that factor dimensions out (``SplitPrior``) add their own log-density terms to their
log-det.
"""

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from snf_tf import bijectors
from snf_tf.layers.base import FlowLayer, NonFiniteError, check_batch_values

__all__ = ["FlowModel"]

_LN2 = math.log(2.0)


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

    Args:
        flow_layers: the flow layers, data side first (preprocessing layers included, so their
            log-dets count in the likelihood).
    """

    def __init__(self, flow_layers, **kwargs):
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
        self.flow_layers = flow_layers
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.nll_tracker = keras.metrics.Mean(name="nll")
        self.recon_tracker = keras.metrics.Mean(name="recon")
        self.bpd_tracker = keras.metrics.Mean(name="bpd")

    # -- the flow ----------------------------------------------------------------------------
    def forward(self, x, exact: bool = False, training: bool = False, noise: bool | None = None,
                seed=None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(z, Σ log-det)`` of the whole stack; ``log_det`` has shape [batch]. ``noise``
        switches dequantization noise on/off (None: the layers' own rule), ``seed`` makes it
        stateless (see the class docstring)."""
        z, log_det, _ = self.forward_with_reconstruction(x, exact=exact, training=training,
                                                         noise=noise, seed=seed)
        return z, log_det

    def forward_with_reconstruction(self, x, exact: bool = False, training: bool = False,
                                    noise: bool | None = None, seed=None,
                                    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(z, Σ log-det, Σ λ·reconstruction)``: the reconstruction losses are returned by the
        layers (not collected with ``add_loss``, whose lists replicas of tf.distribute share)."""
        x = self._check_data(x)
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
                    x, exact=exact, training=training, noise=noise, seed=layer_seed)
            log_det = log_det + tf.cast(layer_log_det, log_det.dtype)
            if layer_recon is not None:
                recon = recon + tf.cast(layer_recon, recon.dtype)
        return x, log_det, recon

    def inverse(self, z, exact: bool = False, temperature: float = 1.0, seed=None) -> tf.Tensor:
        """``x = f⁻¹(z)`` through every layer's inverse (learned R unless ``exact``). Layers that
        factored dimensions out (SplitPrior) sample them at ``temperature``; with an int ``seed``
        the k-th of them met on the way back draws statelessly with seed ``(seed, k)``."""
        k = 0
        previous = None
        for layer in reversed(self.flow_layers):
            layer_seed = None
            if layer.samples_on_inverse:
                layer_seed = None if seed is None else _seed_pair(seed, k)
                k += 1
            with _naming_the_culprit(previous, "inverse"):
                z = layer.inverse(z, exact=exact, temperature=temperature, seed=layer_seed)
            previous = layer
        return z

    def _check_data(self, x):
        if not tf.is_tensor(x):
            x = tf.convert_to_tensor(x)
        if x.shape.rank is None or x.shape.rank < 2:
            raise ValueError(f"FlowModel: inputs need a batch axis, got shape {x.shape}.")
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
        return tf.cast(x, self.compute_dtype)

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
        self.built = True

    @property
    def data_dimension(self):
        return int(np.prod(self.data_shape))

    def base_log_prob(self, z):
        """``log N(z; 0, I)`` summed over all non-batch dims."""
        normal = tfp.distributions.Normal(tf.zeros([], z.dtype), tf.ones([], z.dtype))
        return tf.reduce_sum(tf.reshape(normal.log_prob(z), [tf.shape(z)[0], -1]), axis=-1)

    def log_prob(self, x, exact: bool = True, training: bool = False, noise: bool | None = None,
                 seed=None) -> tf.Tensor:
        """Per-example ``log p(x)`` in nats on the data scale (exact by default; ``noise`` and
        ``seed`` as in :meth:`forward`)."""
        z, log_det = self.forward(x, exact=exact, training=training, noise=noise, seed=seed)
        return self.base_log_prob(z) + log_det

    def call(self, inputs, training=False):
        """Per-example log-likelihood: the cheap path when training, the exact one otherwise."""
        return self.log_prob(inputs, exact=not training, training=training)

    def bits_per_dim(self, nats):
        """Convert an NLL in nats per example to bits per dimension."""
        return nats / (self.data_dimension * _LN2)

    # -- TensorFlow Probability views ---------------------------------------------------------
    def as_bijector(self, exact=False, exact_inverse=None, temperature=1.0):
        """``snf_tf.bijectors.Chain`` of the layers' TFP views (forward = z → x, inverse = x → z);
        see :func:`snf_tf.bijectors.model_bijector`."""
        return bijectors.model_bijector(self, exact=exact, exact_inverse=exact_inverse,
                              temperature=temperature)

    def as_distribution(self, exact=True, exact_inverse=False, temperature=1.0):
        """``tfd.TransformedDistribution`` of the flow over N(0, I) on ``latent_shape``:
        ``log_prob`` = ``self.log_prob(x, exact=exact)``, ``sample`` goes through the learned
        inverses. Training still goes through ``fit`` (its ``trainable_variables`` are empty)."""
        return bijectors.model_distribution(self, exact=exact, exact_inverse=exact_inverse,
                                  temperature=temperature)

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
        if isinstance(x, tf.data.Dataset) and len(args) < 8:
            kwargs.setdefault("shuffle", False)  # Keras ignores it for datasets, but warns
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._build_from_data(x)
        self.refresh_log_dets()
        return super().evaluate(x, *args, **kwargs)

    # -- training / evaluation steps ----------------------------------------------------------
    @staticmethod
    def _unpack(data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def train_step(self, data):
        x = self._unpack(data)
        with tf.GradientTape() as tape:
            z, log_det, recon = self.forward_with_reconstruction(x, training=True)
            nll = -tf.reduce_mean(self.base_log_prob(z) + log_det)
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
        x = self._unpack(data)
        nll = -self.log_prob(x, exact=True)
        self.nll_tracker.update_state(nll)
        self.bpd_tracker.update_state(self.bits_per_dim(nll))
        return _step_logs({"nll": self.nll_tracker.result(), "bpd": self.bpd_tracker.result()})

    @property
    def metrics(self):
        return [self.loss_tracker, self.nll_tracker, self.recon_tracker, self.bpd_tracker]

    # -- generation and diagnostics ------------------------------------------------------------
    def sample(self, n, exact_inverse: bool = False, temperature: float = 1.0,
               seed=None) -> tf.Tensor:
        """``n`` samples: ``z ~ N(0, T²I)`` pushed through the inverse (learned R by default).

        ``n`` and ``seed`` may be Python ints or int32 scalar tensors (inside a ``tf.function``).
        With a ``seed`` the result depends on nothing else (see the class docstring)."""
        if not self.built:
            raise ValueError("FlowModel.sample: build the model first (call it on data once).")
        if not tf.is_tensor(n) and (isinstance(n, bool) or not isinstance(n, (int, np.integer))
                                    or n < 1):
            raise ValueError(f"FlowModel.sample: n must be a positive int, got {n!r}.")
        shape = tf.concat([tf.reshape(tf.cast(n, tf.int32), [1]),
                           tf.constant(self.latent_shape, tf.int32)], axis=0)
        if seed is None:
            z = tf.random.normal(shape, stddev=temperature, dtype=self.compute_dtype)
            return self.inverse(z, exact=exact_inverse, temperature=temperature)
        z = tf.random.stateless_normal(shape, seed=_seed_pair(seed, 0), stddev=temperature,
                                       dtype=self.compute_dtype)
        return self.inverse(z, exact=exact_inverse, temperature=temperature,
                            seed=tf.cast(seed, tf.int32) + 1)

    def reconstruct(self, x):
        """``f⁻¹(f(x))`` with the learned inverses: equals ``x`` where every R is exact."""
        z, _ = self.forward(x)
        return self.inverse(z)

    def inverse_errors(self):
        """``{layer name: ‖RW − I‖_F}`` for every layer with a learned inverse."""
        return {layer.name: float(layer.inverse_error()) for layer in self.flow_layers
                if layer.learns_inverse}

    def get_config(self):
        config = super().get_config()
        config["flow_layers"] = [keras.saving.serialize_keras_object(layer)
                                 for layer in self.flow_layers]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layers = [keras.saving.deserialize_keras_object(layer)
                  for layer in config.pop("flow_layers")]
        return cls(layers, **config)
