"""snf_tf — Self Normalizing Flows (Keller et al., ICML 2021) for TensorFlow 2 / Keras 3 / TFP.

``import snf_tf`` does not load TensorFlow: submodules and the main names load on first use
(PEP 562), so entry points and user code can still set the environment (``TF_*`` variables)
after it. The flow layers and ``FlowModel`` register themselves with Keras's serialization as
soon as Keras is loaded — by whoever loads it — so ``import snf_tf`` followed by
``keras.models.load_model("flow.keras")`` works as before.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from snf_tf import _environment

_environment.prefer_onednn()  # before TensorFlow loads (see snf_tf._environment)

__version__ = "0.1.0"

_SUBMODULES = ("bijectors", "callbacks", "data", "experiments", "export", "layers", "model",
               "models", "ops", "training")
_NAMES = {"FlowLayer": "snf_tf.layers", "SelfNormConv2D": "snf_tf.layers",
          "SelfNormDense": "snf_tf.layers", "FlowModel": "snf_tf.model",
          "ConditionalNormal": "snf_tf.model"}

__all__ = ["ConditionalNormal", "FlowLayer", "FlowModel", "SelfNormConv2D", "SelfNormDense",
           "bijectors", "callbacks", "data", "experiments", "export", "layers", "models", "ops",
           "training", "__version__"]


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


def _register_serializables():
    """Import the modules whose classes Keras must know to load a ``.keras`` file — unless an
    snf_tf module is being imported right now (it imported Keras itself and registers its own
    classes as it loads; importing more of snf_tf in the middle of that would be circular)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("snf_tf.") and getattr(module.__spec__, "_initializing", False):
            return
    importlib.import_module("snf_tf.layers")
    importlib.import_module("snf_tf.model")
    importlib.import_module("snf_tf.callbacks")  # LinearWarmup: the schedule of trained runs


class _AfterKeras(importlib.abc.MetaPathFinder):
    """Runs :func:`_register_serializables` right after the first ``import keras``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_serializables()

        spec.loader.exec_module = exec_then_register
        return spec


if "keras" in sys.modules:
    _register_serializables()
else:
    sys.meta_path.insert(0, _AfterKeras())
