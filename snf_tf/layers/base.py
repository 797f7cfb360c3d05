"""The flow-layer protocol shared by every layer of snf_tf (``docs/design.md``)."""

import warnings

import keras
import numpy as np
import tensorflow as tf

from snf_tf._compat import in_xla_context, outside_keras_call
from snf_tf.checks import (
    NonFiniteError,
    check_batch_values,
    check_positive_int,
    check_temperature,
)
from snf_tf.context import check_layer_context

# NonFiniteError, check_batch_values, check_positive_int, check_temperature (snf_tf.checks) and
# in_xla_context (snf_tf._compat) keep this module as an import path too.
__all__ = ["HALF_DTYPES", "SUPPORTED_DTYPES", "FlowLayer", "NonFiniteError",
           "check_batch_values", "check_event_shape", "check_float_policy",
           "check_positive_int", "check_temperature", "draw",
           "in_xla_context", "orthogonal_1x1_init", "sum_per_example", "warn_if_singular"]

_NHWC = "NHWC: [batch, height, width, channels]"

#: what the public methods accept as data: a tensor, an array, nested lists
Tensor = tf.Tensor | np.ndarray | list
#: a seed by the package's one scheme (:func:`draw`)
Seed = int | tuple[int, int] | tf.Tensor | keras.random.SeedGenerator | None

#: dtypes of a flow layer's weights and data path (x, z, log-dets, W, R): log-dets (slogdet,
#: QR, sums of logs over D terms) and exact inverses lose too much in half precision, and TF has
#: no float16/bfloat16 slogdet kernel.
SUPPORTED_DTYPES = ("float32", "float64")
#: what a mixed policy's sub-networks may compute in (``FlowLayer.network_dtype``)
HALF_DTYPES = ("float16", "bfloat16")


