"""File-system pieces (no TensorFlow import): checks of where a file can go, and atomic writes
that survive a kill, a power loss or a full disk (the earlier file stays)."""

import contextlib
import json
import os
import tempfile

__all__ = ["atomic_path", "check_writable", "fsync_directory", "fsync_file", "is_partial_file",
           "read_json", "umask_mode", "write_json"]


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


def umask_mode(mode=0o666):
    """``mode`` with the process umask applied: what ``open(path, "w")`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def fsync_file(path):
    """Flush a written file's data to the disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path):
    """Flush a directory's entries (a rename in it) to the disk; a no-op where it cannot."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temporary path beside ``path`` to write to; renamed onto ``path`` (after an fsync) when
    the block ends without error, removed otherwise. A kill or a full disk leaves ``path`` as it
    was. The file gets the mode of a plain ``open`` (not ``mkstemp``'s 0600). ``suffix`` is for
    writers that want a file name ending (``.keras``)."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial" + suffix, dir=folder)
    os.close(handle)
    try:
        try:
            yield tmp
            os.chmod(tmp, umask_mode())
            fsync_file(tmp)
            os.replace(tmp, path)
        except OSError as error:  # writers (zipfile, h5py) often do not say which file failed
            if error.filename or not error.errno:
                raise
            raise OSError(error.errno, error.strerror, path) from error
        fsync_directory(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_partial_file(name):
    """Whether ``name`` is a temporary file that a killed :func:`atomic_path` write left (or an
    a ``tmpXXXX.keras`` / ``*.json.tmp``, the temporary names of older run folders, so those
    leftovers are cleaned up too)."""
    return (name.startswith(".") and ".partial" in name) or \
        (name.startswith("tmp") and name.endswith(".keras")) or name.endswith(".json.tmp")


def write_json(path, payload):
    """Write JSON atomically (a kill or a full disk leaves the earlier file)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(payload, f, indent=1)


def read_json(path, what, advice):
    """The JSON in ``path``; ``ValueError`` in one line naming the file, what is wrong with it and
    ``advice`` (what to do) when it is empty, truncated or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        size = os.path.getsize(path)
        cause = "it is empty" if size == 0 else f"it is not valid JSON ({error})"
        raise ValueError(f"{what} {path} is damaged: {cause}; {advice}") from None
