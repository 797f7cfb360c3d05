"""One table of every flow layer in snf_tf, each run through the same checks (FlowJAX/zuko style).

A new layer joins with one ``Case`` line. ``test_every_flow_layer_is_in_the_table`` fails when a
layer exported by ``snf_tf.layers`` is missing here. The numerical checks run in every execution
mode: eagerly, inside a ``tf.function`` and under XLA (``jit_compile=True``), which take different
branches in the layers (eager value checks, ``tf.cond`` on caches, XLA's NaN-for-stale rule).
"""

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import nll, perturb
from example_layer import ElementwiseAffine

import snf_tf.layers as L
from snf_tf.layers import RealNVPCoupling


@dataclasses.dataclass
class Case:
    name: str
    make: Callable[[], L.FlowLayer]      # a fresh, unbuilt layer (float64 unless stated)
    shape: tuple                         # input shape without the batch axis
    sample: Callable = None              # rng, batch -> float64 inputs; default standard normal
    inverse_atol: float = 1e-10          # tolerance of inverse(forward(x), exact=True)
    zero_cheap_log_det: bool = False     # SNF layers: exact=False log-det is 0 in value
    perturb: float = 0.0                 # add noise to weights first (e.g. zero-initialised convs)
    square_jacobian: bool = True         # False for layers that drop dimensions (SplitPrior)
    invert: Callable = None              # (layer, x, z) -> x: the exact inverse (SplitPrior: merge)
    accepts_integers: bool = False       # Dequantize takes the uint8 data itself
    no_xla: str = None                   # why the exact paths cannot compile with XLA (if so)
    context_dim: int = None              # conditional layers: the width of their context


def _normal(rng, batch, shape):
    return rng.standard_normal((batch,) + shape)


def _unit_interval(shape):
    return lambda rng, batch: rng.uniform(0.05, 0.95, (batch,) + shape)


def _pixels(shape):
    return lambda rng, batch: rng.integers(0, 256, (batch,) + shape).astype("float64")


