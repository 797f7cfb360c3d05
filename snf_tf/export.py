"""Checkpoints and SavedModel export: flows that run without snf_tf.

Two ways to keep a trained ``FlowModel``:

- ``.keras`` checkpoints — ``model.save("x.keras")`` / ``keras.models.load_model`` (or
  :func:`load_checkpoint`, which adds clear errors): every layer is registered with Keras, so
  weights, exact-log-det caches, seed-generator states and the optimizer state round-trip and
  training resumes where it stopped. Needs snf_tf to load.
- SavedModels — :func:`export_saved_model` writes a TensorFlow SavedModel (``keras.export.
  ExportArchive``) with five endpoints that load with plain ``tf.saved_model.load`` (no snf_tf, no
  Keras needed) or through ``keras.layers.TFSMLayer(path, call_endpoint="log_prob")``:

  ============================  ==================================================================
  ``log_prob(x)``               exact ``log p(x)`` per example, nats on the data scale → ``[batch]``
  ``dequantized_log_prob(x,     ``log_prob(x + u)``, ``u ~ U[0, 1)^D`` stateless-seeded: the
  seed)``                       reference's estimate for integer images → ``[batch]``
  ``forward(x)``                ``{"z": latent, "log_det": [batch]}`` (exact log-det)
  ``inverse(z)``                ``x`` through the learned inverse (R) of every SNF layer
  ``sample(n, seed)``           ``n`` samples through the learned inverse, stateless-seeded
  ============================  ==================================================================

Design decisions (documented contract of the exported endpoints):

- **Inputs**: ``x`` is ``float32`` with shape ``[None] + model.data_shape`` (free batch
  dimension); ``z`` is ``float32`` with shape ``[None] + model.latent_shape``. Cast uint8 images to
  float32 before calling. ``n`` and ``seed`` are int32 scalars. The signatures of ``x``, ``z``
  and ``y`` are shape-free float32/int32 specs: the served graph checks the shapes itself (TF's
  own signature check prints the whole input array in its error, and the ``signatures`` path
  does not check at all).
- **Dequantization**: the exported ``log_prob`` and ``forward`` never add noise
  (``model.forward(x, noise=False)``): ``x`` is taken as the already continuous
  value on the data scale ``[0, 256)^D``, and ``log_prob`` is the deterministic density of the flow
  at that point. **For integer images use** ``dequantized_log_prob(x, seed)``, the reference's
  one-sample dequantized estimate: a flow trained on dequantized data has no meaningful density
  at the integers themselves: on our MNIST checkpoints ``log_prob`` of integer validation
  images is absurd where the dequantized estimate is not (RESULTS.md, "Likelihoods at integer
  pixels are meaningless"). (Inside Python ``FlowModel.log_prob`` adds the noise of
  ``Dequantize(always=True)``; :func:`log_prob` here is the exported, noise-free computation.)
- **Exact log-dets are frozen in**: the endpoints are traced inside ``model.frozen_log_dets()``
  (every cache refreshed, then read as it is — also for ``gradient="exact"`` layers): the
  SavedModel contains no ``slogdet``. The exported values are exact for the weights at export.
- **Seeds**: every endpoint is a wrapper of ``FlowModel``'s own walk of the layers, so
  ``sample(n, seed)`` is ``model.sample(n, seed=seed)`` (the latent from
  ``stateless_normal(seed=[seed, 0])``, the dropped half of the k-th ``SplitPrior`` met on the
  way back from ``[seed + 1, k]``), with any number of ``SplitPrior`` layers.
- **Bad input** fails inside the served graph with an ``InvalidArgumentError`` naming the
  endpoint, in the words ``FlowModel`` uses in Python, and never printing the input's values:
  a wrong shape ("log_prob: x must have shape [batch, 28, 28, 1], got [2, 28, 28, 3]"; a
  missing batch axis says so), an empty batch, NaN or inf in ``x`` / ``z``
  (``tf.debugging.check_numerics``), ``n < 1``; and for models that start with the image
  preprocessing (``model.data_range``, ``[0, 256)`` for every ``snf_tf.architectures``
  builder) values outside the pixel range (with the batch's min and max) and batches of images
  scaled to [0, 1] (the unit-scale rule of ``FlowModel``; left out of the graph when the model is
  exported with ``model.check_unit_scaled = False``). Flows on other data take any finite
  values.
- **inverse(z)** has no randomness: the halves that ``SplitPrior`` layers factored out are set to
  their mode, 0 (temperature 0). It equals ``model.inverse(z, temperature=0.0, seed=0)``.
- **Conditional models** (``num_classes`` / ``context_dim``): every endpoint takes the context
  ``y`` after its data argument — ``log_prob(x, y)``, ``dequantized_log_prob(x, y, seed)``,
  ``forward(x, y)``, ``inverse(z, y)``, ``sample(n, y, seed)`` — as ``int32 [None]`` labels or
  ``float32 [None, context_dim]`` vectors, one row per example (``sample``: ``n`` rows, or one
  row for all). A label out of range or a row count that does not match fails in the served
  graph with an ``InvalidArgumentError`` that says so.
"""

