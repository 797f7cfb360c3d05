"""The run folder of ``snf-tf train``: its backup (:class:`AtomicBackupAndRestore`), its lock
(:class:`RunLock`) and :class:`RunFolder`, which reads and writes its files."""

import json
import os
import shutil
import socket
import warnings

import keras
import numpy as np

from snf_tf._files import fsync_directory, fsync_file, is_partial_file, read_json, write_json

__all__ = ["AtomicBackupAndRestore", "DamagedBackup", "RunFolder", "RunLock"]


class DamagedBackup(ValueError):
    """A backup that cannot be read (truncated or corrupt files); the message says what to do."""


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` (once per epoch) that a kill can never corrupt.

    Keras writes the weights and then the epoch number in place, so a kill between the two (or
    during the first) leaves a backup whose weights and epoch disagree. Here each backup is
    written whole into ``backup_dir.tmp``, flushed to the disk (fsync, so a power loss cannot
    leave it truncated either) and swapped in by renames (``backup_dir`` → ``backup_dir.old``,
    ``.tmp`` → ``backup_dir``); a restart finds either the old or the new backup complete, and
    ``backup_dir.old`` keeps the epoch before as a fallback should the newest be damaged. A state
    with non-finite weights is never backed up, and the backup is kept (not deleted) when
    training stops early, e.g. through ``TerminateOnNaN``.

    Backups are per epoch only: Keras restarts an interrupted epoch from its first batch, so a
    mid-epoch backup would replay batches and the resumed run would differ from an uninterrupted
    one.
    """

    def __init__(self, backup_dir):
        # kept at the end of training, so that a finished run can be continued for more epochs
        super().__init__(os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=False)

    WEIGHTS, METADATA = "latest.weights.h5", "training_metadata.json"

    @classmethod
    def _read(cls, folder, verify=True):
        """The epoch of the backup in ``folder``, None if there is none; ``DamagedBackup`` (one
        line naming the file) if its files cannot be read whole (``verify=False``: the weights
        are not read, only the metadata)."""
        metadata, weights = (os.path.join(folder, cls.METADATA), os.path.join(folder, cls.WEIGHTS))
        if not (os.path.isfile(metadata) and os.path.isfile(weights)):
            return None
        try:
            with open(metadata, encoding="utf-8") as f:
                epoch = int(json.load(f)["epoch"])
        except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
            cause = "it is empty" if os.path.getsize(metadata) == 0 else \
                f"{type(error).__name__}: {error}"
            raise DamagedBackup(f"the backup file {metadata} is damaged ({cause})") from None
        if not verify:
            return epoch
        import h5py

        try:  # every array read whole: a truncated file fails here, not in the middle of fit
            with h5py.File(weights, "r") as f:
                f.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset)
                             else None)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            cause = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
            raise DamagedBackup(f"the backup file {weights} is damaged ({cause})") from None
        return epoch

    @classmethod
    def saved_epoch(cls, backup_dir, verify=True):
        """The number of finished epochs in the backup at ``backup_dir`` (None: no backup).
        ``DamagedBackup`` in one line if it cannot be read, offering ``backup_dir.old`` (the
        epoch before) when that one is intact. ``verify=False`` reads the metadata only, not
        every array of the weights (for a backup verified before)."""
        backup_dir = os.fspath(backup_dir)
        old = backup_dir + ".old"
        try:
            epoch = cls._read(backup_dir, verify)
        except DamagedBackup as error:
            try:
                earlier = cls._read(old)
            except DamagedBackup:
                earlier = None
            if earlier is not None:
                raise DamagedBackup(
                    f"{error}; the backup of epoch {earlier} in {old} is intact: resume from "
                    f"it with `rm -r {backup_dir} && mv {old} {backup_dir}`, then the same "
                    "--resume command") from None
            raise DamagedBackup(f"{error}; no intact backup is left to resume from: train "
                                "into another --out (best.keras, the best validation epoch, "
                                "is a separate file)") from None
        return epoch if epoch is not None else cls._read(old, verify)

    def on_train_begin(self, logs=None):
        old = self.backup_dir + ".old"
        if not os.path.exists(self.backup_dir) and os.path.exists(old):
            os.replace(old, self.backup_dir)  # killed between the two renames
        shutil.rmtree(self.backup_dir + ".tmp", ignore_errors=True)
        super().on_train_begin(logs)

    def _save_model(self):
        # trainable weights only: stale log-det caches hold NaN by design (layers/selfnorm.py)
        if not all(np.all(np.isfinite(w.numpy())) for w in self.model.trainable_weights):
            warnings.warn("AtomicBackupAndRestore: non-finite weights; the backup keeps the "
                          "last finite state.", RuntimeWarning, stacklevel=2)
            return
        tmp, old = self.backup_dir + ".tmp", self.backup_dir + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            weights = os.path.join(tmp, os.path.basename(self._weights_path))
            self.model.save_weights(weights)
            fsync_file(weights)
            metadata = os.path.join(tmp, os.path.basename(self._training_metadata_path))
            with open(metadata, "w") as f:
                json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
                f.flush()
                os.fsync(f.fileno())
            fsync_directory(tmp)
        except BaseException:  # a full disk or a kill: the backup in place stays as it was
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if os.path.exists(self.backup_dir):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.backup_dir, old)  # kept: the epoch before, should this one be lost
        os.replace(tmp, self.backup_dir)
        fsync_directory(os.path.dirname(os.path.abspath(self.backup_dir)))


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``FOLDER/.lock``, which holds the
    owner's pid and host. The operating system releases it when the process ends, however it
    ends, so the lock of a killed run is never in the way (its file stays, and is reused)."""

    NAME = ".lock"

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, self.NAME)
        self._handle = None

    def acquire(self, what="a run"):
        """Take the lock or raise ``ValueError`` naming the process that holds it."""
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(f"{self.folder} is in use: {owner} is writing {what} there; wait "
                             "for it to end or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self):
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None

    @property
    def held_here(self):
        return self._handle is not None

    @classmethod
    def held(cls, folder):
        """Whether some process (this one included) holds the lock of ``folder`` now."""
        import fcntl

        path = os.path.join(folder, cls.NAME)
        if not os.path.exists(path):
            return False
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class RunFolder:
    """The files of one run: ``config.json``, ``metrics.json``, ``best.keras``, ``backup/``
    and the lock — the one place that knows their names and reads or writes them (training,
    the CLI and the study scripts).

    Reads are checked: a damaged file is a ``ValueError`` in one line that names it and says
    what to do; writes are atomic (:func:`snf_tf._files.write_json`).
    """

    CONFIG, METRICS, CHECKPOINT, BACKUP = ("config.json", "metrics.json", "best.keras",
                                          "backup")

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))

    def __repr__(self):
        return f"RunFolder({self.path!r})"

    def file(self, name):
        """The path of ``name`` inside the folder."""
        return os.path.join(self.path, name)

    @property
    def checkpoint(self):
        return self.file(self.CHECKPOINT)

    @property
    def backup(self):
        return self.file(self.BACKUP)

    def has_run(self):
        """Whether the folder holds a run (its ``metrics.json``)."""
        return os.path.isfile(self.file(self.METRICS))

    def read_config(self):
        """The ``config.json`` payload (``config``, ``paper``, ``versions``)."""
        path = self.file(self.CONFIG)
        saved = read_json(path, "the run's config file", "restore it, or train into another --out")
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ValueError(f"the run's config file {path} is damaged (no 'config'); restore "
                             "it, or train into another --out")
        return saved

    def write_config(self, payload):
        write_json(self.file(self.CONFIG), payload)

    def read_metrics(self):
        """The ``metrics.json`` payload (``epochs``, ``best``, ``status``, ``paper``)."""
        return read_json(self.file(self.METRICS), "the run's metrics file",
                         f"restore it, or delete it to resume {self.path} from its backup with "
                         "the numbers of the earlier epochs lost, or train into another --out")

    def write_metrics(self, payload):
        write_json(self.file(self.METRICS), payload)

    def status(self, metrics=None):
        """``metrics.json``'s ``"status"`` (``running``, ``finished``, ``diverged``,
        ``collapsed``, ``interrupted``), except that a run recorded as running whose process is
        gone (killed: its lock is free) is ``"interrupted"``; None without a run. ``metrics``:
        the payload of ``metrics.json`` when it has been read already."""
        if not self.has_run():
            return None
        status = (self.read_metrics() if metrics is None else metrics).get("status")
        if status == "running" and not RunLock.held(self.path):
            return "interrupted"
        return status

    def saved_epoch(self, verify=True):
        """Finished epochs in the backup (None: none); ``DamagedBackup`` if it is damaged
        (``verify=False``: only its metadata is read)."""
        return AtomicBackupAndRestore.saved_epoch(self.backup, verify)

    def lock(self):
        """A :class:`RunLock` on the folder, taken (``ValueError`` if another process has it)."""
        return RunLock(self.path).acquire("a run")

    def lock_owner(self):
        """Who holds the lock now ("process N on HOST"), or None."""
        if not RunLock.held(self.path):
            return None
        with open(self.file(RunLock.NAME)) as f:
            return f.read().strip() or "another process"

    def remove_partial_files(self):
        """Remove the temporary files that killed writes left (only under the lock)."""
        for entry in os.listdir(self.path):
            if is_partial_file(entry):
                os.remove(self.file(entry))
