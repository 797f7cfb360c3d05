"""Old import paths of moved modules, kept for one release: each is the moved module itself."""

import importlib
import sys
import warnings

__all__ = ["alias"]


def alias(old, new):
    """Make the module ``old`` (being imported) the module ``new``, with a DeprecationWarning."""
    warnings.warn(f"{old} moved to {new}; the old path goes in 0.3", DeprecationWarning,
                  stacklevel=3)
    module = importlib.import_module(new)
    sys.modules[old] = module  # the import system returns what sys.modules holds after exec
    return module
