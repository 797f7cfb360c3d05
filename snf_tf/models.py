"""Moved to :mod:`snf_tf.architectures` (this path works until 0.3, with a
DeprecationWarning)."""

from snf_tf._deprecated import alias

alias(__name__, "snf_tf.architectures")