CASES = [
    Case("SelfNormDense", lambda: L.SelfNormDense(dtype="float64"), (6,), zero_cheap_log_det=True),
    Case("SelfNormDense-exact", lambda: L.SelfNormDense(gradient="exact", dtype="float64"), (6,)),
    Case("SelfNormDense-relative", lambda: L.SelfNormDense(gradient="relative", dtype="float64"),
         (6,), zero_cheap_log_det=True),
    Case("SelfNormConv2D-1x1", lambda: L.SelfNormConv2D(1, dtype="float64"), (3, 4, 3),
         zero_cheap_log_det=True),
    Case("SelfNormConv2D-3x3", lambda: L.SelfNormConv2D(3, dtype="float64"), (4, 4, 2),
         zero_cheap_log_det=True),
    Case("SelfNormConv2D-5x5-exact", lambda: L.SelfNormConv2D(5, gradient="exact", dtype="float64"),
         (5, 4, 2)),
    Case("ActNorm", lambda: L.ActNorm(dtype="float64"), (3, 4, 2), perturb=0.1),
    Case("Conv1x1", lambda: L.Conv1x1(dtype="float64"), (3, 3, 3)),
    Case("AffineCoupling", lambda: L.AffineCoupling(hidden_channels=6, dtype="float64"), (3, 4, 4),
         perturb=0.1),
    Case("AffineCoupling-conditional",
         lambda: L.AffineCoupling(hidden_channels=6, context_dim=3, dtype="float64"), (3, 4, 4),
         perturb=0.1, context_dim=3),
    Case("SplitPrior", lambda: L.SplitPrior(hidden_channels=6, dtype="float64"), (3, 3, 4),
         perturb=0.1, square_jacobian=False,
         invert=lambda layer, x, z, **c: layer.merge(z, layer.split(x, **c)[1], **c)),
    Case("SplitPrior-conditional",
         lambda: L.SplitPrior(hidden_channels=6, context_dim=2, dtype="float64"), (3, 3, 4),
         perturb=0.1, square_jacobian=False, context_dim=2,
         invert=lambda layer, x, z, **c: layer.merge(z, layer.split(x, **c)[1], **c)),
    Case("EmergingConv2D", lambda: L.EmergingConv2D(dtype="float64"), (4, 4, 2)),
    Case("ConvExponential", lambda: L.ConvExponential(dtype="float64"), (3, 5, 3)),
    Case("Dequantize", lambda: L.Dequantize(dtype="float64"), (4, 4, 1), sample=_pixels((4, 4, 1)),
         accepts_integers=True),
    Case("Normalize", lambda: L.Normalize(dtype="float64"), (4, 4, 1), sample=_pixels((4, 4, 1))),
    Case("Normalize-logit-prescaling", lambda: L.Normalize.logit_prescaling(dtype="float64"),
         (4, 4, 1), sample=_unit_interval((4, 4, 1))),
    Case("Logit", lambda: L.Logit(dtype="float64"), (3, 3, 2), sample=_unit_interval((3, 3, 2))),
    Case("Squeeze", lambda: L.Squeeze(dtype="float64"), (4, 6, 3)),
    Case("Flatten", lambda: L.Flatten(dtype="float64"), (2, 3, 2)),
    Case("Reshape", lambda: L.Reshape((4, 3), dtype="float64"), (2, 3, 2)),
    Case("SmoothLeakyReLU", lambda: L.SmoothLeakyReLU(dtype="float64"), (7,)),  # Newton: ~4e-12
    Case("LearnableLeakyReLU", lambda: L.LearnableLeakyReLU(alpha=0.7, dtype="float64"), (3, 3, 2)),
    Case("RealNVPCoupling", lambda: RealNVPCoupling((8,), reverse=True, dtype="float64"), (6,),
         perturb=0.1),
    Case("RealNVPCoupling-unreversed", lambda: RealNVPCoupling((8,), dtype="float64"), (6,),
         perturb=0.1),
    Case("RealNVPCoupling-conditional",
         lambda: RealNVPCoupling((8,), reverse=True, context_dim=4, dtype="float64"), (6,),
         perturb=0.1, context_dim=4),
    Case("SplineActivation", lambda: L.SplineActivation(dtype="float64"), (3, 3, 2), perturb=0.3,
         sample=lambda rng, b: 4 * rng.standard_normal((b, 3, 3, 2))),
    # the worked example of docs/adding_a_layer.md: one row, the whole table
    Case("ElementwiseAffine-example", lambda: ElementwiseAffine(dtype="float64"), (3, 2),
         perturb=0.1),
]
IDS = [c.name for c in CASES]
MODES = ("eager", "function", "xla")


def _in_mode(mode, case, layer, fn):
    """``fn()`` eagerly, traced, or traced with XLA (skipped where the layer cannot compile)."""
    if mode == "eager":
        return fn()
    if mode == "xla":
        if not layer.supports_xla:
            pytest.skip("declares supports_xla = False (slogdet has no XLA kernel)")
        if case.no_xla:
            pytest.skip(case.no_xla)
        if layer.has_log_det_cache:
            layer.refresh_log_det()  # under XLA a stale cache reads NaN by design
    return tf.function(fn, jit_compile=mode == "xla", autograph=False)()


def _inputs(case, batch, seed=0):
    rng = np.random.default_rng(seed)
    return (case.sample or (lambda r, b: _normal(r, b, case.shape)))(rng, batch)


def _ctx(case, x):
    """``{"context": ...}`` for a conditional case (one fixed row per example index, so a slice
    of a batch gets its own rows), ``{}`` otherwise."""
    if not case.context_dim:
        return {}
    table = np.random.default_rng(11).standard_normal((8, case.context_dim))
    return {"context": table[:len(x)]}


