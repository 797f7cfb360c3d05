"""snf_tf — Self Normalizing Flows (Keller et al., ICML 2021) for TensorFlow 2 / Keras 3 / TFP.

The library: flow layers (:mod:`snf_tf.layers`, math in :mod:`snf_tf.ops`), ``FlowModel``
(:mod:`snf_tf.model`), TFP views (:mod:`snf_tf.bijectors`), SavedModel export
(:mod:`snf_tf.export`), tfds pipelines (:mod:`snf_tf.data`), Keras callbacks
(:mod:`snf_tf.callbacks`) and the paper's architectures (:mod:`snf_tf.architectures`). The
paper's lab — named experiments, run folders, the collapse guard, the ``snf-tf`` command and
benchmarks — is :mod:`snf_tf.experiments`, which the library never imports.

``import snf_tf`` registers every class a ``.keras`` file of the package can hold (the flow
layers, ``FlowModel``, ``ConditionalNormal``, the ``LinearWarmup`` schedule) with Keras, through
``keras.saving.register_keras_serializable`` at their definition: after ``import snf_tf`` — or
after importing any of its submodules, which imports the package first — ``keras.models.
load_model`` loads every checkpoint the package writes, whatever was imported before.

It sets ``TF_ENABLE_ONEDNN_OPTS`` before TensorFlow loads (:mod:`snf_tf._environment`). The one
exception to the eager registration is the ``snf-tf`` command itself (console script or
``python -m snf_tf``): it sets TensorFlow's log level first and loads TensorFlow only for the
commands that need it (``snf-tf list`` and ``--help`` start at once), then registers the same
classes (:func:`register_serializables`).
"""

import importlib

from snf_tf import _environment

_environment.prefer_onednn()  # before TensorFlow loads (see snf_tf._environment)

__version__ = "0.2.0"

_SUBMODULES = ("architectures", "bijectors", "callbacks", "checks", "context", "data",
               "experiments", "export", "images", "layers", "model", "ops",
               "models", "training")  # aliases of moved modules until 0.3
_NAMES = {"FlowLayer": "snf_tf.layers", "SelfNormConv2D": "snf_tf.layers",
          "SelfNormDense": "snf_tf.layers", "FlowModel": "snf_tf.model",
          "ConditionalNormal": "snf_tf.model"}

__all__ = ["ConditionalNormal", "FlowLayer", "FlowModel", "SelfNormConv2D", "SelfNormDense",
           "architectures", "bijectors", "callbacks", "checks", "context", "data", "experiments",
           "export", "images", "layers", "ops", "register_serializables", "__version__"]

#: the modules whose classes a ``.keras`` file of the package can name
_SERIALIZABLE_MODULES = ("snf_tf.layers", "snf_tf.model", "snf_tf.callbacks")


def register_serializables():
    """Import the modules whose classes register themselves with Keras at their definition
    (idempotent). ``import snf_tf`` calls it, except in the ``snf-tf`` command, which calls it
    once TensorFlow is loaded."""
    for name in _SERIALIZABLE_MODULES:
        importlib.import_module(name)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"snf_tf.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'snf_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if _environment.started_as_command():
    _environment.quiet_tensorflow_logs()
else:
    _environment.import_tensorflow_quietly()
    register_serializables()
