"""Self-normalizing dense and convolutional flow layers (the paper's contribution).

Keller et al., *Self Normalizing Flows*, ICML 2021, §3-§4 and appendix A.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from snf_tf._compat import in_xla_context
from snf_tf.checks import check_positive_int
from snf_tf.layers.base import FlowLayer, orthogonal_1x1_init, warn_if_singular
from snf_tf.ops import selfnorm as sn_ops
from snf_tf.ops import toeplitz

__all__ = ["SelfNormDense", "SelfNormConv2D"]

_RECONSTRUCTIONS = ("default", "symmetric", "only_inverse")


def _fingerprint(kernel):
    """Two int32 sums of the kernel's bit patterns with pseudo-random odd weights.

    The staleness test of the exact-log-det cache: integer arithmetic (wrapping mod 2³²) is
    exact, so the same kernel gives the same pair in any summation order — eagerly, traced or
    under XLA — while a changed kernel changes it except with probability ≈ 2⁻⁶⁴. Costs O(size)
    like the element-wise comparison with a stored kernel copy it replaces, without the copy.
    """
    bits = tf.reshape(tf.bitcast(kernel, tf.int32), [-1])  # float64: two words per element
    index = tf.range(tf.size(bits), dtype=tf.int32)
    odd = lambda w: tf.bitwise.bitwise_or(w, 1)  # noqa: E731 - odd weights: every bit counts
    first = odd(index * np.int32(-1640531535) + np.int32(1013904223))
    second = odd(tf.bitwise.bitwise_xor(index, np.int32(0x5BD1E995)) * np.int32(-2048144789))
    return tf.stack([tf.reduce_sum(bits * first), tf.reduce_sum(bits * second)])


class _LiveLogAbsDet:
    """One layer's live ``log|det|`` as a callable object, for ``tf.function``.

    ``tf.function`` counts retracings per Python code object, so a lambda per layer would make
    eight SNF layers that each trace once look like one function retraced eight times ("5 out of
    the last 5 calls ... triggered tf.function retracing"). An object is counted by itself.
    """

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, kernel):
        return self.layer._live_log_abs_det(kernel)


class _SelfNormLayer(FlowLayer):
    """Shared machinery: gradient modes, learned inverse, reconstruction loss, exact log-det cache.

    Subclasses provide ``_linear(x, kernel)`` (the bias-free map), ``_selfnorm_op``,
    ``_log_det_surrogate``, ``_live_log_abs_det(kernel)`` and ``_exact_solve(y, kernel)``.
    """

    needs_known_shape = True
    constant_jacobian = True
    has_log_det_cache = True
    _gradients = ("self_normalized", "exact")

    def __init__(self, gradient="self_normalized", reconstruction_weight=1.0,
                 reconstruction="default", **kwargs):
        super().__init__(**kwargs)
        if gradient not in self._gradients:
            raise ValueError(
                f"{type(self).__name__}: gradient must be one of {self._gradients}, "
                f"got {gradient!r}."
            )
        weight = float(reconstruction_weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"{type(self).__name__}: reconstruction_weight must be finite and >= 0, "
                f"got {weight}."
            )
        if reconstruction not in _RECONSTRUCTIONS:
            raise ValueError(
                f"{type(self).__name__}: reconstruction must be one of {_RECONSTRUCTIONS}, "
                f"got {reconstruction!r}."
            )
        self.gradient = gradient
        self.initial_reconstruction_weight = weight
        self.reconstruction = reconstruction
        #: read the cached exact log-det without a staleness test or a live computation (set by
        #: ``FlowModel.frozen_log_dets()`` for SavedModel export; gradients are then meaningless)
        self.frozen_log_det = False

    @property
    def learns_inverse(self):
        """True when the layer trains a learned inverse ``inverse_kernel`` (SNF mode)."""
        return self.gradient == "self_normalized"

    @property
    def supports_xla(self):
        """Exact baselines need slogdet (no XLA kernel) in every training step: Keras then turns
        jit_compile off for any model containing them."""
        return self.gradient != "exact"

    def _require_learned_inverse(self, what):
        if not self.learns_inverse:
            raise ValueError(f"{self.name}: {what} needs a learned inverse, which only "
                             f"gradient='self_normalized' has (this layer: {self.gradient!r}).")

    @property
    def uses_reconstruction(self):
        return self.learns_inverse and self.initial_reconstruction_weight > 0

    def _add_common_weights(self, kernel_shape):
        """Learned inverse, λ and the exact-log-det cache (call after ``kernel``/``bias`` exist)."""
        if self.learns_inverse:
            self.inverse_kernel = self.add_weight(
                name="inverse_kernel", shape=kernel_shape,
                initializer=lambda shape, dtype: self._initial_inverse(),
            )
        # A variable, not a constant, so that GECO can change λ without retracing.
        self.reconstruction_weight = self.add_weight(
            name="reconstruction_weight", shape=(),
            # Constant() rounds through float32; build the value in the weight's own dtype.
            initializer=lambda shape, dtype: tf.constant(
                self.initial_reconstruction_weight, dtype=dtype, shape=shape),
            trainable=False,
        )
        # Unweighted reconstruction error of the last training batch (read by the Geco callback).
        self.last_reconstruction_error = self.add_weight(
            name="last_reconstruction_error", shape=(), initializer="zeros", trainable=False,
            aggregation="mean",
        )
        # NaN until computed: even a (≈ 2⁻⁶⁴) false match of the fingerprint reads NaN, never a
        # wrong number.
        self.log_det_cache = self.add_weight(
            name="log_det_cache", shape=(),
            initializer=keras.initializers.Constant(float("nan")), trainable=False,
        )
        # _fingerprint of the kernel the cache was computed from.
        self.log_det_fingerprint = self.add_weight(
            name="log_det_fingerprint", shape=(2,), dtype="int32", initializer="zeros",
            trainable=False,
        )

    def _load_variables(self, store):
        """Load files that hold a copy of the kernel (``log_det_kernel``) in the fingerprint's
        place: the cache stays valid exactly when that copy equals the kernel."""
        names = [v.name for v in self.variables]
        last = str(len(names) - 1)
        if len(store.keys()) == len(names) and tuple(np.shape(store[last])) == tuple(
                self.kernel.shape):
            store = {key: store[key] for key in store.keys()}
            copy, kernel = np.asarray(store[last]), np.asarray(store[str(names.index("kernel"))])
            fresh = np.array_equal(copy, kernel)
            store[last] = (_fingerprint(tf.constant(kernel, self.kernel.dtype)).numpy() if fresh
                           else np.zeros(2, np.int32))
            if not fresh:
                store[str(names.index("log_det_cache"))] = np.array(np.nan, kernel.dtype)
        super()._load_variables(store)

    # -- exact log|det| ------------------------------------------------------------------------
    def refresh_log_det(self):
        """Recompute the exact ``log|det|`` into the cache (outside XLA) and return it."""
        if not self.built:
            raise ValueError(
                f"{self.name}: build the layer (call it once) before refresh_log_det()."
            )
        kernel = tf.convert_to_tensor(self.kernel)
        if tf.executing_eagerly():  # one traced call, not the banded LU op by op
            traced = self.__dict__.get("_traced_log_abs_det")
            if traced is None:  # set past Keras's attribute tracking, which would wrap it
                traced = tf.function(_LiveLogAbsDet(self), reduce_retracing=True)
                self.__dict__["_traced_log_abs_det"] = traced
            value = warn_if_singular(self, traced(kernel))
        else:
            value = self._live_log_abs_det(kernel)
        self.log_det_cache.assign(value)
        self.log_det_fingerprint.assign(_fingerprint(kernel))
        return value

    def _cache_is_fresh(self):
        return tf.reduce_all(tf.equal(_fingerprint(tf.convert_to_tensor(self.kernel)),
                                      tf.convert_to_tensor(self.log_det_fingerprint)))

    def exact_log_abs_det(self, event_shape=None):
        """The true ``log|det|`` of the layer's Jacobian (a scalar, per example).

        ``gradient="exact"``: computed live and differentiable. Otherwise the cache is used while it
        matches the current kernel; a stale cache is recomputed (eagerly: and stored) — except under
        XLA, where slogdet has no kernel and a stale cache yields NaN rather than a wrong number.
        Call ``refresh_log_det()`` after weight updates and before compiled evaluation. With
        ``frozen_log_det`` the cache is read as it is.
        """
        if event_shape is not None and tuple(event_shape) != self.event_shape:
            raise ValueError(f"{self.name}: built for per-example shape {self.event_shape}, "
                             f"asked for {tuple(event_shape)}.")
        cache = tf.convert_to_tensor(self.log_det_cache)
        if self.frozen_log_det:
            return cache
        kernel = tf.convert_to_tensor(self.kernel)
        if self.gradient == "exact":
            return self._live_log_abs_det(kernel)
        if tf.executing_eagerly():
            if not bool(self._cache_is_fresh()):
                self.refresh_log_det()
            return tf.convert_to_tensor(self.log_det_cache)
        fresh = self._cache_is_fresh()
        if in_xla_context():
            return tf.where(fresh, cache, tf.constant(float("nan"), cache.dtype))
        return tf.cond(fresh, lambda: cache, lambda: self._live_log_abs_det(kernel))

    def _cached_log_abs_det_with_live_gradient(self, kernel):
        """Exact-gradient layers outside training: the cached value while it is fresh (evaluation
        refreshes it once, instead of one factorisation per batch), with the live gradient
        computed only if one is asked for; a stale cache falls back to the live computation."""
        cache = tf.convert_to_tensor(self.log_det_cache)

        @tf.custom_gradient
        def cached(kernel):
            def grad(upstream):
                with tf.GradientTape() as tape:
                    here = tf.identity(kernel)  # in the graph the gradient is traced in
                    tape.watch(here)
                    value = self._live_log_abs_det(here)
                return upstream * tape.gradient(value, here)
            return tf.identity(cache), grad

        if tf.executing_eagerly():
            return (cached(kernel) if bool(self._cache_is_fresh())
                    else self._live_log_abs_det(kernel))
        return tf.cond(self._cache_is_fresh(), lambda: cached(kernel),
                       lambda: self._live_log_abs_det(kernel))

    # -- protocol ------------------------------------------------------------------------------
    def _forward_with_reconstruction(self, x, exact, training):
        """``exact=False``: for SNF and relative modes the log-det is 0 in value and carries the
        self-normalized (resp. relative) gradient. ``exact=True``: the true value, same gradient.
        The reconstruction loss is ``None`` unless training an SNF layer with λ > 0."""
        kernel = tf.convert_to_tensor(self.kernel)
        bias = tf.convert_to_tensor(self.bias)
        recon = None
        if self.gradient == "exact":
            z = self._linear(x, kernel) + bias
            if self.frozen_log_det:
                log_det = tf.convert_to_tensor(self.log_det_cache)
            elif training:
                log_det = self._live_log_abs_det(kernel)
            else:
                log_det = self._cached_log_abs_det_with_live_gradient(kernel)
            log_det = warn_if_singular(self, log_det)
        else:
            if self.gradient == "relative":
                z = sn_ops.relative_dense(x, kernel, bias)
                log_det = sn_ops.relative_log_det_surrogate(kernel)
            else:
                inverse_kernel = tf.convert_to_tensor(self.inverse_kernel)
                fuse = training and self.uses_reconstruction and self.reconstruction == "default"
                weight = tf.convert_to_tensor(self.reconstruction_weight) if fuse else None
                z, fused = self._selfnorm_op(x, kernel, bias, inverse_kernel, weight)
                if training and self.uses_reconstruction:
                    recon = fused if fuse else self.reconstruction_loss(x)
                    self.last_reconstruction_error.assign(
                        tf.stop_gradient(recon) / tf.convert_to_tensor(self.reconstruction_weight))
                log_det = self._log_det_surrogate(kernel, inverse_kernel)
            if exact:
                log_det = log_det + tf.stop_gradient(self.exact_log_abs_det())
        return z, log_det, recon

    def _inverse(self, z, exact):
        """Through the learned inverse R, or an exact solve when ``exact=True`` (always exact for
        modes without a learned inverse)."""
        y = z - tf.convert_to_tensor(self.bias)
        if exact or not self.learns_inverse:
            return self._exact_solve(y, tf.convert_to_tensor(self.kernel))
        return self._linear(y, tf.convert_to_tensor(self.inverse_kernel))

    def reconstruction_loss(self, x):
        """``λ · mean_batch Σ (R(W x) − x)²`` with ``x`` held constant (bias-free, paper eq. 3).

        ``reconstruction="symmetric"`` averages it with ``Σ (sg(Wx) − W(R(Wx)))²``;
        ``"only_inverse"`` stops the gradient into W. Examples with non-finite values count as 0.
        """
        if not self.learns_inverse:
            return tf.zeros([], dtype=self.compute_dtype)
        x = tf.stop_gradient(self._check_input(x))
        axes = list(range(1, x.shape.rank))
        ok = tf.reduce_all(tf.math.is_finite(x), axis=axes, keepdims=True)
        x = tf.where(ok, x, tf.zeros_like(x))  # keeps NaN rows out of the gradient too
        kernel = tf.convert_to_tensor(self.kernel)
        inverse_kernel = tf.convert_to_tensor(self.inverse_kernel)
        h = self._linear(x, kernel)
        if self.reconstruction == "only_inverse":
            h = tf.stop_gradient(h)
        per_example = tf.reduce_sum(tf.square(self._linear(h, inverse_kernel) - x), axis=axes)
        if self.reconstruction == "symmetric":
            h_round = self._linear(self._linear(h, inverse_kernel), kernel)
            per_example = 0.5 * (per_example + tf.reduce_sum(
                tf.square(tf.stop_gradient(h) - h_round), axis=axes))
        per_example = tf.where(tf.math.is_finite(per_example), per_example,
                               tf.zeros_like(per_example))
        return tf.convert_to_tensor(self.reconstruction_weight) * tf.reduce_mean(per_example)

    def get_config(self):
        config = super().get_config()
        config.update(
            gradient=self.gradient,
            reconstruction_weight=self.initial_reconstruction_weight,
            reconstruction=self.reconstruction,
        )
        return config


@keras.saving.register_keras_serializable(package="snf_tf")
class SelfNormDense(_SelfNormLayer):
    r"""Square dense flow layer ``z = x W + b`` trained with the self-normalized gradient.

    Keller et al., ICML 2021, §3.1. The layer learns ``R ≈ W⁻¹`` (``inverse_kernel``) and replaces
    the O(D³) gradient of ``log|det W|`` by ``Rᵀ``; the likelihood gradients of W and R carry a
    factor ½ (the objective is ½ log p_f + ½ log p_g), and ``λ‖R W x − x‖²`` keeps R an inverse:

    .. math::
        \frac{∂L}{∂W} = \tfrac12\bigl(x^\topδ − R^\top\bigr) + \frac{∂\,\mathrm{rec}}{∂W},\qquad
        \frac{∂L}{∂R} = \tfrac12\bigl(−(z − b)^\topδ_x + W^\top\bigr) + \frac{∂\,\mathrm{rec}}{∂R},

    with L the negative log-likelihood, δ = ∂L/∂z the gradient that arrives from the layers
    above and δ_x = ∂L/∂x the one passed below (one row per example, the products summed over
    the batch), and rec = λ‖x W R − x‖².

    Args:
        units: optional; if given it must equal the input dimension D (the layer is square).
        gradient: ``"self_normalized"`` (default), ``"exact"`` (autodiff through ``slogdet(W)``,
            the paper's exact-gradient baseline) or ``"relative"`` (Gresele et al., NeurIPS 2020:
            Euclidean gradient right-multiplied by ``WᵀW``). Only the SNF mode has
            ``inverse_kernel``.
        reconstruction_weight: λ of the reconstruction loss (SNF mode).
        reconstruction: ``"default"``, ``"symmetric"`` or ``"only_inverse"`` (paper §3, code
            options).

    Weights: ``kernel`` [D, D] with ``z = x @ kernel + bias`` (initialised to I), ``bias``
    (N(0, std(I)²)), ``inverse_kernel`` with ``x ≈ (z − bias) @ inverse_kernel`` (I).
    """

    input_rank = 2
    _gradients = ("self_normalized", "exact", "relative")

    def __init__(self, units=None, gradient="self_normalized", reconstruction_weight=1.0,
                 reconstruction="default", **kwargs):
        super().__init__(gradient=gradient, reconstruction_weight=reconstruction_weight,
                         reconstruction=reconstruction, **kwargs)
        self.units = None if units is None else check_positive_int(units, "units",
                                                                   "SelfNormDense")

    def _build_for_shape(self, event_shape):
        dim = event_shape[0]
        if self.units is not None and self.units != dim:
            raise ValueError(
                f"{self.name}: a flow layer must be square, but units={self.units} and the input "
                f"has D={dim} features. Omit units (it is taken from the input) or make them equal."
            )
        self.units = dim
        self.kernel = self.add_weight(name="kernel", shape=(dim, dim),
                                      initializer=keras.initializers.Identity())
        # Reference init: bias ~ N(0, std(W)²) with W = I.
        self.bias = self.add_weight(
            name="bias", shape=(dim,),
            initializer=keras.initializers.RandomNormal(stddev=float(np.std(np.eye(dim)))),
        )
        self._add_common_weights((dim, dim))

    def _initial_inverse(self):
        return tf.transpose(tf.convert_to_tensor(self.kernel))

    def _linear(self, x, kernel):
        return tf.matmul(x, kernel)

    def _selfnorm_op(self, x, kernel, bias, inverse_kernel, weight):
        return sn_ops.selfnorm_dense(x, kernel, bias, inverse_kernel, weight)

    def _log_det_surrogate(self, kernel, inverse_kernel):
        return sn_ops.dense_log_det_surrogate(kernel, inverse_kernel)

    def _live_log_abs_det(self, kernel):
        return tf.linalg.slogdet(kernel)[1]

    def _exact_solve(self, y, kernel):
        return tf.transpose(tf.linalg.solve(kernel, tf.transpose(y), adjoint=True))

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config

    def inverse_error(self):
        """Frobenius norm ‖R W − I‖ of the learned inverse (0 when R = W⁻¹)."""
        self._require_learned_inverse("inverse_error")
        product = tf.matmul(tf.convert_to_tensor(self.kernel),
                            tf.convert_to_tensor(self.inverse_kernel))
        return tf.norm(product - tf.eye(self.units, dtype=product.dtype))


@keras.saving.register_keras_serializable(package="snf_tf")
class SelfNormConv2D(_SelfNormLayer):
    r"""Square k×k convolutional flow layer ``z = w ⋆ x + b`` with the self-normalized gradient.

    Keller et al., ICML 2021, §3.2 and appendix A.2. 'same' padding, stride 1, C → C channels,
    NHWC. The learned inverse is the conv ``x ≈ r ⋆ (z − b)``; the log-det gradient of the
    Toeplitz matrix ``T(w)`` is replaced by ``flip(r) ⊙ m``, with ``flip`` the transposed-conv
    kernel and ``m`` the number of positions each kernel tap touches:

    .. math::
        \frac{∂L}{∂w} = \tfrac12\bigl(x ⋆ δ − \mathrm{flip}(r) ⊙ m\bigr)
            + \frac{∂\,\mathrm{rec}}{∂w},\qquad
        \frac{∂L}{∂r} = \tfrac12\bigl(−(z − b) ⋆ δ_x + \mathrm{flip}(w) ⊙ m\bigr)
            + \frac{∂\,\mathrm{rec}}{∂r},

    with δ = ∂L/∂z and δ_x = ∂L/∂x as for ``SelfNormDense`` and ``a ⋆ b`` the kernel-shaped
    correlation of input and output gradient (the weight gradient of an ordinary conv).

    The exact log-det is ``H·W·log|det w|`` for 1×1 kernels and ``log|det T(w)|`` otherwise.

    Args:
        kernel_size: odd int (1, 3, 5, ...).
        gradient: ``"self_normalized"`` (default) or ``"exact"`` (autodiff through the Toeplitz
            slogdet).
        reconstruction_weight: as in :class:`SelfNormDense`.
        reconstruction: as in :class:`SelfNormDense`.
        padding: only ``"same"`` is a flow; anything else is rejected.
        strides: only 1 is a flow; anything else is rejected.

    Init (reference): k > 1: identity (dirac) kernel + Xavier-normal noise (gain 0.01),
    ``R = flip(W)``; 1×1: random orthogonal, ``R = Wᵀ``.
    """

    input_rank = 4

    def __init__(self, kernel_size=3, gradient="self_normalized", reconstruction_weight=1.0,
                 reconstruction="default", padding="same", strides=1, **kwargs):
        super().__init__(gradient=gradient, reconstruction_weight=reconstruction_weight,
                         reconstruction=reconstruction, **kwargs)
        if isinstance(kernel_size, (tuple, list)):
            if len(kernel_size) != 2 or kernel_size[0] != kernel_size[1]:
                raise ValueError(f"SelfNormConv2D: kernel_size must be square, got {kernel_size}.")
            kernel_size = kernel_size[0]
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) \
                or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"SelfNormConv2D: kernel_size must be an odd positive int (1, 3, 5, ...), "
                f"got {kernel_size!r}; even kernels have no centred 'same' padding."
            )
        if str(padding).lower() != "same":
            raise ValueError(
                f"SelfNormConv2D: only padding='same' keeps the layer square and invertible, "
                f"got {padding!r}."
            )
        if strides not in (1, (1, 1), [1, 1]):
            raise ValueError(f"SelfNormConv2D: only strides=1 is invertible, got {strides!r}.")
        self.kernel_size = int(kernel_size)
        self._toeplitz = None

    def _build_for_shape(self, event_shape):
        height, width, channels = event_shape
        k = self.kernel_size
        shape = (k, k, channels, channels)
        if k == 1:
            kernel_init = orthogonal_1x1_init
            bias_std = 0.01 / math.sqrt(channels)
        else:
            # Xavier-normal with gain 0.01, fan_in = fan_out = C·k² (PyTorch's convention).
            bias_std = 0.01 / math.sqrt(channels * k * k)
            kernel_init = self._dirac_init(bias_std)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer=kernel_init)
        self.bias = self.add_weight(name="bias", shape=(channels,),
                                    initializer=keras.initializers.RandomNormal(stddev=bias_std))
        self._counts = sn_ops.tap_counts(k, height, width)
        self._add_common_weights(shape)

    @staticmethod
    def _dirac_init(noise_std):
        def init(shape, dtype=None):
            k, _, channels, _ = shape
            dirac = np.zeros(shape)
            dirac[k // 2, k // 2] = np.eye(channels)
            noise = keras.initializers.RandomNormal(stddev=noise_std)(shape, dtype=dtype)
            return tf.cast(dirac, noise.dtype) + noise
        return init

    def _initial_inverse(self):
        return sn_ops.flip_kernel(tf.convert_to_tensor(self.kernel))

    def _linear(self, x, kernel):
        return tf.nn.conv2d(x, kernel, strides=1, padding="SAME")

    def _selfnorm_op(self, x, kernel, bias, inverse_kernel, weight):
        return sn_ops.selfnorm_conv2d(x, kernel, bias, inverse_kernel, weight)

    def _log_det_surrogate(self, kernel, inverse_kernel):
        return sn_ops.conv_log_det_surrogate(kernel, inverse_kernel, self._counts)

    @property
    def toeplitz_size(self):
        height, width, channels = self.event_shape
        return height * width * channels

    def _toeplitz_indices(self):
        if self._toeplitz is None:  # built lazily: only exact evaluation needs it
            self._toeplitz = toeplitz.toeplitz_indices(*self.event_shape, self.kernel_size)
        return self._toeplitz

    def toeplitz_matrix(self, kernel=None):
        """Dense ``[D, D]`` matrix of the conv, ``vec(conv(x, kernel)) = vec(x) @ T``."""
        kernel = tf.convert_to_tensor(self.kernel if kernel is None else kernel)
        positions, taps = self._toeplitz_indices()
        return toeplitz.conv_toeplitz(kernel, positions, taps, self.toeplitz_size)

    def _live_log_abs_det(self, kernel):
        if self.kernel_size == 1:
            height, width, _ = self.event_shape
            return height * width * tf.linalg.slogdet(kernel[0, 0])[1]
        positions, taps = self._toeplitz_indices()
        return toeplitz.conv_log_abs_det(kernel, positions, taps, self.toeplitz_size)

    def _exact_solve(self, y, kernel):
        if self.kernel_size == 1:
            channels = self.event_shape[-1]
            flat = tf.reshape(y, [-1, channels])
            x = tf.transpose(tf.linalg.solve(kernel[0, 0], tf.transpose(flat), adjoint=True))
            return tf.reshape(x, tf.shape(y))
        positions, taps = self._toeplitz_indices()
        return toeplitz.conv_solve(kernel, positions, taps, self.toeplitz_size, y)

    def inverse_error(self):
        """Frobenius norm ‖T(R) T(W) − I‖ of the learned inverse (1×1: H·W-weighted C×C form)."""
        self._require_learned_inverse("inverse_error")
        kernel = tf.convert_to_tensor(self.kernel)
        inverse_kernel = tf.convert_to_tensor(self.inverse_kernel)
        if self.kernel_size == 1:
            height, width, channels = self.event_shape
            product = tf.matmul(kernel[0, 0], inverse_kernel[0, 0])
            eye = tf.eye(channels, dtype=product.dtype)
            return math.sqrt(height * width) * tf.norm(product - eye)
        product = tf.matmul(self.toeplitz_matrix(kernel), self.toeplitz_matrix(inverse_kernel))
        return tf.norm(product - tf.eye(self.toeplitz_size, dtype=product.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size)
        return config