def _built(case, batch=4):
    """A layer built, initialised by one training-mode forward, and optionally perturbed."""
    layer = case.make()
    x = _inputs(case, batch)
    layer.forward(x, training=True, **_ctx(case, x))
    if case.perturb:
        perturb(layer, case.perturb)
    if hasattr(layer, "inverse_kernel") and hasattr(layer, "kernel"):
        # keep R a little away from W⁻¹ so the reconstruction term is active
        rng = np.random.default_rng(98)
        layer.inverse_kernel.assign(layer.inverse_kernel.numpy()
                                    + 0.01 * rng.standard_normal(layer.inverse_kernel.shape))
    return layer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip(case, mode):
    layer = _built(case)
    x = tf.constant(_inputs(case, 5, seed=1))

    c = _ctx(case, x)

    def round_trip():
        z, _ = layer.forward(x, **c)
        return case.invert(layer, x, z, **c) if case.invert else layer.inverse(z, exact=True, **c)

    np.testing.assert_allclose(_in_mode(mode, case, layer, round_trip), x, atol=case.inverse_atol)


LEARNED = [c for c in CASES if c.make().learns_inverse]


@pytest.mark.parametrize("case", LEARNED, ids=[c.name for c in LEARNED])
def test_learned_inverse_applies_r(case):
    """``inverse(z)`` of a layer with a learned inverse is R applied to ``z − b`` (not W⁻¹)."""
    layer = _built(case)
    z = _inputs(case, 4, seed=6)
    r, b = layer.inverse_kernel.numpy(), layer.bias.numpy()
    expected = ((z - b) @ r if z.ndim == 2
                else tf.nn.conv2d(z - b, r, strides=1, padding="SAME").numpy())
    np.testing.assert_allclose(layer.inverse(z), expected, rtol=1e-12, atol=1e-12)
    exact = layer.inverse(z, exact=True)
    assert np.abs(exact - expected).max() > 1e-6  # R was moved off W⁻¹: the two must differ
    np.testing.assert_allclose(layer.forward(exact)[0], z, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_log_det_equals_slogdet_of_autodiff_jacobian(case, mode):
    if not case.square_jacobian:
        pytest.skip("drops dimensions: its log-density term is checked in its own test file")
    layer = _built(case)
    x = tf.constant(_inputs(case, 3, seed=2))
    c = _ctx(case, x)

    def jacobian_and_log_dets():
        with tf.GradientTape() as tape:
            tape.watch(x)
            z, log_det = layer.forward(x, exact=True, **c)
            z = tf.reshape(z, [3, -1])
        return tape.batch_jacobian(z, x), log_det, layer.forward(x, exact=False, **c)[1]

    jac, log_det, cheap = _in_mode(mode, case, layer, jacobian_and_log_dets)
    jac = jac.numpy().reshape(3, jac.shape[1], -1)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)
    if case.zero_cheap_log_det:
        np.testing.assert_array_equal(cheap, np.zeros(3))
    else:
        np.testing.assert_allclose(cheap, log_det, rtol=1e-10, atol=1e-10)


