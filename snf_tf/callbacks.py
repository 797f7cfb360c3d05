"""Training utilities as Keras pieces: LR warm-up, GECO for λ, image grids, best-validation testing.

docs/paper.md: method (GECO) and §3 (training loop of the reference): Adam, per-batch linear warm-up
over the first 10 epochs, optional global-norm clipping (use the optimizer's ``global_clipnorm``),
exact NLL on the validation set every epoch and the test NLL reported at the best-validation epoch.
Non-finite losses stop training (``keras.callbacks.TerminateOnNaN``); the best checkpoint on disk
was written before and is untouched.
"""

import json
import math
import os
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from snf_tf.layers.base import NonFiniteError

__all__ = ["AtomicBackupAndRestore", "BestValidationTest", "Geco", "ImageGrid", "LinearWarmup",
           "image_grid", "save_atomically", "save_png"]


@keras.saving.register_keras_serializable(package="snf_tf")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``lr(step) = lr₀ · min(1, (step + 1) / warmup_steps)`` — the reference's per-batch warm-up.

    With ``warmup_steps = warmup_epochs · steps_per_epoch`` this is exactly
    ``lr₀·((b+1) + (e−1)·n_batches)/(warmup_epochs·n_batches)`` of the reference code.
    """

    def __init__(self, learning_rate, warmup_steps):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        lr = tf.constant(self.learning_rate, tf.float32)
        if self.warmup_steps == 0:
            return lr
        progress = (tf.cast(step, tf.float32) + 1.0) / float(self.warmup_steps)
        return lr * tf.minimum(1.0, progress)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


class Geco(keras.callbacks.Callback):
    """GECO-style λ adaptation of the reference (docs/paper.md: method), per SNF layer
    after every batch.

    ``ema ← α·ema + (1−α)·r`` (``r`` = the layer's unweighted mean reconstruction error of the
    batch, ema initialised to the first ``r``), then ``λ ← λ·exp(rate·ema)``. As in the reference
    there is no tolerance κ, so λ only grows.
    """

    def __init__(self, rate=1e-3, decay=0.9):
        super().__init__()
        self.rate, self.decay = float(rate), float(decay)
        self.ema = {}

    def on_train_batch_end(self, batch, logs=None):
        for layer in self.model.flow_layers:
            if not layer.uses_reconstruction:
                continue
            error = float(layer.last_reconstruction_error.numpy())
            if not math.isfinite(error):
                continue
            ema = self.ema.get(layer.name)
            ema = error if ema is None else self.decay * ema + (1 - self.decay) * error
            self.ema[layer.name] = ema
            layer.reconstruction_weight.assign(
                layer.reconstruction_weight * math.exp(self.rate * ema))


def image_grid(images, columns=None):
    """``[n, H, W, C]`` images on the 0..256 scale → one uint8 ``[rows·H, cols·W, C]`` grid
    (non-finite values become 0 or 255)."""
    images = np.nan_to_num(np.asarray(images, dtype=np.float64), nan=0.0, posinf=255.0,
                           neginf=0.0)  # a diverged model's samples still make a picture
    images = np.clip(np.floor(images), 0, 255).astype(np.uint8)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = image
    return grid


def save_png(path, grid):
    """Write a uint8 ``[H, W, C]`` grid (C = 1 gray, 3 RGB) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.imsave(path, grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
               format="png")  # whatever the file name ends with


