"""Glow building blocks: ActNorm, the exact invertible 1×1 convolution, affine coupling,
split prior.

Kingma & Dhariwal, *Glow*, NeurIPS 2018, as used by the Glow baselines and the SNF-Glow models of
Keller et al., *Self Normalizing Flows*, ICML 2021, §5 (docs/paper.md: experiments, layer details
give the exact reference definitions reproduced here, quirks included). All layers are NHWC.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from snf_tf.checks import check_positive_int
from snf_tf.layers.base import FlowLayer, draw, orthogonal_1x1_init, warn_if_singular
from snf_tf.ops.linalg import log_abs_det_qr

__all__ = ["ActNorm", "Conv1x1", "AffineCoupling", "SplitPrior"]

_LOG_2PI = math.log(2.0 * math.pi)


class _NHWCLayer(FlowLayer):
    """NHWC flow layer whose weights depend on the channel count only (any H×W is accepted)."""

    input_rank = 4
    channels_only = True


def _spatial_size_of(x):
    """H·W of ``x`` as a scalar of ``x``'s dtype (static when known)."""
    if x.shape[1] is not None and x.shape[2] is not None:
        return tf.constant(float(x.shape[1] * x.shape[2]), x.dtype)
    shape = tf.shape(x)
    return tf.cast(shape[1] * shape[2], x.dtype)