def _jacobians(forward, x):
    """``[batch, D, D]`` autodiff Jacobians of ``forward`` (per example) at ``x``."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reshape(forward(x), [x.shape[0], -1])
    jac = tape.batch_jacobian(y, x).numpy()
    return jac.reshape(jac.shape[0], jac.shape[1], -1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_public_numbers_equal_independent_references(case, mode):
    """The numbers a layer returns besides ``forward``/``inverse``, in every mode, against
    computations that do not use them: ``exact_log_abs_det()`` of a constant-Jacobian layer is
    the slogdet of the autodiff Jacobian of ``forward`` at every x (and at a second per-example
    shape where the layer takes one); ``Conv1x1.log_abs_det_per_pixel()`` is NumPy's slogdet of
    its C×C kernel; ``inverse_error()`` is ‖J − I‖_F of the autodiff Jacobian J of x ↦
    inverse(forward(x)) through the learned inverse, and ``reconstruction_loss(x)`` is λ times
    the batch mean of Σ (that map's output − x)², in NumPy; a layer without a learned inverse has a
    reconstruction loss of exactly 0."""
    layer = _built(case)
    x = tf.constant(_inputs(case, 3, seed=12))
    c = _ctx(case, x)

    def numbers():
        out = {"recon": layer.reconstruction_loss(x)}
        if layer.constant_jacobian:  # a channels-only layer is told the H×W it is asked about
            out["log_abs_det"] = layer.exact_log_abs_det(
                case.shape if layer.channels_only else None)
        if layer.learns_inverse:
            out["inverse_error"] = layer.inverse_error()
        if isinstance(layer, L.Conv1x1):
            out["per_pixel"] = layer.log_abs_det_per_pixel()
        return out

    got = {k: np.asarray(v) for k, v in _in_mode(mode, case, layer, numbers).items()}
    if layer.constant_jacobian:
        jac = _jacobians(lambda v: layer.forward(v, exact=True, **c)[0], x)
        np.testing.assert_allclose(np.linalg.slogdet(jac)[1], np.full(3, got["log_abs_det"]),
                                   rtol=1e-10, atol=1e-10)
    if isinstance(layer, L.Conv1x1):
        np.testing.assert_allclose(got["per_pixel"],
                                   np.linalg.slogdet(layer.kernel.numpy()[0, 0])[1], rtol=1e-10,
                                   atol=1e-12)
    if layer.learns_inverse:
        jac = _jacobians(lambda v: layer.inverse(layer.forward(v, **c)[0], **c), x)
        eye = np.eye(jac.shape[1])
        np.testing.assert_allclose(got["inverse_error"], np.linalg.norm(jac[0] - eye), rtol=1e-8)
        assert got["inverse_error"] > 1e-3  # _built perturbed R off W⁻¹
        x_np = x.numpy().reshape(3, -1)
        back = x_np @ jac[0].T  # the map is linear (bias-free: R(W x + b − b))
        weight = float(layer.reconstruction_weight.numpy())
        expected = weight * np.mean(np.sum((back - x_np) ** 2, axis=1))
        np.testing.assert_allclose(got["recon"], expected, rtol=1e-8)
    else:
        assert got["recon"] == 0
    if mode == "eager" and layer.constant_jacobian and layer.preserves_shape \
            and len(case.shape) == 3:
        # a second per-example shape: the log-det must scale with it as forward's does
        h, w, ch = case.shape
        other = (h + 2, w + 2, ch)
        try:
            value = layer.exact_log_abs_det(event_shape=other)
            x2 = tf.constant(np.random.default_rng(13).uniform(0.05, 0.95, (2,) + other))
            jac = _jacobians(lambda v: layer.forward(v, exact=True)[0], x2)
        except ValueError:
            return  # the layer is tied to its built shape (k×k Toeplitz caches, dense shapes)
        np.testing.assert_allclose(np.linalg.slogdet(jac)[1], np.full(2, value), rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_trainable_weight_gets_a_gradient(case, mode):
    """Every trainable weight and the input get a finite non-zero gradient (the input's is the
    one check of the backward pass of layers without weights)."""
    layer = _built(case)
    x = tf.constant(_inputs(case, 4, seed=3))
    c = _ctx(case, x)

    def gradients():
        with tf.GradientTape() as tape:
            tape.watch(x)
            z, log_det, recon = layer.forward_with_reconstruction(x, training=True, **c)
            loss = nll(z, log_det) + (0.0 if recon is None else recon)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    dx, *grads = _in_mode(mode, case, layer, gradients)
    assert np.all(np.isfinite(dx)) and np.any(dx != 0), dx
    if mode == "eager":  # forward() registers the same reconstruction loss with add_loss
        _, _, recon = layer.forward_with_reconstruction(x, training=True, **c)
        layer.forward(x, training=True, **c)
        assert (recon is None and not layer.losses) or np.isclose(float(recon),
                                                                  float(sum(layer.losses)))
    for w, g in zip(layer.trainable_weights, grads):
        assert g is not None, f"{w.path} gets no gradient"
        g = tf.convert_to_tensor(g).numpy()
        assert np.all(np.isfinite(g)) and np.any(g != 0), f"{w.path}: {g}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_same_tensor_after_a_weight_change_gives_the_new_values(case):
    """Eagerly, one ``tf.Tensor`` object twice with the weights changed in between: the second
    call gives the values and gradients of the new weights — those of a fresh copy of the layer
    with the same weights on a fresh copy of the tensor (TFP's bijector cache keys on the input
    tensor and must never answer with old weights)."""
    layer = _built(case)
    if not layer.trainable_weights:
        pytest.skip("no weights to change")
    x = tf.constant(_inputs(case, 4, seed=5))
    c = _ctx(case, x)

    def values_and_gradients(flow, inputs):
        with tf.GradientTape() as tape:
            z, log_det = flow.forward(inputs, exact=True, **c)
            loss = nll(z, log_det)
        return z.numpy(), log_det.numpy(), tape.gradient(loss, flow.trainable_weights)

    values_and_gradients(layer, x)
    perturb(layer, 0.05, seed=7)
    z, log_det, grads = values_and_gradients(layer, x)
    fresh = case.make()
    fresh.forward(tf.constant(x.numpy()), training=True, **c)  # build (and data-dependent init)
    fresh.set_weights(layer.get_weights())
    z_ref, log_det_ref, grads_ref = values_and_gradients(fresh, tf.constant(x.numpy()))
    np.testing.assert_allclose(z, z_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(log_det, log_det_ref, rtol=1e-10, atol=1e-12)
    for w, g, g_ref in zip(layer.trainable_weights, grads, grads_ref):
        assert g is not None, f"{w.path} gets no gradient on the second call"
        np.testing.assert_allclose(tf.convert_to_tensor(g), tf.convert_to_tensor(g_ref),
                                   rtol=1e-8, atol=1e-12, err_msg=w.path)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_config_and_keras_file_round_trip(case, tmp_path):
    layer = _built(case)
    x = _inputs(case, 3, seed=4)
    c = _ctx(case, x)
    z, log_det = layer.forward(x, exact=True, **c)
    clone = type(layer).from_config(layer.get_config())
    clone.forward(x, **c)  # builds
    clone.set_weights(layer.get_weights())
    z2, log_det2 = clone.forward(x, exact=True, **c)
    np.testing.assert_allclose(z2, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det2, log_det, rtol=1e-10, atol=1e-10)

    path = str(tmp_path / "layer.keras")
    if case.context_dim:  # a conditional layer is called with its context: save it in a model
        from snf_tf import FlowModel
        model = FlowModel([layer], context_dim=case.context_dim, conditional_base=False,
                          dtype="float64")
        model.build((None,) + case.shape)
        model.save(path)
        loaded = keras.models.load_model(path).flow_layers[0]
    else:
        keras.Sequential([keras.Input(case.shape, dtype="float64"), layer]).save(path)
        loaded = keras.models.load_model(path).layers[0]
    assert type(loaded) is type(layer) and loaded.get_config() == layer.get_config()
    # inverse first: the loaded layer knows its shapes and has every weight (R too) before forward
    for exact in (False, True):
        np.testing.assert_allclose(loaded.inverse(z, exact=exact, seed=(5, 0), **c),
                                   layer.inverse(z, exact=exact, seed=(5, 0), **c),
                                   rtol=1e-12, atol=1e-12)
    z3, log_det3 = loaded.forward(x, exact=True, **c)
    np.testing.assert_allclose(z3, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det3, log_det, rtol=1e-10, atol=1e-10)


def _inverses(case, layer, x, z):
    """The exact inverse of ``z`` and, where the layer has one, its learned inverse."""
    c = _ctx(case, x)
    if case.invert:
        return (case.invert(layer, x, z, **c),)
    exact = layer.inverse(z, exact=True, **c)
    return (exact, layer.inverse(z)) if layer.learns_inverse else (exact,)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_batch_size_independence(case, mode):
    """One example's forward equals its row of the batch's in every mode, every mode gives the
    eager values (the exact inverse in every mode: ``test_round_trip``; the learned one here), and
    the inverses do not depend on the batch size either."""
    layer = _built(case)
    x = tf.constant(_inputs(case, 7, seed=5))
    c, c1 = _ctx(case, x), _ctx(case, x[:1])
    z_eager, log_det_eager = layer.forward(x, exact=True, **c)
    x_eager = _inverses(case, layer, x, z_eager)
    for back1, back in zip(_inverses(case, layer, x[:1], z_eager[:1]), x_eager):
        np.testing.assert_allclose(back1, back[:1], rtol=1e-10, atol=1e-10)

    def outputs():
        z, log_det = layer.forward(x, exact=True, **c)
        z1, log_det1 = layer.forward(x[:1], exact=True, **c1)
        learned = layer.inverse(z_eager) if layer.learns_inverse else z_eager
        return z, log_det, z1, log_det1, learned

    z, log_det, z1, log_det1, learned = _in_mode(mode, case, layer, outputs)
    np.testing.assert_allclose(z, z_eager, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(log_det, log_det_eager, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(z1, z[:1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(log_det1, log_det[:1], rtol=1e-10, atol=1e-10)
    if layer.learns_inverse:
        np.testing.assert_allclose(learned, x_eager[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_raises_value_error(case):
    layer = _built(case)
    x = _inputs(case, 2)
    with pytest.raises(ValueError, match=f"rank {x.ndim}"):
        layer.forward(x[..., None])
    with pytest.raises(ValueError, match="rank"):  # no batch axis, unbuilt layer
        case.make().forward(x[0].reshape(-1))
    if case.accepts_integers:
        with pytest.raises(ValueError, match="floating-point or integer"):
            layer.forward(x.astype(bool))
    else:
        with pytest.raises(ValueError, match="floating-point"):
            layer.forward(x.astype("int32"))
    with pytest.raises(ValueError, match="built for"):
        layer.forward(np.concatenate([x, x], axis=-1))
    with pytest.raises(ValueError, match="empty batch"):
        layer.forward(x[:0])
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = x.copy()
        poisoned[-1].flat[0] = bad
        with pytest.raises(L.NonFiniteError, match="1 non-finite value"):
            layer.forward(poisoned)
    z = np.array(layer.forward(x, **_ctx(case, x))[0])
    with pytest.raises(ValueError, match=f"rank {z.ndim}"):
        layer.inverse(z[..., None], exact=True)
    if not case.accepts_integers:
        with pytest.raises(ValueError, match="floating-point"):
            layer.inverse(z.astype("int32"), exact=True)
    with pytest.raises(ValueError, match="built for"):
        layer.inverse(np.concatenate([z, z], axis=-1), exact=True)
    poisoned = z.copy()
    poisoned[0].flat[-1] = np.nan
    with pytest.raises(L.NonFiniteError, match="in z"):
        layer.inverse(poisoned, exact=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_half_precision_weights_are_refused_at_construction(case, dtype):
    config = case.make().get_config()
    with pytest.raises(ValueError, match=f"dtype {dtype} is not supported.*mixed policy"):
        type(case.make())(**{**config, "dtype": dtype})


def _in_policy(case, policy):
    """The case's layer under a dtype policy, built and initialised on float32 data and
    perturbed as in :func:`_built`."""
    layer = type(case.make())(**{**case.make().get_config(), "dtype": policy})
    x = _inputs(case, 4).astype("float32")
    c = {k: v.astype("float32") for k, v in _ctx(case, x).items()}
    layer.forward(x, training=True, **c)
    if case.perturb:
        perturb(layer, case.perturb)
    return layer


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mixed_precision_keeps_the_flow_in_float32(case, policy):
    """Under a mixed policy the flow is float32 — weights, x, z, log-dets, the exact inverse to
    float32 round-off, and the log-det equal to slogdet of the float32 autodiff Jacobian of the
    map actually computed — while the sub-networks a layer owns (coupling networks) compute in
    half precision. Layers without sub-networks give exactly their float32 twin's numbers."""
    layer = _in_policy(case, policy)
    assert layer.compute_dtype == "float32" and layer.network_dtype == policy[6:]
    assert all(w.dtype == "float32" for w in layer.weights if "float" in w.dtype)
    networks = [sub for sub in layer._flatten_layers(include_self=False)
                if not isinstance(sub, L.FlowLayer)]
    assert all(sub.compute_dtype == policy[6:] for sub in networks)
    x = tf.constant(_inputs(case, 3, seed=2).astype("float32"))
    c = {k: v.astype("float32") for k, v in _ctx(case, x).items()}
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x, exact=True, **c)
        flat = tf.reshape(z, [3, -1])
    assert z.dtype == tf.float32 and log_det.dtype == tf.float32
    back = case.invert(layer, x, z, **c) if case.invert else layer.inverse(z, exact=True, **c)
    assert back.dtype == tf.float32
    scale = max(1.0, float(np.abs(x).max()))
    np.testing.assert_allclose(back, x, atol=2e-5 * scale)
    if case.square_jacobian:
        jac = tape.batch_jacobian(flat, x).numpy().astype("float64").reshape(3, flat.shape[1], -1)
        np.testing.assert_allclose(log_det, np.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-3)
    if not networks:  # no half-precision work at all: the float32 twin's numbers exactly
        twin = _in_policy(case, "float32")
        twin.set_weights(layer.get_weights())
        z32, log_det32 = twin.forward(x, exact=True, **c)
        np.testing.assert_array_equal(z, z32)
        np.testing.assert_array_equal(log_det, log_det32)


