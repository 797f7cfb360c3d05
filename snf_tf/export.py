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

- **Input dtype**: ``x`` is ``float32`` with shape ``[None] + model.data_shape`` (free batch
  dimension); ``z`` is ``float32`` with shape ``[None] + model.latent_shape``. Cast uint8 images to
  float32 before calling. ``n`` and ``seed`` are int32 scalars.
- **Dequantization**: the exported ``log_prob`` and ``forward`` never add noise
  (``model.forward(x, noise=False)``): ``x`` is taken as the already continuous
  value on the data scale ``[0, 256)^D``, and ``log_prob`` is the deterministic density of the flow
  at that point. **For integer images use** ``dequantized_log_prob(x, seed)``, the reference's
  one-sample dequantized estimate: a flow trained on dequantized data has no meaningful density
  at the integers themselves. Measured on our MNIST checkpoints (RESULTS.md), ``log_prob`` of
  integer validation images gives 2.4e16 nats (SNF Glow) and −2774 nats (SNF conv) where the
  dequantized estimate gives 867 and 964. (Inside Python ``FlowModel.log_prob`` adds the noise of
  ``Dequantize(always=True)``; :func:`log_prob` here is the exported, noise-free computation.)
- **Exact log-dets are frozen in**: the endpoints are traced inside ``model.frozen_log_dets()``
  (every cache refreshed, then read as it is — also for ``gradient="exact"`` layers): the
  SavedModel contains no ``slogdet``. The exported values are exact for the weights at export.
- **Seeds**: every endpoint is a wrapper of ``FlowModel``'s own walk of the layers, so
  ``sample(n, seed)`` is ``model.sample(n, seed=seed)`` (the latent from
  ``stateless_normal(seed=[seed, 0])``, the dropped half of the k-th ``SplitPrior`` met on the
  way back from ``[seed + 1, k]``), with any number of ``SplitPrior`` layers.
- **Bad input** fails inside the served graph with an ``InvalidArgumentError`` naming the
  endpoint: NaN or inf in ``x`` / ``z`` (``tf.debugging.check_numerics``), ``n < 1``. A wrong shape
  or dtype is refused by the signature itself.
- **inverse(z)** has no randomness: the halves that ``SplitPrior`` layers factored out are set to
  their mode, 0 (temperature 0). It equals ``model.inverse(z, temperature=0.0, seed=0)``.
- **Conditional models** (``num_classes`` / ``context_dim``): every endpoint takes the context
  ``y`` after its data argument — ``log_prob(x, y)``, ``dequantized_log_prob(x, y, seed)``,
  ``forward(x, y)``, ``inverse(z, y)``, ``sample(n, y, seed)`` — as ``int32 [None]`` labels or
  ``float32 [None, context_dim]`` vectors, one row per example (``sample``: ``n`` rows, or one
  row for all). A label out of range or a row count that does not match fails in the served
  graph with an ``InvalidArgumentError`` that says so.
"""

import os
import shutil
import tempfile
import zipfile

import keras
import tensorflow as tf

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
    """``model.frozen_log_dets()`` (kept for callers of earlier versions)."""
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

    x_spec = tf.TensorSpec((None,) + tuple(model.data_shape), tf.float32, name="x")
    z_spec = tf.TensorSpec((None,) + tuple(model.latent_shape), tf.float32, name="z")
    n_spec = tf.TensorSpec((), tf.int32, name="n")
    seed_spec = tf.TensorSpec((), tf.int32, name="seed")

    # The served graphs check their inputs themselves (no snf_tf on the serving side): NaN or inf
    # inputs and n < 1 fail with an InvalidArgumentError naming the endpoint.
    def finite(t, endpoint):
        return tf.debugging.check_numerics(t, f"{endpoint}: the input holds NaN or inf")

    def n_checked(n):
        with tf.control_dependencies([tf.debugging.assert_positive(n, "sample: n must be >= 1")]):
            return tf.identity(n)

    archive = keras.export.ExportArchive()
    if model.conditional:
        # y: int32 labels [None] or float32 vectors [None, context_dim], after the data argument
        y_spec = (tf.TensorSpec((None,), tf.int32, name="y") if model.num_classes else
                  tf.TensorSpec((None, model.context_dim), tf.float32, name="y"))

        def sample_rows(n, y):  # one row for every sample, or n rows
            shape = tf.concat([tf.reshape(n, [1]), tf.shape(y)[1:]], axis=0)
            return tf.broadcast_to(y, shape)

        endpoints = [
            ("log_prob", lambda x, y: log_prob(model, finite(x, "log_prob"), y), [x_spec, y_spec]),
            ("dequantized_log_prob", lambda x, y, seed: dequantized_log_prob(
                model, finite(x, "dequantized_log_prob"), seed, y), [x_spec, y_spec, seed_spec]),
            ("forward", lambda x, y: dict(zip(("z", "log_det"), forward(
                model, finite(x, "forward"), exact=True, context=y))), [x_spec, y_spec]),
            ("inverse", lambda z, y: inverse(model, finite(z, "inverse"), y), [z_spec, y_spec]),
            ("sample", lambda n, y, seed: sample(
                model, n_checked(n), seed, context=sample_rows(n, y)),
             [n_spec, y_spec, seed_spec]),
        ]
    else:
        endpoints = [
            ("log_prob", lambda x: log_prob(model, finite(x, "log_prob")), [x_spec]),
            ("dequantized_log_prob", lambda x, seed: dequantized_log_prob(
                model, finite(x, "dequantized_log_prob"), seed), [x_spec, seed_spec]),
            ("forward", lambda x: dict(zip(("z", "log_det"), forward(
                model, finite(x, "forward"), exact=True))), [x_spec]),
            ("inverse", lambda z: inverse(model, finite(z, "inverse")), [z_spec]),
            ("sample", lambda n, seed: sample(model, n_checked(n), seed), [n_spec, seed_spec]),
        ]
    with model.frozen_log_dets():
        archive.track(model)
        for name, function, signature in endpoints:
            archive.add_endpoint(name, function, input_signature=signature)
        tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
        try:
            archive.write_out(tmp, verbose=False)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
            os.rename(tmp, path)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return path


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