# ---------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="snf_tf")
class ActNorm(_NHWCLayer):
    r"""Per-channel affine normalisation with data-dependent initialisation (Glow).

    .. math::
        y = (x - t)\,e^{-\log s},\qquad \log|\det ∂y/∂x| = -H·W·\textstyle\sum_c \log s_c .

    Kingma & Dhariwal 2018, §3.1; reference ``snf/layers/actnorm.py`` (docs/paper.md: layer
    details). Weights: ``bias`` = t and ``log_scale`` = log s, both [C], zero-initialised, and the
    non-trainable boolean ``initialized``, saved with the layer.

    Data-dependent init: the first ``forward(x, training=True)`` while ``initialized`` is False sets
    ``t`` = per-channel mean and ``log s`` = log(std + 1e-8) of that batch over N, H, W, and sets
    ``initialized`` — so the first training batch leaves the layer with zero-mean, unit-variance
    outputs per channel. As in the reference (``torch.std``) the std is the *unbiased* one (n − 1).
    Differences from the reference: only training-mode forwards initialise (the reference also
    initialised on its first evaluation or sampling call), and an uninitialised layer is the
    identity rather than an assertion error in reverse. ``initialize(x)`` forces the init at any
    time. Because the flag is a saved weight, a loaded layer never re-initialises.

    How the init runs:
      - eagerly: a Python ``if`` on the flag;
      - in ``tf.function`` / ``model.fit`` (XLA included) with one replica: ``tf.cond`` on the flag,
        with the statistics and the assignments inside the taken branch (no cost once initialised);
      - in a replica context of a multi-replica ``tf.distribute`` strategy (MirroredStrategy, ...):
        the statistics are those of the *global* batch (sums all-reduced across replicas, two
        passes for the variance), and the weights are written unconditionally with
        ``tf.where(initialized, old, new)`` — replica-context writes to mirrored variables go
        through ``merge_call``, which is not allowed inside ``tf.cond`` branches. The weights are
        created with ``aggregation="only_first_replica"`` (every replica writes identical values).
        Cost: two all-reduces of C numbers and three small writes per ActNorm per training step.
        To avoid it, initialise before distributed training (``initialize(x)`` on a first batch, or
        one eager training-mode forward, in cross-replica context).
    """

    constant_jacobian = True

    def _build_for_shape(self, event_shape):
        channels = event_shape[-1]
        # "only_first_replica": the data-dependent init writes these in replica context (see above).
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros",
                                    aggregation="only_first_replica")
        self.log_scale = self.add_weight(name="log_scale", shape=(channels,), initializer="zeros",
                                         aggregation="only_first_replica")
        self.initialized = self.add_weight(name="initialized", shape=(), dtype="bool",
                                           initializer="zeros", trainable=False,
                                           aggregation="only_first_replica")

    # -- data-dependent initialisation -------------------------------------------------------
    @staticmethod
    def _statistics(x, replica_context=None):
        """Per-channel mean and log(unbiased std + 1e-8) over N, H, W (across replicas if given)."""
        x = tf.stop_gradient(x)
        axes = [0, 1, 2]
        total = tf.reduce_sum(x, axis=axes)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
        if replica_context is not None:
            total, count = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, [total, count])
        mean = total / count
        squares = tf.reduce_sum(tf.square(x - mean), axis=axes)
        if replica_context is not None:
            squares = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, squares)
        std = tf.sqrt(squares / tf.maximum(count - 1.0, 1.0))
        return mean, tf.math.log(std + 1e-8)

    def initialize(self, x):
        """Set ``bias``/``log_scale`` from the statistics of ``x`` and mark the layer
        initialised."""
        x = self._check_input(x)
        mean, log_std = self._statistics(x)
        self.bias.assign(tf.cast(mean, self.bias.dtype))
        self.log_scale.assign(tf.cast(log_std, self.log_scale.dtype))
        self.initialized.assign(True)
        return tf.constant(True)

    def _maybe_initialize(self, x):
        if tf.executing_eagerly():
            if not bool(self.initialized.numpy()):
                self.initialize(x)
            return
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            mean, log_std = self._statistics(x, context)
            done = tf.convert_to_tensor(self.initialized)
            self.bias.assign(tf.where(done, tf.convert_to_tensor(self.bias),
                                      tf.cast(mean, self.bias.dtype)))
            self.log_scale.assign(tf.where(done, tf.convert_to_tensor(self.log_scale),
                                           tf.cast(log_std, self.log_scale.dtype)))
            self.initialized.assign(tf.constant(True))
            return
        tf.cond(tf.convert_to_tensor(self.initialized),
                lambda: tf.constant(False), lambda: self.initialize(x))

    # -- protocol ------------------------------------------------------------------------------
    def _forward(self, x, exact, training):
        """``y = (x − t)·e^{−log s}`` and ``−H·W·Σ log s`` per example (initialising first when
        ``training`` and not yet initialised). ``exact`` is ignored: the log-det is always exact."""
        if training:
            self._maybe_initialize(x)
        bias = tf.convert_to_tensor(self.bias)
        log_scale = tf.convert_to_tensor(self.log_scale)
        z = (x - bias) * tf.exp(-log_scale)
        return z, -_spatial_size_of(x) * tf.reduce_sum(log_scale)

    def exact_log_abs_det(self, event_shape=None):
        """``−H·W·Σ log s`` for per-example shape ``event_shape`` = (H, W, C)."""
        return -self._spatial_size(event_shape) * tf.reduce_sum(
            tf.convert_to_tensor(self.log_scale))

    def _inverse(self, z, exact):
        """``x = z·e^{log s} + t`` (exact)."""
        return z * tf.exp(tf.convert_to_tensor(self.log_scale)) + tf.convert_to_tensor(self.bias)