CONDITIONAL = [c for c in CASES if c.context_dim]


@pytest.mark.parametrize("case", CONDITIONAL, ids=[c.name for c in CONDITIONAL])
def test_conditional_layer_depends_on_its_context_and_checks_it(case):
    """z changes with the context (and only through it for a fixed x); the inverse needs the same
    context; a missing, misshapen, non-float, non-finite or mis-batched context is refused."""
    layer = _built(case)
    x = _inputs(case, 3, seed=7)
    c = _ctx(case, x)["context"]
    z, log_det = layer.forward(x, exact=True, context=c)
    z_other, log_det_other = layer.forward(x, exact=True, context=c[::-1].copy())
    # example 0 got example 2's context: its z or log-det moves (SplitPrior: the log-density of
    # the dropped half); example 1 kept its own and is unchanged
    moved = max(np.abs(np.asarray(z_other) - np.asarray(z))[0].max(),
                abs(float(log_det_other[0]) - float(log_det[0])))
    assert moved > 1e-6
    np.testing.assert_allclose(np.asarray(z_other)[1], np.asarray(z)[1], atol=1e-12)
    np.testing.assert_allclose(log_det_other[1], log_det[1], atol=1e-12)
    inverse = (case.invert(layer, x, z, context=c) if case.invert
               else layer.inverse(z, exact=True, context=c))
    np.testing.assert_allclose(inverse, x, atol=1e-10)
    for bad, message in [(None, "needs a context"), (c[:, :-1], "must have shape"),
                         (c[:2], "rows for a batch of 3"), (c.astype("int32"), "must be floats"),
                         (np.where(np.arange(c.size).reshape(c.shape) == 0, np.nan, c),
                          "non-finite")]:
        with pytest.raises(ValueError, match=message):
            layer.forward(x, context=bad)
    with pytest.raises(ValueError, match="needs a context"):
        layer.inverse(z, exact=True)


