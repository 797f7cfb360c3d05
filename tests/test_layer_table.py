"""One table of every flow layer in snf_tf, each run through the same checks (FlowJAX/zuko style).

A new layer joins with one ``Case`` line. ``test_every_flow_layer_is_in_the_table`` fails when a
layer exported by ``snf_tf.layers`` is missing here. The numerical checks run in every execution
mode: eagerly, inside a ``tf.function`` and under XLA (``jit_compile=True``), which take different
branches in the layers (eager value checks, ``tf.cond`` on caches, XLA's NaN-for-stale rule).
"""

import dataclasses
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import snf_tf.layers as L
from example_layer import ElementwiseAffine
from snf_tf.layers import RealNVPCoupling


@dataclasses.dataclass
class Case:
    name: str
    make: Callable[[], L.FlowLayer]      # a fresh, unbuilt layer (float64 unless stated)
    shape: tuple                         # input shape without the batch axis
    sample: Callable = None              # rng, batch -> float64 inputs; default standard normal
    inverse_atol: float = 1e-8           # tolerance of inverse(forward(x), exact=True)
    zero_cheap_log_det: bool = False     # SNF layers: exact=False log-det is 0 in value
    perturb: float = 0.0                 # add noise to weights first (e.g. zero-initialised convs)
    square_jacobian: bool = True         # False for layers that drop dimensions (SplitPrior)
    invert: Callable = None              # (layer, x, z) -> x: the exact inverse (SplitPrior: merge)
    accepts_integers: bool = False       # Dequantize takes the uint8 data itself
    no_xla: str = None                   # why the exact paths cannot compile with XLA (if so)


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
    Case("SplitPrior", lambda: L.SplitPrior(hidden_channels=6, dtype="float64"), (3, 3, 4),
         perturb=0.1, square_jacobian=False,
         invert=lambda layer, x, z: layer.merge(z, layer.split(x)[1])),
    Case("EmergingConv2D", lambda: L.EmergingConv2D(dtype="float64"), (4, 4, 2)),
    Case("ConvExponential", lambda: L.ConvExponential(dtype="float64"), (3, 5, 3)),
    Case("Dequantize", lambda: L.Dequantize(dtype="float64"), (4, 4, 1), sample=_pixels((4, 4, 1)),
         accepts_integers=True),
    Case("Normalize", lambda: L.Normalize(dtype="float64"), (4, 4, 1), sample=_pixels((4, 4, 1))),
    Case("Normalize-logit-prescaling", lambda: L.Normalize.logit_prescaling(dtype="float64"),
         (4, 4, 1), sample=_unit_interval((4, 4, 1))),
    Case("Logit", lambda: L.Logit(dtype="float64"), (3, 3, 2), sample=_unit_interval((3, 3, 2)),
         inverse_atol=1e-7),
    Case("Squeeze", lambda: L.Squeeze(dtype="float64"), (4, 6, 3)),
    Case("Flatten", lambda: L.Flatten(dtype="float64"), (2, 3, 2)),
    Case("Reshape", lambda: L.Reshape((4, 3), dtype="float64"), (2, 3, 2)),
    Case("SmoothLeakyReLU", lambda: L.SmoothLeakyReLU(dtype="float64"), (7,), inverse_atol=1e-5),
    Case("LearnableLeakyReLU", lambda: L.LearnableLeakyReLU(alpha=0.7, dtype="float64"), (3, 3, 2)),
    Case("RealNVPCoupling", lambda: RealNVPCoupling((8,), reverse=True, dtype="float64"), (6,),
         perturb=0.1),
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


def _built(case, batch=4):
    """A layer built, initialised by one training-mode forward, and optionally perturbed."""
    layer = case.make()
    x = _inputs(case, batch)
    layer.forward(x, training=True)
    if case.perturb:
        rng = np.random.default_rng(99)
        for w in layer.trainable_weights:
            w.assign(w.numpy() + case.perturb * rng.standard_normal(w.shape))
    if hasattr(layer, "inverse_kernel") and hasattr(layer, "kernel"):
        # keep R a little away from W⁻¹ so the reconstruction term is active
        rng = np.random.default_rng(98)
        layer.inverse_kernel.assign(layer.inverse_kernel.numpy()
                                    + 0.01 * rng.standard_normal(layer.inverse_kernel.shape))
    return layer