import inspect
import os
import shutil
import tempfile
import zipfile

import keras
import tensorflow as tf

from snf_tf import context as conditioning
from snf_tf._files import umask_mode
from snf_tf.checks import (
    UNIT_SCALED_MIN_VALUES,
    outside_data_range,
    range_words,
    unit_scaled_message,
    unit_scaled_rule_applies,
)
from snf_tf.layers.preprocess import pixel_domain
from snf_tf.model import FlowModel

__all__ = ["ENDPOINTS", "export_saved_model", "load_checkpoint", "load_saved_model", "forward",
           "log_prob", "dequantized_log_prob", "inverse", "sample", "frozen_log_dets"]

#: the endpoints of an exported flow, in the order they are registered (``log_prob`` is the
#: SavedModel's ``serving_default``)
ENDPOINTS = ("log_prob", "dequantized_log_prob", "forward", "inverse", "sample")

#: op types that must not appear in an exported graph (no XLA kernel; the caches replace them)
DETERMINANT_OPS = ("LogMatrixDeterminant", "MatrixDeterminant", "Lu")


# -- the computations the endpoints export (usable eagerly too) ----------------------------------
def forward(model, x, exact=True, context=None):
    """``(z, log_det)`` of ``model`` with dequantization noise switched off."""
    return model.forward(x, exact=exact, noise=False, context=context)


def log_prob(model, x, context=None):
    """Exact per-example ``log p(x)`` (``log p(x | context)``) in nats on the data scale,
    without dequantization noise."""
    return model.log_prob(x, exact=True, noise=False, context=context)


def dequantized_log_prob(model, x, seed, context=None):
    """The reference's one-sample dequantized estimate: :func:`log_prob` at ``x + u`` with
    ``u ~ U[0, 1)^D`` drawn by ``tf.random.stateless_uniform(seed=[seed, 0])``. Use it for
    integer-valued images: a continuous flow trained on dequantized data has no meaningful
    density *at* the integers (its density there can be off by orders of magnitude)."""
    x = tf.cast(tf.convert_to_tensor(x), model.compute_dtype)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    noise = tf.random.stateless_uniform(tf.shape(x), seed=tf.stack([seed, tf.constant(0)]),
                                        dtype=x.dtype)
    return log_prob(model, x + noise, context)


def inverse(model, z, context=None):
    """``x = f⁻¹(z)`` through the learned inverses; factored-out halves at their mode (0)."""
    return model.inverse(tf.cast(tf.convert_to_tensor(z), model.compute_dtype),
                         temperature=0.0, seed=0, context=context)


def sample(model, n, seed, temperature=1.0, context=None):
    """``model.sample(n, temperature=temperature, seed=seed, context=context)``; ``n`` and
    ``seed`` may be Python ints or scalar tensors."""
    return model.sample(n, temperature=temperature, seed=seed, context=context)


def frozen_log_dets(model):
    """Deprecated (goes in 0.3): use ``model.frozen_log_dets()``."""
    import warnings

    warnings.warn("snf_tf.export.frozen_log_dets(model) goes in 0.3; use "
                  "model.frozen_log_dets()", DeprecationWarning, stacklevel=2)
    return model.frozen_log_dets()


# -- SavedModel ---------------------------------------------------------------------------------
def _check_flow_model(model):
    if not isinstance(model, FlowModel):
        raise ValueError(f"export_saved_model: expected a built snf_tf.FlowModel, got "
                         f"{type(model).__name__}.")
    if not model.built:
        raise ValueError("export_saved_model: the model is not built yet (call it on a batch of "
                         "data once).")