class ImageGrid(keras.callbacks.Callback):
    """Every ``every`` epochs: samples (learned inverse) and reconstructions as PNG grids, and as
    TensorBoard images when ``log_dir`` is given."""

    def __init__(self, out_dir, every=1, n=64, temperature=1.0, reconstruct=None, seed=0,
                 log_dir=None):
        super().__init__()
        self.out_dir, self.every, self.n = out_dir, int(every), int(n)
        self.temperature, self.seed = temperature, seed
        self.reconstruct = None if reconstruct is None else np.asarray(reconstruct)
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        os.makedirs(out_dir, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        try:
            samples = self.model.sample(self.n, temperature=self.temperature, seed=self.seed)
        except (tf.errors.OpError, NonFiniteError) as error:  # a picture never costs a run
            warnings.warn(f"ImageGrid: no samples after epoch {epoch + 1}: "
                          f"{getattr(error, 'message', error)}",
                          RuntimeWarning, stacklevel=2)
            return
        grids = {"samples": image_grid(samples.numpy())}
        if self.reconstruct is not None:
            pairs = np.concatenate([self.reconstruct, self.model.reconstruct(self.reconstruct)], 0)
            grids["reconstructions"] = image_grid(pairs, columns=len(self.reconstruct))
        for name, grid in grids.items():
            save_png(os.path.join(self.out_dir, f"{name}.png"), grid)
            if self.writer is not None:
                with self.writer.as_default():
                    tf.summary.image(name, grid[None], step=epoch)


class BestValidationTest(keras.callbacks.Callback):
    """On each new best ``val_nll``: save the model (atomically) and evaluate the test set.

    Adds ``test_nll`` / ``test_bpd`` (at the best-validation epoch so far) to the epoch logs, so
    ``History`` records the number the paper reports.
    """

    def __init__(self, test_data, checkpoint_path=None, monitor="val_nll"):
        super().__init__()
        self.test_data, self.checkpoint_path, self.monitor = test_data, checkpoint_path, monitor
        self.best, self.best_epoch, self.test = math.inf, None, {}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        value = logs.get(self.monitor)
        if value is not None and math.isfinite(value) and value < self.best:
            self.best, self.best_epoch = value, epoch
            self.test = self.model.evaluate(self.test_data, verbose=0, return_dict=True)
            if self.checkpoint_path:
                save_atomically(self.model, self.checkpoint_path)
        for key, result in self.test.items():
            logs[f"test_{key}"] = result
        if self.best_epoch is not None:
            logs["best_epoch"] = self.best_epoch + 1


def save_atomically(model, path):
    """``model.save(path)`` through a temporary file and ``os.replace``: a kill never leaves a
    half-written checkpoint at ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(suffix=".keras", dir=folder)
    os.close(handle)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` (once per epoch) that a kill can never corrupt.

    Keras writes the weights and then the epoch number in place, so a kill between the two (or
    during the first) leaves a backup whose weights and epoch disagree. Here each backup is
    written whole into ``backup_dir.tmp`` and swapped in by renames (``backup_dir`` →
    ``backup_dir.old``, ``.tmp`` → ``backup_dir``); a restart finds either the old or the new
    backup complete. A state with non-finite weights is never backed up, and the backup is kept
    (not deleted) when training stops early, e.g. through ``TerminateOnNaN``.

    Backups are per epoch only: Keras restarts an interrupted epoch from its first batch, so a
    mid-epoch backup would replay batches and the resumed run would differ from an uninterrupted
    one.
    """

    def __init__(self, backup_dir):
        # kept at the end of training, so that a finished run can be continued for more epochs
        super().__init__(os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=False)

    @staticmethod
    def saved_epoch(backup_dir):
        """The number of finished epochs in the backup at ``backup_dir`` (None: no backup)."""
        for folder in (backup_dir, os.fspath(backup_dir) + ".old"):
            path = os.path.join(folder, "training_metadata.json")
            if os.path.isfile(path) and os.path.isfile(
                    os.path.join(folder, "latest.weights.h5")):
                with open(path) as f:
                    return int(json.load(f)["epoch"])
        return None

    def on_train_begin(self, logs=None):
        old = self.backup_dir + ".old"
        if not os.path.exists(self.backup_dir) and os.path.exists(old):
            os.replace(old, self.backup_dir)  # killed between the two renames
        shutil.rmtree(self.backup_dir + ".tmp", ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
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
        self.model.save_weights(os.path.join(tmp, os.path.basename(self._weights_path)))
        metadata = os.path.join(tmp, os.path.basename(self._training_metadata_path))
        with open(metadata, "w") as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(self.backup_dir):
            os.replace(self.backup_dir, old)
        os.replace(tmp, self.backup_dir)
        shutil.rmtree(old, ignore_errors=True)
