"""Bad input across the public API: one table per entry point, each case a clear error.

Every flow layer's own cases (rank, dtype, width, empty batch, NaN/inf in x and z, half precision)
are in ``test_layer_table.py``; the CLI's (one line, exit status 2) in ``test_cli.py``. Here:
``FlowModel``, values that turn non-finite between layers, near-singular log-dets, ``data.load``,
export and the served SavedModel. Model cases also check that no weight changed: the error comes
before any step.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from snf_tf import FlowModel, data, export
from snf_tf import layers as L

MNIST = os.path.join(os.environ.get("TFDS_DATA_DIR", "/nonexistent"), "mnist")


def _x(n=4, d=3, value=None, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype("float32")
    if value is not None:
        x[-1, 0] = value
    return x


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    flow = FlowModel([L.SelfNormDense(), L.SmoothLeakyReLU(), L.SelfNormDense()])
    flow.compile(optimizer=keras.optimizers.Adam(1e-3))
    flow.fit(_x(16), batch_size=8, epochs=1, verbose=0)
    return flow


def _dataset(x):
    return tf.data.Dataset.from_tensor_slices(x).batch(2)


MODEL_CASES = [
    ("log_prob-nan", lambda m: m.log_prob(_x(value=np.nan)), L.NonFiniteError,
     "1 non-finite value.* in inputs"),
    ("log_prob-inf", lambda m: m.log_prob(_x(value=np.inf)), L.NonFiniteError, "non-finite"),
    ("log_prob-empty", lambda m: m.log_prob(_x(n=0)), ValueError, "empty batch"),
    ("log_prob-width", lambda m: m.log_prob(_x(d=4)), ValueError,
     r"shape \(4,\).*built for \(3,\)"),
    ("log_prob-rank1", lambda m: m.log_prob(np.zeros(3, "float32")), ValueError, "batch axis"),
    ("log_prob-strings", lambda m: m.log_prob(np.array([["a", "b", "c"]])), ValueError,
     "must be numbers"),
    ("forward-nan", lambda m: m.forward(_x(value=np.nan), exact=True), L.NonFiniteError,
     "non-finite"),
    ("inverse-nan", lambda m: m.inverse(_x(value=np.nan)), L.NonFiniteError, "in z"),
    ("inverse-width", lambda m: m.inverse(_x(d=5)), ValueError, "built for"),
    ("sample-0", lambda m: m.sample(0), ValueError, "positive int"),
    ("sample-negative", lambda m: m.sample(-3), ValueError, "positive int"),
    ("sample-float", lambda m: m.sample(2.5), ValueError, "positive int"),
    ("fit-nan-array", lambda m: m.fit(_x(8, value=np.nan), verbose=0), L.NonFiniteError,
     "the data has 1 non-finite"),
    ("fit-empty-array", lambda m: m.fit(_x(n=0), verbose=0), ValueError, "data is empty"),
    ("fit-empty-dataset", lambda m: m.fit(_dataset(_x(n=0)), verbose=0), ValueError,
     "dataset is empty"),
    ("fit-width", lambda m: m.fit(_x(8, d=2), verbose=0), ValueError, "built for"),
    ("evaluate-inf-array", lambda m: m.evaluate(_x(8, value=-np.inf), verbose=0),
     L.NonFiniteError, "non-finite"),
    ("evaluate-empty-dataset", lambda m: m.evaluate(_dataset(_x(n=0)), verbose=0), ValueError,
     "dataset is empty"),
]


@pytest.mark.parametrize("call,error,message", [c[1:] for c in MODEL_CASES],
                         ids=[c[0] for c in MODEL_CASES])
def test_flow_model_refuses_bad_input_before_any_step(model, call, error, message):
    before = [w.copy() for w in model.get_weights()]
    iterations = int(model.optimizer.iterations)
    with pytest.raises(error, match=message):
        call(model)
    assert int(model.optimizer.iterations) == iterations
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unbuilt_model_cannot_sample():
    with pytest.raises(ValueError, match="build the model first"):
        FlowModel([L.SelfNormDense()]).sample(2)


# -- values that become non-finite inside the flow ---------------------------------------------
def test_overflow_between_layers_names_the_layer_that_produced_it():
    first, second = L.SelfNormDense(name="huge"), L.SelfNormDense(name="next")
    flow = FlowModel([first, second])
    flow.log_prob(_x())
    first.kernel.assign(1e30 * np.eye(3, dtype="float32"))
    with pytest.raises(L.NonFiniteError, match="forward of layer 'huge' produced non-finite"):
        flow.log_prob(1e20 * np.ones((2, 3), "float32"))


def test_a_blown_up_learned_inverse_fails_sampling_clearly_and_the_exact_one_still_works():
    first, second = L.SelfNormDense(name="first"), L.SelfNormDense(name="unstable")
    flow = FlowModel([first, second])
    flow.log_prob(_x())
    second.inverse_kernel.assign(3e38 * np.eye(3, dtype="float32"))  # overflows for |z| > 1.2
    with pytest.raises(L.NonFiniteError, match="inverse of layer 'unstable'.*exact_inverse=True"):
        flow.sample(4, seed=0)
    assert np.all(np.isfinite(flow.sample(4, exact_inverse=True, seed=0)))


# -- near-singular layers: a finite log-det while invertible, a warning (never NaN) when not -----
def _scaled_identity(size, smallest):
    return np.diag([1.0] * (size - 1) + [smallest])


def _dense(layer, s):
    layer.kernel.assign(_scaled_identity(3, s) @ _rotation(3))


def _one_by_one(layer, s):  # (1, 1, C, C) kernels
    layer.kernel.assign((_scaled_identity(2, s) @ _rotation(2))[None, None])


def _three_by_three(layer, s):  # only the centre tap: T is block diagonal
    kernel = np.zeros(layer.kernel.shape)
    kernel[1, 1] = _scaled_identity(2, s) @ _rotation(2)
    layer.kernel.assign(kernel)


def _front_end(layer, s):  # Emerging / ConvExp: the exact 1×1 conv in front
    layer.conv1x1.kernel.assign((_scaled_identity(2, s) @ _rotation(2))[None, None])


def _rotation(size):
    return np.linalg.qr(np.random.default_rng(size).normal(size=(size, size)))[0]


SINGULAR_CASES = [
    ("SelfNormDense", lambda: L.SelfNormDense(dtype="float64"), (3,), _dense),
    ("SelfNormDense-exact", lambda: L.SelfNormDense(gradient="exact", dtype="float64"), (3,),
     _dense),
    ("SelfNormConv2D-1x1", lambda: L.SelfNormConv2D(1, dtype="float64"), (3, 3, 2), _one_by_one),
    ("SelfNormConv2D-3x3", lambda: L.SelfNormConv2D(3, dtype="float64"), (3, 3, 2),
     _three_by_three),
    ("Conv1x1", lambda: L.Conv1x1(dtype="float64"), (3, 3, 2), _one_by_one),
    ("EmergingConv2D", lambda: L.EmergingConv2D(dtype="float64"), (3, 3, 2), _front_end),
    ("ConvExponential", lambda: L.ConvExponential(dtype="float64"), (3, 3, 2), _front_end),
]


@pytest.mark.parametrize("make,shape,shrink", [c[1:] for c in SINGULAR_CASES],
                         ids=[c[0] for c in SINGULAR_CASES])
def test_near_singular_log_det_is_finite_and_singular_warns(make, shape, shrink):
    layer = make()
    x = tf.constant(np.random.default_rng(1).normal(size=(2,) + shape))
    layer.forward(x)
    shrink(layer, 1e-12)  # condition number 1e12: invertible in float64
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, log_det = layer.forward(x, exact=True)
        flat = tf.reshape(z, [2, -1])
    jacobian = tape.batch_jacobian(flat, x).numpy().reshape(2, flat.shape[1], -1)
    reference = np.linalg.slogdet(jacobian)[1]
    assert np.all(np.isfinite(log_det)) and np.all(log_det < -20)
    np.testing.assert_allclose(log_det, reference, rtol=1e-6)

    shrink(layer, 0.0)
    with pytest.warns(RuntimeWarning, match=f"{layer.name}: exact log.det. is -inf.*singular"):
        _, log_det = layer.forward(x, exact=True)
    assert np.all(np.isneginf(log_det))  # -inf: infinite NLL, never NaN


# -- data.load ------------------------------------------------------------------------------
DATA_CASES = [
    ("unknown-dataset", dict(name="svhn", split="train", batch_size=8), ValueError,
     "unknown dataset 'svhn'"),
    ("batch-size-0", dict(name="mnist", split="train", batch_size=0), ValueError, "batch_size"),
    ("batch-size-float", dict(name="mnist", split="train", batch_size=2.5), ValueError,
     "batch_size"),
    ("limit-0", dict(name="mnist", split="train", batch_size=8, limit=0), ValueError, "limit"),
    ("limit-float", dict(name="mnist", split="train", batch_size=8, limit=1.5), ValueError,
     "limit"),
    ("missing-folder", dict(name="cifar10", split="train", batch_size=8, data_dir="{tmp}"),
     FileNotFoundError, r"cifar10.*{tmp}"),
    ("bad-split", dict(name="mnist", split="nope", batch_size=8), ValueError, "bad split 'nope'"),
]


@pytest.mark.parametrize("kwargs,error,message", [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_data_load_refuses_bad_arguments(kwargs, error, message, tmp_path):
    if kwargs.get("split") == "nope" and not os.path.isdir(MNIST):
        pytest.skip("real MNIST (../shared/tensorflow_datasets) not available")
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=message.format(tmp=tmp_path)):
        data.load(**kwargs)


# -- export and the served SavedModel ----------------------------------------------------------
@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    path = export.export_saved_model(model, str(tmp_path_factory.mktemp("served") / "flow"))
    return path, export.load_saved_model(path)


SERVED_CASES = [
    ("log_prob-nan", lambda s: s.log_prob(_x(value=np.nan)), "log_prob: the input holds NaN"),
    ("dequantized-nan", lambda s: s.dequantized_log_prob(_x(value=np.nan), tf.constant(0)),
     "dequantized_log_prob: the input holds NaN"),
    ("forward-inf", lambda s: s.forward(_x(value=np.inf)), "forward: the input holds NaN or inf"),
    ("inverse-nan", lambda s: s.inverse(_x(value=np.nan)), "inverse: the input holds NaN"),
    ("sample-0", lambda s: s.sample(tf.constant(0), tf.constant(1)),
     "sample: n must be a positive int, got 0"),
    ("log_prob-empty", lambda s: s.log_prob(_x(n=0)), r"log_prob: empty batch in x"),
    ("log_prob-width", lambda s: s.log_prob(_x(d=4)),
     r"log_prob: x must have shape \[batch, 3\], got \[4, 4\]"),
]


@pytest.mark.parametrize("call,message", [c[1:] for c in SERVED_CASES],
                         ids=[c[0] for c in SERVED_CASES])
def test_the_served_graph_checks_its_inputs(served, call, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(served[1])


def test_the_served_graph_names_a_wrong_shape_without_the_values(served):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        served[1].log_prob(np.full((4, 4), 7.25, "float32"))
    assert "must have shape [batch, 3], got [4, 4]" in info.value.message
    assert "7.25" not in info.value.message


def test_export_refuses_bad_arguments(served, tmp_path):
    path, _ = served
    with pytest.raises(ValueError, match="expected a built snf_tf.FlowModel"):
        export.export_saved_model(keras.Sequential([keras.layers.Dense(2)]), str(tmp_path / "m"))
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export.export_saved_model(_built_flow(), path, overwrite=False)
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        export.load_saved_model(tmp_path / "missing")
    plain = str(tmp_path / "plain")
    tf.saved_model.save(tf.Module(), plain)
    with pytest.raises(ValueError, match="not an exported flow"):
        export.load_saved_model(plain)


def _built_flow():
    flow = FlowModel([L.SelfNormDense()])
    flow.log_prob(_x())
    return flow


# -- output folders ----------------------------------------------------------------------------
def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from snf_tf.experiments import cli, training

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the permission check say no instead
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(locked)
                            else real_access(p, mode))
    else:
        locked.chmod(0o500)
    with pytest.raises(ValueError, match=f"{locked} is not writable"):
        training.prepare("selfnorm_fc_mnist", str(locked / "run"))
    assert cli.main(["train", "selfnorm_fc_mnist", "--out", str(locked / "run")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert os.listdir(locked) == []
