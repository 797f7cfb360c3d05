"""Training utilities as Keras pieces: LR warm-up, GECO for λ, image grids, best-validation testing,
rollback on a collapse.

docs/paper.md: method (GECO) and §3 (training loop of the reference): Adam, per-batch linear warm-up
over the first 10 epochs, optional global-norm clipping (use the optimizer's ``global_clipnorm``),
exact NLL on the validation set every epoch and the test NLL reported at the best-validation epoch.
:class:`CollapseGuard` rolls a collapsing run (non-finite loss, validation NLL jump, ‖RW − I‖ too
large) back to its last good epoch at a lower learning rate; without it, non-finite losses stop
training (``keras.callbacks.TerminateOnNaN``). The best checkpoint on disk was written before
and is untouched.
"""

import json
import math
import os
import shutil
import warnings

import keras
import numpy as np
import tensorflow as tf

from snf_tf._files import atomic_path, fsync_directory, fsync_file
from snf_tf.layers.base import NonFiniteError

__all__ = ["AtomicBackupAndRestore", "BestValidationTest", "CollapseGuard", "DamagedBackup", "Geco",
           "ImageGrid", "LinearWarmup", "image_grid", "save_atomically", "save_png"]


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
        # one traced call per batch: 0.75 ms against 4 ms for four eager ops and a host read
        # per layer (the 8 SNF convs of geco_selfnorm_glow_mnist, 2 busy CPU cores)
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


