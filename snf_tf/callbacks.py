"""Keras callbacks and schedules for training flows: linear LR warm-up, GECO for λ, sample
grids, best-validation testing with an atomic checkpoint.

docs/paper.md: method (GECO) and §3 (training loop of the reference): Adam, per-batch linear warm-up
over the first 10 epochs, optional global-norm clipping (use the optimizer's ``global_clipnorm``),
exact NLL on the validation set every epoch and the test NLL reported at the best-validation epoch.
The paper's runs add a collapse guard and an atomic backup (:mod:`snf_tf.experiments`).
"""

import importlib
import math
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from snf_tf._files import atomic_path
from snf_tf.images import image_grid, save_png
from snf_tf.layers.base import NonFiniteError

__all__ = ["BestValidationTest", "Geco", "ImageGrid", "LinearWarmup", "save_atomically"]

#: names that moved, kept here for one release (with a DeprecationWarning)
_MOVED = {"CollapseGuard": "snf_tf.experiments.guard",
          "AtomicBackupAndRestore": "snf_tf.experiments.run_folder",
          "DamagedBackup": "snf_tf.experiments.run_folder"}


def __getattr__(name):
    if name in _MOVED:  # imported by name only when asked: the library does not load the lab
        warnings.warn(f"snf_tf.callbacks.{name} moved to {_MOVED[name]}.{name}; the old name "
                      "goes in 0.3", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'snf_tf.callbacks' has no attribute {name!r}")


@keras.saving.register_keras_serializable(package="snf_tf")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``lr(step) = scale · lr₀ · min(1, (step + 1) / warmup_steps)`` — the reference's per-batch
    warm-up.

    With ``warmup_steps = warmup_epochs · steps_per_epoch`` and ``scale = 1`` this is exactly
    ``lr₀·((b+1) + (e−1)·n_batches)/(warmup_epochs·n_batches)`` of the reference code. ``scale``
    is a variable read at every step, so :class:`CollapseGuard` can lower the rate of a running
    ``fit`` (a schedule cannot be replaced once the optimizer uses it).
    """

    def __init__(self, learning_rate, warmup_steps, scale=1.0):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}.")
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.scale = tf.Variable(float(scale), trainable=False, dtype=tf.float32,
                                 name="learning_rate_scale")

    def __call__(self, step):
        lr = tf.constant(self.learning_rate, tf.float32) * self.scale
        if self.warmup_steps == 0:
            return lr
        progress = (tf.cast(step, tf.float32) + 1.0) / float(self.warmup_steps)
        return lr * tf.minimum(1.0, progress)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "scale": float(self.scale.numpy())}


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
        self._layers, self._emas, self._update = [], [], None

    @property
    def ema(self):
        """The error average of each SNF layer seen so far, by layer name."""
        return {layer.name: float(ema.numpy()) for layer, ema in zip(self._layers, self._emas)
                if not math.isnan(ema.numpy())}

    def on_train_begin(self, logs=None):
        layers = [layer for layer in self.model.flow_layers if layer.uses_reconstruction]
        if [id(layer) for layer in layers] != [id(layer) for layer in self._layers]:
            self._layers = layers
            # float64 like the Python floats of the eager update it replaces; NaN: none seen yet
            self._emas = [tf.Variable(math.nan, dtype=tf.float64, trainable=False)
                          for _ in layers]
        # one traced call per batch: eager ops in on_train_batch_end run synchronously after
        # every step, four ops and a host read per layer (RESULTS.md, "Table A.5 analogue")
        self._update = tf.function(self._update_weights, autograph=False)

    def _update_weights(self):
        for layer, ema in zip(self._layers, self._emas):
            error = tf.cast(tf.convert_to_tensor(layer.last_reconstruction_error), tf.float64)
            seen = tf.math.is_finite(error)  # a non-finite batch leaves λ and the average alone
            average = tf.where(tf.math.is_nan(ema), error,
                               self.decay * ema + (1 - self.decay) * error)
            ema.assign(tf.where(seen, average, ema))
            weight = layer.reconstruction_weight
            factor = tf.where(seen, tf.exp(self.rate * average), tf.constant(1.0, tf.float64))
            weight.assign(weight * tf.cast(factor, weight.dtype))

    def on_train_batch_end(self, batch, logs=None):
        if self._update is None:  # used outside fit
            self.on_train_begin()
        if self._layers:
            self._update()


class ImageGrid(keras.callbacks.Callback):
    """Every ``every`` epochs: samples (learned inverse) and reconstructions as PNG grids, and as
    TensorBoard images when ``log_dir`` is given. Conditional models sample the labels or vectors
    of ``context`` (one sample each; ``n`` is then their number), laid out ``columns`` wide."""

    def __init__(self, out_dir, every=1, n=64, temperature=1.0, reconstruct=None, seed=0,
                 log_dir=None, context=None, columns=None):
        super().__init__()
        self.context = None if context is None else np.asarray(context)
        n = len(self.context) if self.context is not None else n
        self.out_dir, self.every, self.n, self.columns = out_dir, int(every), int(n), columns
        self.temperature, self.seed = temperature, seed
        self.reconstruct = None if reconstruct is None else np.asarray(reconstruct)
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        os.makedirs(out_dir, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        try:
            samples = self.model.sample(self.n, temperature=self.temperature, seed=self.seed,
                                        context=self.context)
        except (tf.errors.OpError, NonFiniteError) as error:  # a picture never costs a run
            warnings.warn(f"ImageGrid: no samples after epoch {epoch + 1}: "
                          f"{getattr(error, 'message', error)}",
                          RuntimeWarning, stacklevel=2)
            return
        grids = {"samples": image_grid(samples.numpy(), self.columns)}
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
    """``model.save(path)`` through a temporary file (``.NAME.XXXX.partial.keras`` beside it),
    an fsync and ``os.replace``: a kill, a power loss or a full disk never leaves a half-written
    checkpoint at ``path``; the file has the mode of any other written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