@pytest.mark.parametrize("case", [c for c in CASES if not c.context_dim][:6],
                         ids=[c.name for c in CASES if not c.context_dim][:6])
def test_unconditional_layer_refuses_a_context(case):
    layer = _built(case)
    x = _inputs(case, 2)
    with pytest.raises(ValueError, match="takes no context"):
        layer.forward(x, context=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="takes no context"):
        layer.inverse(np.asarray(layer.forward(x)[0]), context=np.zeros((2, 3)))


def test_every_flow_layer_is_in_the_table():
    exported = {name for name in L.__all__
                if isinstance(getattr(L, name), type) and issubclass(getattr(L, name), L.FlowLayer)
                and getattr(L, name) is not L.FlowLayer}
    covered = {type(case.make()).__name__ for case in CASES}
    assert exported <= covered, f"flow layers missing from the table: {sorted(exported - covered)}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_keras_jit_flag_follows_the_xla_capability(case):
    """Keras's ``jit_compile="auto"`` reads ``supports_jit``: exact-gradient layers (slogdet)
    must turn XLA off for the model that contains them, on every platform."""
    layer = case.make()
    assert layer.supports_jit is layer.supports_xla
    assert layer.supports_xla is not case.name.endswith("-exact")


# -- Keras's own layer harness ------------------------------------------------------------------
def _keras_harness():
    from keras.src.testing import TestCase  # Keras's test base: run_layer_test
    return TestCase()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_keras_run_layer_test(case):
    """Keras's ``run_layer_test`` on every row, float32: config and serialization round trips,
    build, symbolic and eager calls, a compiled ``fit`` step with an ordinary loss, and the
    ``mixed_float16`` check (outputs as ``compute_output_spec`` says, every weight float32).
    Only one sub-check is ever off: the training check of conditional rows, because the
    harness's training model calls the layer on ``x`` alone and a conditional layer needs its
    context (``test_layer_in_keras_models`` trains those in a functional model)."""
    config = {k: v for k, v in case.make().get_config().items() if k not in ("name", "dtype")}
    x = _inputs(case, 4).astype("float32")
    context = {k: v.astype("float32") for k, v in _ctx(case, x).items()}
    z_shape = tuple(case.make().compute_output_shape((4,) + case.shape)) \
        if case.make().preserves_shape else None
    _keras_harness().run_layer_test(
        type(case.make()), init_kwargs=config, input_data=x, call_kwargs=context,
        expected_output_shape=z_shape if z_shape and None not in z_shape else None,
        expected_output_dtype="float32",
        run_training_check=not case.context_dim,
        run_mixed_precision_check=True)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layer_in_keras_models(case, tmp_path):
    """Each layer as an ordinary Keras layer, trained by ``fit`` on an ordinary MSE loss through
    a Dense head, then saved to a ``.keras`` file and loaded with the same predictions: in a
    functional model whose output also adds the log-det (``return_log_det=True``; a conditional
    row takes its context as a second input), where every trainable weight of the flow layer
    moves, and in a plain ``keras.Sequential`` on ``z`` (unconditional rows; a SplitPrior's
    kept half does not depend on its weights, so only the others must move there; its
    ``.keras`` round trip is ``test_config_and_keras_file_round_trip``'s)."""
    rng = np.random.default_rng(21)
    x = _inputs(case, 32, seed=8).astype("float32")
    target = rng.standard_normal((32, 1)).astype("float32")
    make = lambda: type(case.make())(**{**case.make().get_config(), "dtype": "float32"})  # noqa
    inputs = [keras.Input(case.shape)]
    call = {}
    data = x
    if case.context_dim:
        inputs.append(keras.Input((case.context_dim,)))
        call = {"context": inputs[1]}
        data = [x, np.tile(_ctx(case, x[:8])["context"], (4, 1)).astype("float32")]
    z, log_det = make()(inputs[0], return_log_det=True, **call)
    head = keras.layers.Dense(1)(keras.layers.Flatten()(z))
    output = keras.layers.Add()([head, keras.layers.Reshape((1,))(log_det)])
    models = [(keras.Model(inputs if case.context_dim else inputs[0], output), True)]
    if not case.context_dim:
        models.append((keras.Sequential([keras.Input(case.shape), make(), keras.layers.Flatten(),
                                         keras.layers.Dense(1)]), case.square_jacobian))
    for number, (model, all_move) in enumerate(models):
        flow = [sub for sub in model.layers if isinstance(sub, L.FlowLayer)][0]
        model([d[:1] for d in data] if case.context_dim else data[:1])  # build, ActNorm's init
        if case.perturb:
            perturb(flow, case.perturb)
        before = [w.numpy().copy() for w in flow.trainable_weights]
        # no XLA: compiling each small model would cost more than the check
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=False)
        model.fit(data, target, batch_size=8, epochs=1, verbose=0)
        if all_move:
            for w, start in zip(flow.trainable_weights, before):
                assert np.any(w.numpy() != start), f"{w.path} did not train"
        if number:  # a Sequential's .keras round trip: test_config_and_keras_file_round_trip
            continue
        path = str(tmp_path / f"model_{number}.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(loaded(data), model(data), rtol=1e-5, atol=1e-5)