class CollapseGuard(keras.callbacks.Callback):
    """Roll back a collapsing run to its last good epoch, lower the learning rate, go on.

    A run has *collapsed* when, after an epoch, ``monitor`` (the validation NLL) is above
    ``(1 + val_jump)`` times its value at the last good epoch, or the largest ‖RW − I‖_F of the
    learned inverses is above ``inverse_error`` (off by default: healthy values depend on the
    model and λ — ≤ 0.05 in SNF Glow at λ = 100, above 3 in the FC flow at λ = 1); or when,
    after any batch, the training loss is not finite (checked per batch, so no later step
    computes on NaN weights). Either check is off when its threshold is None. The guard then
    restores the weights and optimizer state of the last good epoch (kept in memory; the state
    before training for the first), multiplies the learning rate by ``lr_factor`` and the
    reconstruction weight λ of every SNF layer by ``lambda_factor`` (each rollback raises it
    again), and records an event in :attr:`events`; training goes on. Raising λ is what recovers
    an SNF collapse: the restored state's learned inverses have often drifted from W⁻¹ already,
    and a lower learning rate alone lets the drift go on (RESULTS.md, "SNF collapse study"). A
    collapse after ``max_rollbacks`` rollbacks restores the last good state and stops training
    (:attr:`gave_up`).

    On a rollback at an epoch's end the epoch logs say what the model now is: ``monitor`` and
    ``val_bpd`` become those of the restored epoch (the measured values are in the event), so a
    collapsed state never becomes the best checkpoint. After a mid-epoch rollback the model's
    metrics restart, so the epoch's logged loss covers the batches after it.

    The learning rate is lowered through ``optimizer.learning_rate`` (a float rate) or the
    ``scale`` variable of the schedule (:class:`LinearWarmup`). ``rollbacks`` and ``reference``
    continue the bookkeeping of a resumed run (its rollbacks so far; the last good value of
    ``monitor``). Put the guard before callbacks that read the epoch logs or save the model.
    """

    def __init__(self, val_jump=0.1, inverse_error=None, lr_factor=0.5, max_rollbacks=3,
                 monitor="val_nll", rollbacks=0, reference=None, verbose=True,
                 lambda_factor=10.0):
        super().__init__()
        if isinstance(lambda_factor, bool) or not isinstance(lambda_factor, (int, float)) or \
                not (math.isfinite(lambda_factor) and lambda_factor >= 1):
            raise ValueError(f"CollapseGuard: lambda_factor must be a number >= 1, got "
                             f"{lambda_factor!r}.")
        self.lambda_factor = float(lambda_factor)
        for name, value in (("val_jump", val_jump), ("inverse_error", inverse_error)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"CollapseGuard: {name} must be a positive number or None, "
                                 f"got {value!r}.")
        if not (0 < lr_factor <= 1):
            raise ValueError(f"CollapseGuard: lr_factor must be in (0, 1], got {lr_factor!r}.")
        if isinstance(max_rollbacks, bool) or not isinstance(max_rollbacks, int) or \
                max_rollbacks < 0:
            raise ValueError(f"CollapseGuard: max_rollbacks must be an integer >= 0, got "
                             f"{max_rollbacks!r}.")
        self.val_jump, self.inverse_error = val_jump, inverse_error
        self.lr_factor, self.max_rollbacks, self.monitor = float(lr_factor), max_rollbacks, monitor
        self.rollbacks, self.reference, self.verbose = int(rollbacks), reference, verbose
        self.events, self.gave_up = [], False
        self.reset_at = None  # (epoch, batch) of the last mid-epoch rollback
        self._good, self._epoch = None, 0

    # -- state --------------------------------------------------------------------------------
    def _keep(self, finished, logs, note=""):
        """Remember the current state as the last good one (``finished`` epochs done)."""
        variables = list(self.model.weights) + list(self.model.optimizer.variables)
        self._good = {"finished": finished, "note": note,
                      "state": [(v, v.numpy()) for v in variables],
                      "logs": {key: float(np.asarray(logs[key])) for key in (self.monitor,
                                                                              "val_bpd")
                               if key in logs}}

    def _restore(self):
        for variable, value in self._good["state"]:
            variable.assign(value)

    def _reconstruction_weights(self):
        return [layer.reconstruction_weight for layer in getattr(self.model, "flow_layers", [])
                if getattr(layer, "uses_reconstruction", False)]

    def _raise_lambda(self, before):
        """λ of every SNF layer ← ``lambda_factor`` × the larger of its value before the restore
        and after it, so repeated rollbacks to one good state keep raising it."""
        for weight, previous in zip(self._reconstruction_weights(), before):
            weight.assign(self.lambda_factor * np.maximum(previous, weight.numpy()))

    def _lower_learning_rate(self):
        optimizer = self.model.optimizer
        schedule = getattr(optimizer, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule.scale.assign(schedule.scale * self.lr_factor)
        else:
            optimizer.learning_rate = float(optimizer.learning_rate) * self.lr_factor

    def on_train_begin(self, logs=None):
        schedule = getattr(self.model.optimizer, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) and \
                not isinstance(getattr(schedule, "scale", None), tf.Variable):
            raise ValueError("CollapseGuard: the optimizer's learning-rate schedule has no "
                             "`scale` variable to lower; use snf_tf.callbacks.LinearWarmup or "
                             "a float learning rate.")
        self.gave_up, self._good = False, None

    def _start_logs(self):
        return {} if self.reference is None else {self.monitor: self.reference}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        # the state training starts from (after any restore of a backup): kept here when
        # model and optimizer are built, else after the first step (Keras builds them lazily)
        if self._good is None and self.model.built:
            if not self.model.optimizer.built:  # as its first step would, with zero moments
                self.model.optimizer.build(self.model.trainable_variables)
            self._keep(epoch, self._start_logs())

    # -- checks -------------------------------------------------------------------------------
    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        finite = loss is None or bool(np.all(np.isfinite(np.asarray(loss))))
        if self._good is None:
            if finite:
                self._keep(self._epoch, self._start_logs(), " (after its first step)")
                return
            self.gave_up, self.model.stop_training = True, True
            self.events.append({"epoch": self._epoch + 1, "batch": batch + 1, "kind": "stop",
                                "reason": "non-finite training loss at the first step",
                                "action": "stopped: no good state to roll back to"})
            self._say(self.events[-1])
            return
        if finite:
            return
        self._roll_back(self._epoch, f"non-finite training loss at batch {batch + 1}", batch)
        if not self.gave_up:  # the epoch's means restart after the bad step
            for metric in self.model.metrics:
                metric.reset_state()
            self.reset_at = (self._epoch, batch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        measured = {key: float(np.asarray(logs[key])) for key in ("loss", self.monitor, "val_bpd")
                    if key in logs}
        errors = self.model.inverse_errors() if self.inverse_error is not None and \
            hasattr(self.model, "inverse_errors") else {}
        if errors:
            measured["inverse_error_max"] = max(errors.values())
        reason = self._collapse(measured, errors)
        if reason is None:
            self._keep(epoch + 1, logs)
            return
        self._roll_back(epoch, reason, None, measured)
        for key in (self.monitor, "val_bpd"):  # the logs describe the restored state
            if key in logs:
                logs[key] = self._good["logs"].get(key, math.nan)

    def _collapse(self, measured, errors):
        if not math.isfinite(measured.get("loss", 0.0)):
            return "non-finite training loss"
        value = measured.get(self.monitor)
        if value is not None:
            reference = self._good["logs"].get(self.monitor)
            if not math.isfinite(value):
                return f"{self.monitor} not finite"
            if self.val_jump is not None and reference is not None and \
                    value > (1 + self.val_jump) * reference:
                return (f"{self.monitor} {value:.2f} > (1 + {self.val_jump:g}) × {reference:.2f} "
                        "of the last good epoch")
        worst = max(errors.items(), key=lambda item: item[1], default=None)
        if worst is not None and not worst[1] <= self.inverse_error:
            return (f"‖RW − I‖_F of {worst[0]} {worst[1]:.3g} > {self.inverse_error:g} (healthy "
                    "values grow as λ falls — about 0.4 at λ = 1: raise the threshold, "
                    "guard_inverse_error in snf-tf train, or set it to null)")
        return None

    def _roll_back(self, epoch, reason, batch, measured=None):
        before = [w.numpy() for w in self._reconstruction_weights()]
        self._restore()
        finished = self._good["finished"]
        restored = ("the start of training" if finished == 0 else f"epoch {finished}") + \
            self._good["note"]
        event = {"epoch": epoch + 1, "batch": None if batch is None else batch + 1,
                 "reason": reason, "restored_epoch": finished, "measured": measured or {}}
        if self.rollbacks >= self.max_rollbacks:
            self.gave_up, self.model.stop_training = True, True
            event["kind"] = "stop"
            event["action"] = (f"restored the state of {restored} and stopped after "
                               f"{self.rollbacks} rollback(s)")
        else:
            self.rollbacks += 1
            self._lower_learning_rate()
            raised = ""
            if before and self.lambda_factor != 1:
                self._raise_lambda(before)
                event["reconstruction_weight_max"] = float(max(
                    np.max(w.numpy()) for w in self._reconstruction_weights()))
                raised = f", λ ×{self.lambda_factor:g}"
            event["kind"] = "rollback"
            event["action"] = (f"restored the state of {restored}, learning rate "
                               f"×{self.lr_factor:g}{raised} (rollback {self.rollbacks} of "
                               f"{self.max_rollbacks})")
        event["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        self.events.append(event)
        self._say(event)

    def _say(self, event):
        if self.verbose:
            where = f"epoch {event['epoch']}" + (f", batch {event['batch']}"
                                                  if event.get("batch") else "")
            print(f"CollapseGuard ({where}): {event['reason']}; {event['action']}.", flush=True)


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
    """Write a uint8 ``[H, W, C]`` grid (C = 1 gray, 3 RGB) as a PNG, atomically: a failed write
    (full disk, kill) leaves the earlier file at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with atomic_path(path) as tmp:
        plt.imsave(tmp, grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0,
                   vmax=255, format="png")  # whatever the file name ends with


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
    def _read(cls, folder):
        """The epoch of the backup in ``folder``, None if there is none; ``DamagedBackup`` (one
        line naming the file) if its files cannot be read whole."""
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
    def saved_epoch(cls, backup_dir):
        """The number of finished epochs in the backup at ``backup_dir`` (None: no backup).
        ``DamagedBackup`` in one line if it cannot be read, offering ``backup_dir.old`` (the
        epoch before) when that one is intact."""
        backup_dir = os.fspath(backup_dir)
        old = backup_dir + ".old"
        try:
            epoch = cls._read(backup_dir)
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
        return epoch if epoch is not None else cls._read(old)

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