def export_saved_model(model, path, overwrite=True):
    """Write ``model`` as a TensorFlow SavedModel at ``path`` (a directory) and return ``path``.

    Endpoints ``log_prob(x)``, ``forward(x)``, ``inverse(z)`` and ``sample(n, seed)`` — see the
    module docstring for their contract (float32 inputs with a free batch dimension, no
    dequantization noise, cached exact log-dets frozen in, stateless seeds). The directory is
    written next to ``path`` and renamed into place, so an interrupted export leaves no partial
    SavedModel at ``path``.
    """
    _check_flow_model(model)
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"export_saved_model: {path} exists (pass overwrite=True).")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)

    with model.frozen_log_dets():
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name, arguments, function in _endpoints(model):
            archive.add_endpoint(name, function, input_signature=list(arguments.values()))
        tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
        try:
            archive.write_out(tmp, verbose=False)
            os.chmod(tmp, umask_mode(0o777))  # mkdtemp's 0700: the mode of any other folder
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
            os.rename(tmp, path)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return path


def _endpoints(model):
    """``(name, {argument: spec}, function)`` of every endpoint, in :data:`ENDPOINTS` order: one
    table for every model, a conditional model's endpoints taking ``y`` after their first
    argument. Each function checks its arguments in the graph (:func:`_checked_input`), then
    calls the computation of the same name above."""
    # The specs take tensors of any shape, and the served graphs check the rest themselves (no
    # snf_tf on the serving side), with the words FlowModel uses: a TensorSpec with the shape
    # would make TF's own binding error print the whole input array, and the ``signatures``
    # path would not check shapes at all (a reshape error deep in the graph).
    data_shape, latent_shape = tuple(model.data_shape), tuple(model.latent_shape)
    data_range, domain = model.data_range, pixel_domain(model.flow_layers)
    unit_rule = model.check_unit_scaled and unit_scaled_rule_applies(data_range)
    y_shape = () if model.num_classes else (model.context_dim,)
    specs = {"x": tf.TensorSpec(None, tf.float32, name="x"),
             "z": tf.TensorSpec(None, tf.float32, name="z"),
             "n": tf.TensorSpec((), tf.int32, name="n"),
             "y": tf.TensorSpec(None, tf.int32 if model.num_classes else tf.float32, name="y"),
             "seed": tf.TensorSpec((), tf.int32, name="seed")}
    checks = {"x": lambda x, endpoint: _checked_input(x, endpoint, "x", data_shape, data_range,
                                                      domain, unit_rule),
              "z": lambda z, endpoint: _checked_input(z, endpoint, "z", latent_shape),
              "n": lambda n, endpoint: _positive_checked(n, endpoint, "n"),
              "y": lambda y, endpoint: _shape_checked(y, endpoint, "y", y_shape),
              "seed": lambda seed, endpoint: seed}
    table = [
        ("log_prob", ("x", "y"), lambda x, y: log_prob(model, x, y)),
        ("dequantized_log_prob", ("x", "y", "seed"),
         lambda x, y, seed: dequantized_log_prob(model, x, seed, y)),
        ("forward", ("x", "y"),
         lambda x, y: dict(zip(("z", "log_det"), forward(model, x, exact=True, context=y)))),
        ("inverse", ("z", "y"), lambda z, y: inverse(model, z, y)),
        ("sample", ("n", "y", "seed"),  # y: n rows, or one row for all
         lambda n, y, seed: sample(model, n, seed, context=conditioning.broadcast(y, n))),
    ]
    for name, arguments, compute in table:
        if not model.conditional:
            arguments = tuple(a for a in arguments if a != "y")
        yield name, {a: specs[a] for a in arguments}, _endpoint(name, arguments, compute, checks)


def _endpoint(name, arguments, compute, checks):
    """A function of the positional ``arguments`` (named so, also for keyword calls of the
    served endpoint) that checks each and calls ``compute`` (``y=None`` when not given)."""
    def endpoint(*values):
        given = {a: checks[a](value, name) for a, value in zip(arguments, values)}
        return compute(**{"y": None, **given})

    endpoint.__signature__ = inspect.Signature(
        [inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in arguments])
    endpoint.__name__ = name
    return endpoint


def _positive_checked(n, endpoint, name):
    """``n`` after a graph assertion that it is ≥ 1 (in the words of ``FlowModel.sample``)."""
    with tf.control_dependencies([tf.debugging.Assert(n >= 1, [tf.strings.format(
            f"{endpoint}: {name} must be a positive int, got {{}}.", n)])]):
        return tf.identity(n)


