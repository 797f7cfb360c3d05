"""Process settings that must be made before TensorFlow is imported.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it loads, and turns oneDNN on by itself
only on AVX-512 CPUs; on AVX2 CPUs oneDNN makes the SNF conv and dense steps 1.5-3× faster
(``snf-tf bench scaling``). ``snf_tf/__init__`` calls :func:`prefer_onednn` before anything
imports TensorFlow, so the console script, ``python -m snf_tf``, the examples and user code that
imports ``snf_tf`` first get it; ``TF_ENABLE_ONEDNN_OPTS=0`` opts out, and a process that
imported TensorFlow before ``snf_tf`` keeps TensorFlow's own choice.
"""

import os
import platform
import sys

__all__ = ["onednn_enabled", "prefer_onednn"]


def prefer_onednn():
    """Set ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64 unless the variable is set or TensorFlow is
    already loaded (then it would have no effect). Returns whether it was set here."""
    if "tensorflow" in sys.modules or "TF_ENABLE_ONEDNN_OPTS" in os.environ:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


def onednn_enabled():
    """Whether the loaded TensorFlow uses oneDNN kernels (None if it cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # no public API for this
    except ImportError:  # pragma: no cover
        return None
    return bool(_pywrap_util_port.IsMklEnabled())
