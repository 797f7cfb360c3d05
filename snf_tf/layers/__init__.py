"""Keras 3 flow layers; every one implements the flow-layer protocol of :class:`FlowLayer`."""

from snf_tf.layers.activations import LearnableLeakyReLU, SmoothLeakyReLU, SplineActivation
from snf_tf.layers.base import FlowLayer, NonFiniteError
from snf_tf.layers.convexp import ConvExponential
from snf_tf.layers.emerging import EmergingConv2D
from snf_tf.layers.glow import ActNorm, AffineCoupling, Conv1x1, SplitPrior
from snf_tf.layers.preprocess import Dequantize, Logit, Normalize
from snf_tf.layers.realnvp import RealNVPCoupling
from snf_tf.layers.reshape import Flatten, Reshape, Squeeze
from snf_tf.layers.selfnorm import SelfNormConv2D, SelfNormDense

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "Conv1x1",
    "ConvExponential",
    "Dequantize",
    "EmergingConv2D",
    "Flatten",
    "FlowLayer",
    "LearnableLeakyReLU",
    "Logit",
    "NonFiniteError",
    "Normalize",
    "RealNVPCoupling",
    "Reshape",
    "SelfNormConv2D",
    "SelfNormDense",
    "SmoothLeakyReLU",
    "SplineActivation",
    "SplitPrior",
    "Squeeze",
]
