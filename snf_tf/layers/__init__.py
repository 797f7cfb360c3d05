"""Keras 3 flow layers; every one implements the flow-layer protocol of :class:`FlowLayer`."""

from snf_tf.layers.base import FlowLayer
from snf_tf.layers.selfnorm import SelfNormConv2D, SelfNormDense

__all__ = ["FlowLayer", "SelfNormConv2D", "SelfNormDense"]
