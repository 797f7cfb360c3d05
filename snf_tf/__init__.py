"""snf_tf — Self Normalizing Flows (Keller et al., ICML 2021) for TensorFlow 2 / Keras 3 / TFP."""

from snf_tf import _environment

_environment.prefer_onednn()  # before TensorFlow loads (see snf_tf._environment)

from snf_tf import bijectors, callbacks, data, experiments, export, layers, models, ops, training  # noqa: E402
from snf_tf.layers import FlowLayer, SelfNormConv2D, SelfNormDense  # noqa: E402
from snf_tf.model import FlowModel  # noqa: E402

__version__ = "0.1.0"

__all__ = ["FlowLayer", "FlowModel", "SelfNormConv2D", "SelfNormDense", "bijectors", "callbacks",
           "data", "experiments", "export", "layers", "models", "ops", "training", "__version__"]