def _nll(z, log_det):
    z = tf.reshape(z, [tf.shape(z)[0], -1])
    d = tf.cast(tf.shape(z)[1], z.dtype)
    return -tf.reduce_mean(-0.5 * tf.reduce_sum(z * z, -1) - 0.5 * d * np.log(2 * np.pi) + log_det)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip(case, mode):
    layer = _built(case)
    x = tf.constant(_inputs(case, 5, seed=1))

    def round_trip():
        z, _ = layer.forward(x)
        return case.invert(layer, x, z) if case.invert else layer.inverse(z, exact=True)

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

    def jacobian_and_log_dets():
        with tf.GradientTape() as tape:
            tape.watch(x)
            z, log_det = layer.forward(x, exact=True)
            z = tf.reshape(z, [3, -1])
        return tape.batch_jacobian(z, x), log_det, layer.forward(x, exact=False)[1]

    jac, log_det, cheap = _in_mode(mode, case, layer, jacobian_and_log_dets)
    jac = jac.numpy().reshape(3, jac.shape[1], -1)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jac)[1], rtol=1e-7, atol=1e-7)
    if case.zero_cheap_log_det:
        np.testing.assert_array_equal(cheap, np.zeros(3))
    else:
        np.testing.assert_allclose(cheap, log_det, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_trainable_weight_gets_a_gradient(case, mode):
    layer = _built(case)
    x = tf.constant(_inputs(case, 4, seed=3))

    def gradients():
        with tf.GradientTape() as tape:
            z, log_det, recon = layer.forward_with_reconstruction(x, training=True)
            loss = _nll(z, log_det) + (0.0 if recon is None else recon)
        return tape.gradient(loss, layer.trainable_weights)

    grads = _in_mode(mode, case, layer, gradients)
    if mode == "eager":  # forward() registers the same reconstruction loss with add_loss
        _, _, recon = layer.forward_with_reconstruction(x, training=True)
        layer.forward(x, training=True)
        assert (recon is None and not layer.losses) or np.isclose(float(recon),
                                                                  float(sum(layer.losses)))
    for w, g in zip(layer.trainable_weights, grads):
        assert g is not None, f"{w.path} gets no gradient"
        g = tf.convert_to_tensor(g).numpy()
        assert np.all(np.isfinite(g)) and np.any(g != 0), f"{w.path}: {g}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_config_and_keras_file_round_trip(case, tmp_path):
    layer = _built(case)
    x = _inputs(case, 3, seed=4)
    z, log_det = layer.forward(x, exact=True)
    clone = type(layer).from_config(layer.get_config())
    clone.forward(x)  # builds
    clone.set_weights(layer.get_weights())
    z2, log_det2 = clone.forward(x, exact=True)
    np.testing.assert_allclose(z2, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det2, log_det, rtol=1e-10, atol=1e-10)

    path = str(tmp_path / "layer.keras")
    keras.Sequential([keras.Input(case.shape, dtype="float64"), layer]).save(path)
    loaded = keras.models.load_model(path).layers[0]
    z3, log_det3 = loaded.forward(x, exact=True)
    np.testing.assert_allclose(z3, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det3, log_det, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_batch_size_independence(case, mode):
    layer = _built(case)
    x = tf.constant(_inputs(case, 7, seed=5))
    z, log_det, z1, log_det1 = _in_mode(mode, case, layer, lambda: (
        *layer.forward(x, exact=True), *layer.forward(x[:1], exact=True)))
    np.testing.assert_allclose(z1, z[:1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(log_det1, log_det[:1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_raises_value_error(case):
    layer = _built(case)
    x = _inputs(case, 2)
    with pytest.raises(ValueError, match="rank"):
        layer.forward(x[..., None])
    if not case.accepts_integers:
        with pytest.raises(ValueError, match="floating-point"):
            layer.forward(x.astype("int32"))
    wider = np.concatenate([x, x], axis=-1)
    with pytest.raises(ValueError):
        layer.forward(wider)
    with pytest.raises(ValueError, match="empty batch"):
        layer.forward(x[:0])
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = x.copy()
        poisoned[-1].flat[0] = bad
        with pytest.raises(L.NonFiniteError, match="1 non-finite value"):
            layer.forward(poisoned)
    z, _ = layer.forward(x)
    poisoned = np.array(z)
    poisoned[0].flat[-1] = np.nan
    with pytest.raises(L.NonFiniteError, match="in z"):
        layer.inverse(poisoned, exact=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_half_precision_is_refused_at_construction(case, dtype):
    config = case.make().get_config()
    with pytest.raises(ValueError, match="not supported"):
        type(case.make())(**{**config, "dtype": dtype})


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