class FlowLayer(keras.layers.Layer):
    r"""An invertible map ``z = f(x)`` with its log-det, usable as a plain Keras layer.

    The one protocol every flow layer of snf_tf follows (``docs/design.md``). The public methods
    below are final: they check their arguments once (build, rank, shape, dtype, finite values)
    and call the subclass hooks, so a layer implements only its math.

    ==================================================  ============================================
    public (do not override)                            hook a subclass implements
    ==================================================  ============================================
    ``build(input_shape)``                              ``_build_for_shape(event_shape)``
    ``forward(x, exact, training, noise, seed)``        ``_forward(x, exact, training)``
    → ``(z, log_det [batch])``                          ``-> (z, log_det)``
    ``forward_with_reconstruction(...)``                ``_forward_with_reconstruction`` (learned
    → ``(z, log_det, λ·reconstruction or None)``        inverses only)
    ``inverse(z, exact, temperature, seed)`` → ``x``    ``_inverse(z, exact) -> x``
    ``exact_log_abs_det(event_shape=None)``             (``constant_jacobian`` layers)
    ==================================================  ============================================

    ``log_det`` is ``log|det ∂z/∂x|`` in nats per example (a scalar from ``_forward`` is broadcast
    to ``[batch]``). A layer built with a ``context_dim`` (``uses_context``) is conditional: its
    public methods take ``context`` (``[batch, context_dim]`` floats, e.g. a one-hot label; the
    hooks then receive it as ``context=``), and refuse to run without one; every other layer
    refuses a context. ``exact=False`` is the cheap training path (SNF layers: value 0 with the
    self-normalized gradient); ``exact=True`` the true value. Only layers that declare
    ``draws_on_forward`` receive ``noise`` and ``seed`` in ``_forward``; only layers that declare
    ``samples_on_inverse`` receive ``temperature`` and ``seed`` in ``_inverse``. Seeds follow one
    scheme everywhere (:func:`draw`): ``None`` (the layer's own ``SeedGenerator``), an int, or a
    stateless pair ``(seed, k)``.

    Capabilities are class attributes (a subclass overrides the ones that differ); callers read
    them directly, never probe with ``getattr``.

    As a Keras layer, ``layer(x, context=None, return_log_det=False)`` is ``forward``'s ``z``
    (or ``(z, log_det)``), in ``Sequential`` and functional models alike. An SNF layer's kernel
    then receives ½ of an ordinary loss's gradient (the paper's split between W and R), plus the
    self-normalized term through the log-det (``docs/layers.md``). Under a mixed dtype policy
    the flow stays in the variable dtype and only owned sub-networks compute in half precision
    (:attr:`network_dtype`).
    """

    #: rank of the inputs (batch axis included); None = any rank ≥ 2
    input_rank: int | None = None
    #: every per-example dim must be known at build time (weights or log-det depend on it)
    needs_known_shape: bool = False
    #: weights depend on the channel count only: H×W stay free (NHWC)
    channels_only: bool = False
    #: the log-det does not depend on x (linear maps, permutations, affine maps)
    constant_jacobian: bool = False
    #: the inverse is a learned map trained by a reconstruction loss (SNF layers)
    learns_inverse: bool = False
    #: training adds a λ-weighted reconstruction loss (``reconstruction_weight``,
    #: ``last_reconstruction_error``; what the GECO callback adapts)
    uses_reconstruction: bool = False
    #: drops dimensions in ``forward``; ``inverse`` samples them (``temperature``, ``seed``)
    samples_on_inverse: bool = False
    #: ``forward`` may add noise (``noise``, ``seed``): dequantization
    draws_on_forward: bool = False
    #: ``z`` has the per-example shape of ``x`` (False: reshapes, squeezes, splits)
    preserves_shape: bool = True
    #: integer inputs are data (cast to the compute dtype), not a mistake
    accepts_integers: bool = False
    #: the training step can compile with XLA (no ``slogdet``/LU inside)
    supports_xla: bool = True
    #: keeps a cached exact log-det (``refresh_log_det``, ``frozen_log_det``)
    has_log_det_cache: bool = False
    #: the map depends on a context vector (``context_dim`` features); set per instance by the
    #: layers that can be conditional (couplings, SplitPrior), False for all others
    uses_context: bool = False
    #: width of the context a conditional layer takes (None: unconditional)
    context_dim: int | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        check_float_policy(self)
        self.event_shape = None

    # -- precision --------------------------------------------------------------------------------
    # Under a mixed policy (``mixed_bfloat16``, ``mixed_float16``) the flow itself stays in the
    # variable dtype — x, z, every log-det, W and R, so the likelihood stays exact and the
    # inverse exact to float32 — and only the sub-networks a layer owns (coupling networks,
    # context embeddings) compute in half precision. Keras reads ``compute_dtype`` to cast the
    # inputs and outputs of ``__call__`` and to pick an autocast scope, so it is the flow's dtype.
    @property
    def compute_dtype(self):
        """The dtype of the flow's data path: the variable dtype (float32 under mixed precision;
        :attr:`network_dtype` is the policy's half precision)."""
        return self.variable_dtype

    @property
    def network_dtype(self):
        """The dtype the layer's sub-networks compute in: the policy's compute dtype (float16 or
        bfloat16 under a mixed policy, else the variable dtype)."""
        return self.dtype_policy.compute_dtype

    # -- build ---------------------------------------------------------------------------------
    def build(self, input_shape: tuple) -> None:
        """Record the per-example shape (``event_shape``) and create the weights for it."""
        self._build_for_shape(self._record_event_shape(input_shape))
        self.built = True

    def _build_for_shape(self, event_shape: tuple) -> None:
        """Hook: create weights and validate sizes for the per-example shape."""

    def _record_event_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(
                f"{self.name}: inputs need a batch axis and at least one feature axis "
                f"(rank >= 2), got shape {input_shape}.")
        if self.input_rank is not None and len(input_shape) != self.input_rank:
            raise ValueError(
                f"{self.name}: inputs must have rank {self.input_rank} "
                f"({self._layout_description()}), got shape {input_shape}.")
        if self.needs_known_shape and any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"{self.name}: {type(self).__name__} needs a fully known per-example shape "
                f"({self._layout_description()}), got {input_shape}.")
        shape = tuple(None if d is None else int(d) for d in input_shape[1:])
        if self.channels_only:
            if shape[-1] is None:
                raise ValueError(
                    f"{self.name}: {type(self).__name__} needs {_NHWC} inputs with a known "
                    f"channel count, got shape {input_shape}.")
            shape = (None,) * (len(shape) - 1) + shape[-1:]
        self.event_shape = shape
        return shape

    def _build_from_latent(self, z_shape):
        """Hook for ``inverse`` before ``forward``: build from the shape of ``z``."""
        if self.preserves_shape:
            self.build(z_shape)
            return
        raise ValueError(
            f"{self.name}: {type(self).__name__} does not know the data shape to restore yet; "
            "call forward() or build(input_shape) before inverse().")

    @property
    def supports_jit(self):
        """What Keras's ``jit_compile="auto"`` reads: the ``supports_xla`` capability."""
        return self.supports_xla

    @supports_jit.setter
    def supports_jit(self, value):
        """``keras.layers.Layer.__init__`` sets it; the capability decides instead."""

    @property
    def channels(self):
        """C of an NHWC layer (the last per-example dim)."""
        return None if self.event_shape is None else self.event_shape[-1]

    def compute_output_shape(self, input_shape):
        return input_shape

    # -- the protocol ---------------------------------------------------------------------------
    def call(self, inputs, context=None, training=None, return_log_det=False):
        """``z`` of ``forward`` — or ``(z, log_det)`` with ``return_log_det=True``, the log-det
        exact at inference and the cheap one in training (``FlowModel``'s rule) — so a flow
        layer sits in ``keras.Sequential`` and functional models: ``layer(x)``, and for a
        conditional layer ``layer(x, context=c)`` with ``c`` a second ``keras.Input``."""
        z, log_det = self.forward(inputs, exact=bool(return_log_det and not training),
                                  training=bool(training), context=context)
        return (z, log_det) if return_log_det else z

    def compute_output_spec(self, inputs, context=None, training=None, return_log_det=False):
        shape = tuple(self.compute_output_shape(tuple(inputs.shape)))
        z = keras.KerasTensor(shape, dtype=self.compute_dtype)
        return (z, keras.KerasTensor(shape[:1], dtype=self.compute_dtype)) if return_log_det \
            else z

    def forward(self, x: Tensor, exact: bool = False, training: bool = False,
                noise: bool | None = None, seed: Seed = None,
                context: Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(z, log|det ∂z/∂x|)`` per example (given ``context`` for a conditional layer). With
        ``training=True`` a learned inverse's reconstruction loss is registered with
        ``add_loss`` (``forward_with_reconstruction`` returns it instead)."""
        z, log_det, recon = self.forward_with_reconstruction(x, exact, training, noise, seed,
                                                             context)
        if recon is not None:
            self._register_reconstruction(recon)
        return z, log_det

    def forward_with_reconstruction(
            self, x: Tensor, exact: bool = False, training: bool = False,
            noise: bool | None = None, seed: Seed = None, context: Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """``(z, log_det, recon)``: ``forward`` plus this batch's λ-weighted reconstruction loss
        (``None`` for layers without a learned inverse, or when not training), returned rather
        than ``add_loss``-ed: ``add_loss`` lists are shared by the replicas of a
        ``tf.distribute`` strategy, a return value is not (``FlowModel`` uses this path)."""
        x = self._check_input(x, "x")
        extra = {"noise": noise, "seed": seed} if self.draws_on_forward else {}
        context = self._check_context(context, x)
        if self.uses_context:
            extra["context"] = context
        z, log_det, recon = self._forward_with_reconstruction(
            x, exact=bool(exact), training=bool(training), **extra)
        return z, tf.broadcast_to(log_det, tf.shape(x)[:1]), recon

    def _forward_with_reconstruction(self, x, exact, training, **extra):
        z, log_det = self._forward(x, exact=exact, training=training, **extra)
        return z, log_det, None

    def _forward(self, x, exact, training):
        raise NotImplementedError(f"{type(self).__name__} must implement _forward()")

    def inverse(self, z: Tensor, exact: bool = False, temperature: float = 1.0,
                seed: Seed = None, context: Tensor | None = None) -> tf.Tensor:
        """``x = f⁻¹(z)``: exact, or through the learned inverse where the layer has one and
        ``exact`` is False. Layers that dropped dimensions sample them from N(0, T²) with
        ``seed`` (see :func:`draw`). A conditional layer needs the ``context`` of ``forward``."""
        if not tf.is_tensor(z):
            z = tf.convert_to_tensor(z)
        if not self.built and z.shape.rank is not None:
            self._build_from_latent(tuple(z.shape))
        z = self._check_input(z, "z")
        extra = {}
        context = self._check_context(context, z)
        if self.uses_context:
            extra["context"] = context
        if self.samples_on_inverse:
            temperature = check_temperature(temperature, f"{self.name}.inverse", allow_zero=True)
            return self._inverse(z, exact=bool(exact), temperature=temperature, seed=seed,
                                 **extra)
        return self._inverse(z, exact=bool(exact), **extra)

    def _inverse(self, z, exact):
        raise NotImplementedError(f"{type(self).__name__} must implement _inverse()")

    def reconstruction_loss(self, x: Tensor) -> tf.Tensor:
        """λ-weighted reconstruction loss of the learned inverse;
        0 for exactly invertible layers."""
        return tf.zeros([], dtype=self.compute_dtype)

    def exact_log_abs_det(self, event_shape: tuple | None = None) -> tf.Tensor:
        """``log|det ∂z/∂x|`` of one example of per-example shape ``event_shape`` (default: the
        built one), for ``constant_jacobian`` layers; others depend on x (``forward(x,
        exact=True)``)."""
        raise TypeError(f"{self.name}: the log-det of {type(self).__name__} depends on the input; "
                        "use forward(x, exact=True).")

    def _spatial_size(self, event_shape=None):
        """H·W (a Python number) of ``event_shape`` or the built shape; ``ValueError`` if free."""
        shape = self.event_shape if event_shape is None else tuple(event_shape)
        if shape is None or len(shape) != 3 or None in shape[:2]:
            raise ValueError(f"{self.name}: give event_shape=(H, W, C): the log-det of "
                             f"{type(self).__name__} depends on H×W, got {shape}.")
        return float(shape[0] * shape[1])

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
        self._load_variables({k: store[k] for k in keys if k not in seeds})
        for key, generator in zip(seeds, self._seed_generators):
            generator.state.assign(store[key])

    def _load_variables(self, store):
        """Hook: map variables saved in another layout onto this layer's, so such files still
        load (see SelfNorm layers)."""
        super().load_own_variables(store)

    # -- argument checks ---------------------------------------------------------------------------
    def _check_input(self, x, name="x"):
        """``x`` (or ``z``) as a tensor of the layer's dtype, with a clear error for bad input."""
        if not tf.is_tensor(x):
            x = tf.convert_to_tensor(x)
        if x.dtype.is_integer and self.accepts_integers:
            x = tf.cast(x, self.compute_dtype)
        if not x.dtype.is_floating:
            accepted = "a floating-point or integer" if self.accepts_integers else \
                "a floating-point"
            hint = "" if self.accepts_integers else \
                " Cast integer images to float (e.g. with a Dequantize layer) first."
            raise ValueError(
                f"{self.name}: {name} must be {accepted} tensor, got dtype {x.dtype.name}.{hint}")
        rank = x.shape.rank
        if self.input_rank is not None and rank != self.input_rank:
            raise ValueError(
                f"{self.name}: {name} must have rank {self.input_rank} "
                f"({self._layout_description()}), got shape {x.shape}.")
        if not self.built:
            self.build(tuple(x.shape))
        check_event_shape(self, x.shape, name, self._expected_shape(name))
        check_batch_values(x, self.name, name)
        return tf.cast(x, self.compute_dtype)

    def _check_context(self, context, x):
        """The context of this call (:func:`snf_tf.context.check_layer_context`)."""
        return check_layer_context(self, context, x)

    def _expected_shape(self, name):
        """Per-example shape that ``name`` ("x" or "z") must have."""
        if name == "x" or self.preserves_shape:
            return self.event_shape
        return tuple(self.compute_output_shape((None,) + self.event_shape))[1:]

    def _layout_description(self):
        return {2: "[batch, D]", 4: _NHWC}.get(self.input_rank, "batch first")

    def _register_reconstruction(self, loss):
        """``add_loss`` that does not pile up when ``forward`` is used outside a Keras call."""
        if outside_keras_call():
            self._clear_losses()
        self.add_loss(loss)


def draw(distribution, shape, dtype, seed, generator, **parameters):
    """One random tensor by the package's seed scheme: ``seed`` None → the layer's own
    ``SeedGenerator`` (``generator``); an int or a ``SeedGenerator`` → ``keras.random``; a pair
    ``(seed, k)`` (tuple, list or int tensor of shape [2]) → the stateless TF op (what
    ``FlowModel`` passes: the k-th random layer of a call gets ``(seed, k)``).

    ``distribution`` is "normal" (``stddev``) or "uniform" (``minval``, ``maxval``)."""
    if seed is None or isinstance(seed, (int, np.integer, keras.random.SeedGenerator)):
        function = getattr(keras.random, distribution)
        return function(shape, dtype=dtype, seed=generator if seed is None else seed, **parameters)
    pair = tf.cast(seed, tf.int32)
    function = {"normal": tf.random.stateless_normal,
                "uniform": tf.random.stateless_uniform}[distribution]
    return function(shape, seed=pair, dtype=dtype, **parameters)


def sum_per_example(values):
    """Sum over every non-batch axis: ``[batch, ...] → [batch]``."""
    return tf.reduce_sum(tf.reshape(values, [tf.shape(values)[0], -1]), axis=-1)


def check_float_policy(layer):
    """``ValueError`` unless the layer stores its weights in float32 or float64 and computes in
    that dtype or, under a mixed policy (float32 weights), its sub-networks in float16/bfloat16:
    the log-det and the exact inverse need the weights' own precision."""
    policy = layer.dtype_policy
    if policy.variable_dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{type(layer).__name__}: dtype {policy.variable_dtype} is not supported: the "
            f"weights, log-dets and exact inverses need {' or '.join(SUPPORTED_DTYPES)}. For "
            "half-precision sub-networks use a mixed policy (mixed_bfloat16, mixed_float16)."
        )
    compute = policy.compute_dtype
    if compute != policy.variable_dtype and compute not in HALF_DTYPES:
        raise ValueError(
            f"{type(layer).__name__}: dtype policy {policy.name} is not supported (a mixed "
            f"policy computes in {' or '.join(HALF_DTYPES)} with float32 weights).")


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


def orthogonal_1x1_init(shape, dtype=None):
    """A random orthogonal C×C matrix (Q of a QR decomposition) as a [1, 1, C, C] HWIO kernel:
    the reference's init of every exact and SNF 1×1 conv."""
    matrix = keras.initializers.Orthogonal()((shape[2], shape[3]), dtype=dtype)
    return tf.reshape(matrix, shape)
