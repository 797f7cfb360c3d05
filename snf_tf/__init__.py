"""snf_tf — Self Normalizing Flows (Keller et al., ICML 2021) for TensorFlow 2 / Keras 3 / TFP."""

from snf_tf import bijectors, callbacks, data, experiments, export, layers, models, ops, training
from snf_tf.layers import FlowLayer, SelfNormConv2D, SelfNormDense
from snf_tf.model import FlowModel

__version__ = "0.1.0"

__all__ = ["FlowLayer", "FlowModel", "SelfNormConv2D", "SelfNormDense", "bijectors", "callbacks",
           "data", "experiments", "export", "layers", "models", "ops", "training", "__version__"]