def _shape_checked(t, endpoint, name, event_shape):
    """``t`` with the static shape ``[None] + event_shape`` after a graph assertion that it has
    it: ``InvalidArgumentError`` "<endpoint>: <name> must have shape [batch, ...], got [...]"
    (or, with the batch axis missing, "<name> needs a batch axis ..."). Never the values."""
    event_shape = tuple(int(d) for d in event_shape)
    rank = len(event_shape) + 1
    expected = tf.constant(event_shape, tf.int32, shape=[len(event_shape)])
    wanted = "[" + ", ".join(["batch"] + [str(d) for d in event_shape]) + "]"
    shape = tf.shape(t, out_type=tf.int32)
    got = tf.strings.join(["[", tf.strings.reduce_join(tf.strings.as_string(shape),
                                                       separator=", "), "]"])
    fits = tf.cond(tf.equal(tf.size(shape), rank),
                   lambda: tf.reduce_all(tf.equal(shape[1:], expected)),
                   lambda: tf.constant(False))
    unbatched = tf.cond(tf.equal(tf.size(shape), rank - 1),
                        lambda: tf.reduce_all(tf.equal(shape, expected)),
                        lambda: tf.constant(False))
    message = tf.where(
        unbatched,
        tf.strings.join([f"{endpoint}: {name} needs a batch axis: got shape ", got,
                         f", the model takes {wanted}; add one with {name}[None]."]),
        tf.strings.join([f"{endpoint}: {name} must have shape {wanted}, got ", got, "."]))
    with tf.control_dependencies([tf.debugging.Assert(fits, [message])]):
        return tf.ensure_shape(tf.identity(t), (None,) + event_shape)


def _checked_input(t, endpoint, name, event_shape, data_range=None, domain=None,
                   unit_rule=False):
    """``t`` after the served graph's checks, in this order, each an ``InvalidArgumentError``
    naming the endpoint, in the words of ``FlowModel``: the shape (:func:`_shape_checked`), a
    non-empty batch, finite values, and — for a model with a data range — the range (with the
    batch's min and max; the ``domain`` of finite logits passes too) and, with ``unit_rule``,
    the unit-scale rule of :func:`snf_tf.checks.check_data_range`. The messages never hold the
    input's values."""
    t = _shape_checked(t, endpoint, name, event_shape)
    empty = (f"{endpoint}: empty batch in {name} (shape "
             f"{[0] + [int(d) for d in event_shape]}); pass at least one example.")
    with tf.control_dependencies([tf.debugging.Assert(tf.shape(t)[0] > 0, [empty])]):
        t = tf.debugging.check_numerics(tf.identity(t),
                                        f"{endpoint}: the input holds NaN or inf")
    if data_range is None:
        return t
    minimum, maximum = tf.reduce_min(t), tf.reduce_max(t)
    inside = tf.logical_not(outside_data_range(minimum, maximum, data_range, domain))
    words = (f"{endpoint}: {name} must be {range_words(data_range)} (the model starts with image "
             "preprocessing), got min {}, max {}.")
    with tf.control_dependencies([tf.debugging.Assert(inside, [tf.strings.format(
            words, [minimum, maximum])])]):
        t = tf.identity(t)
    if not unit_rule:
        return t
    size = tf.size(t)
    scaled = (size >= UNIT_SCALED_MIN_VALUES) & (minimum >= 0) & (maximum > 0) & (maximum <= 1)
    words = unit_scaled_message(endpoint, data_range, "{}") + "."
    with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(scaled), [
            tf.strings.format(words, [size])])]):
        return tf.identity(t)


def saved_model_op_types(path):
    """The set of op types in a SavedModel's graph and function library (for inspection)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta in proto.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


# -- loading ------------------------------------------------------------------------------------
def load_checkpoint(path, compile=True):
    """``keras.models.load_model`` of a ``.keras`` file with one-line errors: ``FileNotFoundError``
    if it is missing, ``ValueError`` if it is not a Keras archive or not a flow model."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras checkpoint (not a zip archive)")
    try:
        model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # noqa: BLE001 - re-raised with the file name, one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot load {path}: {message}") from error
    if not isinstance(model, FlowModel):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a snf_tf FlowModel")
    return model


def load_saved_model(path):
    """``tf.saved_model.load`` of an exported flow, checking that it has the flow endpoints."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"no SavedModel in {path} (saved_model.pb missing)")
    loaded = tf.saved_model.load(path)
    missing = [name for name in ENDPOINTS if not hasattr(loaded, name)]
    if missing:
        raise ValueError(f"{path} is a SavedModel but not an exported flow (missing endpoints: "
                         f"{', '.join(missing)})")
    return loaded