# ---------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="snf_tf")
class Conv1x1(_NHWCLayer):
    r"""Exact invertible 1×1 convolution (Glow baseline): ``z = x @ W`` at every pixel.

    .. math::
        \log|\det ∂z/∂x| = H·W·\log|\det W|,\qquad x = z\,W^{-1}.

    Kingma & Dhariwal 2018, §3.2; reference ``snf/layers/conv1x1.py`` (docs/paper.md: layer
    details): no bias, random orthogonal init (Q of a QR decomposition), inverse by a matrix
    inverse. The weight ``kernel`` is HWIO [1, 1, C, C] — the layout of ``SelfNormConv2D(1)``, the
    SNF replacement of this layer — with ``z = conv2d(x, kernel)``.

    Trained with plain autodiff through ``log|det W| = Σ log|diag R|`` of ``W = QR`` (O(C³) per
    step, the baseline the paper compares against); QR, unlike slogdet, compiles with XLA, so the
    layer works under ``jit_compile=True``. The ``exact`` flag is ignored. Also the exact 1×1
    conv inside :class:`~snf_tf.layers.EmergingConv2D` and :class:`~snf_tf.layers.ConvExponential`.
    """

    constant_jacobian = True

    def _build_for_shape(self, event_shape):
        channels = event_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(1, 1, channels, channels),
                                      initializer=orthogonal_1x1_init)

    def _load_variables(self, store):
        """Accept a 1×1 kernel stored as [C, C] (the layout of older Emerging and ConvExp
        files), so those files still load."""
        if len(store.keys()) == 1 and len(np.shape(store["0"])) == 2:
            store = {"0": np.asarray(store["0"])[None, None]}
        super()._load_variables(store)

    def log_abs_det_per_pixel(self):
        """``log|det W|`` of the C×C matrix, from a QR decomposition: unlike slogdet it compiles
        with XLA."""
        return warn_if_singular(self, log_abs_det_qr(tf.convert_to_tensor(self.kernel)[0, 0]))

    def exact_log_abs_det(self, event_shape=None):
        """``H·W·log|det W|`` for per-example shape ``event_shape`` = (H, W, C)."""
        return self._spatial_size(event_shape) * self.log_abs_det_per_pixel()

    def _forward(self, x, exact, training):
        """``z = conv1x1(x, W)`` and ``H·W·log|det W|`` per example."""
        kernel = tf.convert_to_tensor(self.kernel)
        z = tf.nn.conv2d(x, kernel, strides=1, padding="VALID")
        return z, _spatial_size_of(x) * self.log_abs_det_per_pixel()

    def _inverse(self, z, exact):
        """``x = conv1x1(z, W⁻¹)`` (exact)."""
        inverse = tf.linalg.inv(tf.convert_to_tensor(self.kernel)[0, 0])
        return tf.nn.conv2d(z, inverse[None, None], strides=1, padding="VALID")


