"""Process settings that must be made before TensorFlow is imported.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it loads, and turns oneDNN on by itself
only on AVX-512 CPUs; on AVX2 CPUs oneDNN makes the SNF conv and dense steps faster
(docs/install.md, "oneDNN on x86-64"; ``snf-tf bench scaling`` measures it).
``snf_tf/__init__`` calls :func:`prefer_onednn` before anything imports TensorFlow, so the
console script, ``python -m snf_tf``, the examples and user code that imports ``snf_tf`` first
get it; ``TF_ENABLE_ONEDNN_OPTS=0`` opts out, and a process that imported TensorFlow before
``snf_tf`` keeps TensorFlow's own choice.

TensorFlow also writes a few C++ lines while it loads, before absl reads
``TF_CPP_MIN_LOG_LEVEL`` (no CUDA driver, oneDNN on, absl's preamble);
:func:`import_tensorflow_quietly` (used by ``snf-tf``) leaves exactly those out.
"""

import os
import platform
import sys

__all__ = ["import_tensorflow_quietly", "onednn_enabled", "prefer_onednn", "quiet_tensorflow_logs",
           "started_as_command"]

#: the console script's name (``[project.scripts]``) and the package run by ``python -m``
COMMAND, PACKAGE = "snf-tf", "snf_tf"

#: what TensorFlow 2.21 prints on every CPU-only import, whatever the log level
_IMPORT_NOISE = ("All log messages before absl::InitializeLog() is called",
                 "oneDNN custom operations are on",
                 "Could not find cuda drivers on your machine")


def prefer_onednn():
    """Set ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64 unless the variable is set or TensorFlow is
    already loaded (then it would have no effect). Returns whether it was set here."""
    if "tensorflow" in sys.modules or "TF_ENABLE_ONEDNN_OPTS" in os.environ:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


def started_as_command():
    """Whether this process is the ``snf-tf`` console script or ``python -m snf_tf`` (read from
    the command line, so it is known before ``snf_tf/__init__`` imports anything)."""
    if sys.argv and os.path.splitext(os.path.basename(sys.argv[0]))[0] == COMMAND:
        return True
    argv = list(getattr(sys, "orig_argv", ()))[1:]  # the interpreter's own arguments (3.10+)
    while argv:
        arg = argv.pop(0)
        if arg == "-m":
            return bool(argv) and argv[0] == PACKAGE
        if arg.startswith("-m"):
            return arg[2:] == PACKAGE
        if arg in ("-W", "-X"):  # options with a value
            argv = argv[1:]
        elif arg == "-c" or not arg.startswith("-"):  # a program: no -m follows
            return False
    return False


def quiet_tensorflow_logs():
    """TensorFlow's C++ log level 3 (errors that matter reach the user as Python exceptions),
    unless ``TF_CPP_MIN_LOG_LEVEL`` is set. TensorFlow reads it once, when it loads: this is for
    the ``snf-tf`` command, whose output is its own."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def onednn_enabled():
    """Whether the loaded TensorFlow uses oneDNN kernels (None if it cannot tell)."""
    from snf_tf._compat import mkl_enabled  # imports TensorFlow: not at this module's load

    return mkl_enabled()


def import_tensorflow_quietly():
    """Import TensorFlow with its import-time C++ lines that no setting silences left out of
    stderr (:data:`_IMPORT_NOISE`); any other line it writes, and any error, still shows."""
    if "tensorflow" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)  # C++ writes to fd 2 directly, past sys.stderr
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in _IMPORT_NOISE):
                    sys.stderr.write(line)
            sys.stderr.flush()
