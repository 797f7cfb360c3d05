"""File-system checks shared by the run folders and the CLI (no TensorFlow import)."""

import os


def check_writable(path, what, directory=False):
    """``ValueError`` unless ``path`` can be created or written: it is a directory (or a file)
    as asked, and its nearest existing ancestor is a writable directory."""
    path = os.path.abspath(path)
    if directory and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} exists and is not a directory")
    if not directory and os.path.isdir(path):
        raise ValueError(f"{what} {path} is a directory")
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"cannot create {what} {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {path}: {ancestor} is not writable")