# ---------------------------------------------------------------------------------------------
def _torch_default_conv(filters, kernel_size, fan_in, dtype, name):
    """A Conv2D with PyTorch's default init: kernel and bias ~ U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", dtype=dtype, name=name,
        # kaiming_uniform(a=√5) == VarianceScaling(1/3, fan_in, uniform): limit √(1/fan_in)
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
    )


@keras.saving.register_keras_serializable(package="snf_tf")
class AffineCoupling(_NHWCLayer):
    r"""Glow affine coupling with the reference network and its interleaved outputs.

    .. math::
        h = \mathrm{NN}(x_1),\quad \log s = 2\tanh(h_{[0::2]}/2),\quad t = h_{[1::2]},\quad
        z = [x_1,\; x_2 e^{\log s} + t],\qquad \log|\det| = \textstyle\sum \log s,

    with x₁ the first C/2 channels (unchanged) and x₂ the rest. Kingma & Dhariwal 2018, §3.3;
    reference ``snf/layers/coupling.py`` (docs/paper.md: layer details). NN = Conv3×3(C/2 → hidden,
    same) → ReLU → Conv1×1(hidden → hidden) → ReLU → Conv2dZero(hidden → C, 3×3, same), the last one
    zero-initialised with its output multiplied by exp(3·logs), logs a zero-initialised per-channel
    weight (``zero_logs``). The first two convs use PyTorch's default init. Scale and shift are
    *interleaved*: log-scale from the even output channels, shift from the odd ones.

    At init the layer is the identity (zero last conv). Sub-layers (Keras ``Conv2D``, built in
    ``build``): ``conv_in``, ``conv_hidden``, ``conv_zero``.

    **Conditional** (``context_dim`` given): NN(x₁, c) adds a learned projection of the context,
    ``c @ context_projection`` (``[context_dim, hidden]``, no bias), to the first conv's output at
    every position — with a one-hot label c, a learned per-class embedding broadcast over H×W (as
    in class-conditional Glow). The log-det formula is unchanged (the network still sees x₁ only
    of x), so the layer stays exactly invertible given c.

    Args:
        hidden_channels: width of the network (512 in the paper; 16 in the GECO experiment).
        context_dim: width of the context vector of a conditional coupling (None: unconditional).
    """

    def __init__(self, hidden_channels=512, context_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_channels = check_positive_int(hidden_channels, "hidden_channels",
                                                  "AffineCoupling")
        self.context_dim = None if context_dim is None else check_positive_int(
            context_dim, "context_dim", "AffineCoupling")
        self.uses_context = self.context_dim is not None

    def _build_for_shape(self, event_shape):
        channels = event_shape[-1]
        if channels % 2 or channels < 2:
            raise ValueError(
                f"{self.name}: {type(self).__name__} splits the channels in two halves and needs "
                f"an even channel count, got C = {channels}. Squeeze first "
                "(C → 4C) or pad the input."
            )
        half, hidden = channels // 2, self.hidden_channels
        self.conv_in = _torch_default_conv(hidden, 3, 9 * half, self.dtype_policy, "conv_in")
        self.conv_in.build((None, None, None, half))
        self.conv_hidden = _torch_default_conv(hidden, 1, hidden, self.dtype_policy, "conv_hidden")
        self.conv_hidden.build((None, None, None, hidden))
        # Reference Conv2dZero: zero weight and bias. There `bias` and `logs` are both
        # nn.Parameter(zeros) of the *same* tensor, so they probably share storage (every update
        # of one moves the other). We keep them as two independent weights.
        self.conv_zero = keras.layers.Conv2D(
            channels, 3, padding="same", kernel_initializer="zeros", bias_initializer="zeros",
            dtype=self.dtype_policy, name="conv_zero")
        self.conv_zero.build((None, None, None, hidden))
        self.zero_logs = self.add_weight(name="zero_logs", shape=(channels,), initializer="zeros")
        if self.uses_context:  # PyTorch's Linear init, as the convs
            bound = 1.0 / math.sqrt(self.context_dim)
            self.context_projection = self.add_weight(
                name="context_projection", shape=(self.context_dim, hidden),
                initializer=keras.initializers.RandomUniform(-bound, bound))

    def scale_and_shift(self, x1, context=None):
        """``(log s, t)`` of the network at the conditioning half ``x1``
        (each with C/2 channels), given ``context`` ``[batch, context_dim]`` if conditional."""
        # the network computes in ``network_dtype`` (half precision under a mixed policy); its
        # output is cast back, so log s, t and everything after them stay in the flow's dtype
        h = self.conv_in(x1)
        if self.uses_context:
            projection = tf.cast(tf.convert_to_tensor(self.context_projection), h.dtype)
            embedding = tf.matmul(tf.cast(context, h.dtype), projection)
            h = h + embedding[:, None, None, :]
        h = tf.nn.relu(h)
        h = tf.nn.relu(self.conv_hidden(h))
        h = tf.cast(self.conv_zero(h), x1.dtype) * tf.exp(
            3.0 * tf.convert_to_tensor(self.zero_logs))
        log_s = 2.0 * tf.tanh(h[..., 0::2] / 2.0)
        return log_s, h[..., 1::2]

    def _forward(self, x, exact, training, context=None):
        """``z = [x₁, x₂·e^{log s} + t]`` and ``Σ log s`` per example (``exact`` is ignored)."""
        half = self.channels // 2
        x1, x2 = x[..., :half], x[..., half:]
        log_s, shift = self.scale_and_shift(x1, context)
        z = tf.concat([x1, x2 * tf.exp(log_s) + shift], axis=-1)
        return z, tf.reduce_sum(log_s, axis=[1, 2, 3])

    def _inverse(self, z, exact, context=None):
        """``x = [z₁, (z₂ − t)·e^{−log s}]`` (exact)."""
        half = self.channels // 2
        z1, z2 = z[..., :half], z[..., half:]
        log_s, shift = self.scale_and_shift(z1, context)
        return tf.concat([z1, (z2 - shift) * tf.exp(-log_s)], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_channels=self.hidden_channels)
        if self.context_dim is not None:  # absent for unconditional layers: files without it load
            config.update(context_dim=self.context_dim)
        return config


# ---------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="snf_tf")
class SplitPrior(_NHWCLayer):
    r"""Factor out half of the channels under a standard normal (Glow multi-scale split).

    .. math::
        y = \mathrm{coupling}(x),\quad z = y_{[:C/2]},\quad
        \log\text{-det} = \log|\det ∂y/∂x| + \log\mathcal N(y_{[C/2:]};\,0, I).

    Dinh et al. 2017 / Kingma & Dhariwal 2018; reference ``snf/layers/splitprior.py``
    (docs/paper.md: layer details): an :class:`AffineCoupling` on the full tensor, then the first
    C/2 channels go on and the rest are scored under a *standard* normal (not a learned conditional
    prior). The returned "log-det" therefore includes a log-density and the layer is not square:
    output channels = C/2.

    Inverse: ``inverse(z, exact=False, temperature=1.0, seed=None)`` samples the dropped half from
    N(0, T²I) (seeds as :func:`snf_tf.layers.base.draw`: None = the layer's own
    ``SeedGenerator``, seeded by the constructor's ``seed``; an int; a stateless pair);
    :meth:`merge` takes a given dropped half instead (exact round trips with :meth:`split`).

    Conditional (``context_dim`` given): the coupling is a conditional :class:`AffineCoupling`,
    so ``forward``, ``inverse``, :meth:`split` and :meth:`merge` take the ``context``.

    Args:
        hidden_channels: width of the coupling network (512 in the paper).
        seed: optional int seed of the layer's sampling ``SeedGenerator``.
        context_dim: width of the context vector of a conditional split (None: unconditional).
    """

    samples_on_inverse = True
    preserves_shape = False

    def __init__(self, hidden_channels=512, seed=None, context_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_channels = check_positive_int(hidden_channels, "hidden_channels", "SplitPrior")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise ValueError(f"SplitPrior: seed must be a non-negative int or None, got {seed!r}.")
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.context_dim = None if context_dim is None else check_positive_int(
            context_dim, "context_dim", "SplitPrior")
        self.uses_context = self.context_dim is not None
        self.coupling = AffineCoupling(self.hidden_channels, context_dim=self.context_dim,
                                       dtype=self.dtype_policy, name="coupling")

    def _build_for_shape(self, event_shape):
        channels = event_shape[-1]
        if channels % 2 or channels < 2:
            raise ValueError(
                f"{self.name}: SplitPrior keeps half of the channels and needs an even channel "
                f"count, got C = {channels}. Squeeze first (C → 4C) or pad the input."
            )
        self.coupling.build((None,) + event_shape)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        channels = input_shape[-1]
        return input_shape[:-1] + (None if channels is None else channels // 2,)

    def split(self, x, training=False, context=None):
        """``(kept, dropped, log_det)``: the coupling output's two halves and the forward log-det
        (coupling log-det + log N(dropped))."""
        x = self._check_input(x)
        return self._split(x, training, self._check_context(context, x))

    def _split(self, x, training, context=None):
        y, coupling_log_det = self.coupling.forward(x, training=training, context=context)
        half = self.channels // 2
        kept, dropped = y[..., :half], y[..., half:]
        log_normal = -0.5 * tf.reduce_sum(tf.square(dropped) + _LOG_2PI, axis=[1, 2, 3])
        return kept, dropped, coupling_log_det + log_normal

    def _forward(self, x, exact, training, context=None):
        """``(kept half, coupling log-det + log N(dropped half))`` per example."""
        kept, _, log_det = self._split(x, training, context)
        return kept, log_det

    def _inverse(self, z, exact, temperature, seed, context=None):
        """``x`` from the kept half ``z`` and a dropped half sampled from N(0, T²)."""
        dropped = draw("normal", tf.shape(z), z.dtype, seed, self.seed_generator,
                       stddev=temperature)
        return self.coupling.inverse(tf.concat([z, dropped], axis=-1), context=context)

    def merge(self, kept, dropped, context=None):
        """The exact inverse of :meth:`split`: ``x`` from both halves."""
        if not self.built:
            raise ValueError(f"{self.name}: build the layer (call it on data once) before merge().")
        kept = self._check_input(kept, "z")
        dropped = self._check_input(dropped, "dropped")  # the shape of the kept half
        context = self._check_context(context, kept)
        return self.coupling.inverse(tf.concat([kept, dropped], axis=-1), context=context)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_channels=self.hidden_channels, seed=self.seed)
        if self.context_dim is not None:
            config.update(context_dim=self.context_dim)
        return config
