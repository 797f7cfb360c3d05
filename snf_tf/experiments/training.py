"""Train one named experiment into a run folder: ``snf-tf train NAME``
(docs/paper.md: image pipeline training loop).

Keras ``fit`` does the work (progress bar, TensorBoard, backups); this module checks everything
before the first step, wires the callbacks and writes the run folder:

=====================  =========================================================================
``config.json``        the config used (experiment, hyperparameters, model arguments, versions)
``metrics.json``       one entry per epoch (see :data:`EPOCH_KEYS`), rewritten after every epoch,
                       and ``best``: the test NLL at the best validation epoch (what the paper
                       reports)
``best.keras``         the best-validation checkpoint (written atomically)
``samples.png``        64 samples through the learned inverse (``samples_exact.png``: through the
                       exact inverse, for models that learn inverses; ``samples_t0.7.png``: at
                       temperature 0.7); ``test_digits.png``: 64 real test images beside them
``curves.png``         training loss and validation/test NLL per epoch
``tensorboard/``       Keras TensorBoard logs (scalars and sample grids)
``backup/``            the last finished epoch: ``--resume`` continues from it, after a kill or
                       with a larger ``--epochs`` once the run has finished
=====================  =========================================================================

A collapse — a non-finite loss, the validation NLL up by more than ``guard_val_jump`` in an epoch,
or (Glow) ‖RW − I‖_F above ``guard_inverse_error`` — rolls the run back to its last good epoch
with the learning rate × ``guard_lr_factor`` and the SNF layers' λ × ``guard_lambda_factor``
(:class:`snf_tf.callbacks.CollapseGuard`); each
rollback is printed and listed under ``rollbacks`` in its ``metrics.json`` epoch. After
``guard_max_rollbacks`` rollbacks a further collapse stops the run with the last good state kept
(``"status": "collapsed"``; :func:`run` raises :class:`TrainingDiverged`). With ``guard=false``
(``snf-tf train --no-guard``) a non-finite loss stops the run (``keras.callbacks.TerminateOnNaN``):
the weights of the bad step never reach ``best.keras`` or the backup, ``metrics.json`` records
``"status": "diverged"`` and :func:`run` raises :class:`TrainingDiverged`.
"""

import math
import os
import platform
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from snf_tf import callbacks as snf_callbacks
from snf_tf import experiments
from snf_tf._files import atomic_path, check_writable
from snf_tf.experiments.guard import CollapseGuard
from snf_tf.experiments.run_folder import AtomicBackupAndRestore, RunFolder
from snf_tf.images import image_grid, save_png
from snf_tf.layers.base import NonFiniteError

__all__ = ["EPOCH_KEYS", "TIMING_KEYS", "Run", "TrainingDiverged", "epoch_line", "plot_curves",
           "prepare", "prepare_run_dir", "run", "run_status"]

#: keys of every ``metrics.json`` epoch entry; models with learned inverses also log
#: ``inverse_error_max``, the largest ‖RW − I‖_F over their layers after the epoch; GECO runs
#: ``reconstruction_weight`` (min, median, max of λ over the SNF layers); an epoch with a
#: rollback ``rollbacks`` (the events of :class:`snf_tf.callbacks.CollapseGuard`); runs with
#: ``eval_every_steps`` ``eval_points`` (step, examples, train_seconds, exact val/test NLL and
#: bits/dim), the epoch a time budget ran out ``time_budget_spent``. ``*_total``: over the run
#: so far, training seconds as the sum of the steps' times (evaluation excluded)
EPOCH_KEYS = ("epoch", "loss", "nll", "recon", "val_nll", "val_bpd", "test_nll", "test_bpd",
              "best_epoch", "learning_rate", "epoch_seconds", "train_seconds", "steps_per_second",
              "steps_total", "examples_total", "train_seconds_total")
#: the keys that depend on the machine's speed (everything else is a function of the seed)
TIMING_KEYS = ("epoch_seconds", "train_seconds", "steps_per_second", "train_seconds_total")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; training stopped and the last good checkpoint was kept."""


def run_status(out):
    """The status of the run in folder ``out`` (:meth:`RunFolder.status`: a killed run's
    ``"running"`` reads as ``"interrupted"``); None for a folder without a run."""
    return RunFolder(out).status()


def prepare_run_dir(out, resume):
    """Check that ``out`` can hold a run before any work starts; returns the backup epoch to
    resume from (0 for a fresh run). Never overwrites a run: a folder with ``metrics.json`` needs
    ``resume`` (and a backup to resume from). A folder another process trains into, a damaged
    backup or metadata file are a ``ValueError`` in one line that names the file."""
    folder = RunFolder(out)
    check_writable(folder.path, "the output folder", directory=True)
    owner = folder.lock_owner()
    if owner is not None:
        raise ValueError(f"{folder.path} is in use: {owner} is training into it; wait for it to "
                         "end or choose another --out")
    epoch = folder.saved_epoch()
    if resume:
        if folder.has_run():
            status = folder.status()  # also checks that metrics.json can be read
            if epoch is None and status not in ("running", "interrupted"):
                raise ValueError(f"{folder.path} holds a {status} run with no backup to resume "
                                 "from; choose another --out")  # (killed before its first
        return epoch or 0                                        # backup: it starts again)
    if folder.has_run() or epoch is not None:
        raise ValueError(f"{folder.path} already holds a run; pass --resume to continue it or "
                         "choose another --out")
    return 0


def _versions():
    import tensorflow as tf
    import tensorflow_probability as tfp

    import snf_tf

    return {"snf_tf": snf_tf.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "tensorflow_probability": tfp.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}


_STRUCTURE = ("experiment", "dataset", "model", "model_kwargs")


def _settings(cfg):
    """A config as flat ``{setting: value}`` (top-level keys and model arguments together)."""
    flat = {key: value for key, value in cfg.items() if key not in _STRUCTURE}
    flat.update(cfg["model_kwargs"])
    return flat


#: what ``--resume`` may change: how long to train and how often to evaluate
RESUMABLE = ("epochs", "time_budget", "eval_every_steps")


def _resumed_config(name, saved, overrides, out):
    """The config of a resumed run: the saved one, with :data:`RESUMABLE` settings from
    ``overrides``. Any other setting given explicitly must equal the saved value
    (``ValueError`` otherwise), so ``--resume --epochs N`` alone continues a run whatever
    ``--set`` options started it."""
    if saved.get("experiment") != name:
        raise ValueError(f"--resume: the run in {out} was trained as "
                         f"{saved.get('experiment')!r}, not {name!r}")
    given = _settings(experiments.config(name, **overrides))
    before = _settings(saved)
    changed = sorted(key for key, value in overrides.items()
                     if value is not None and key not in RESUMABLE
                     and given[key] != before.get(key))
    if changed:
        raise ValueError(f"--resume: the settings {', '.join(changed)} differ from the run in "
                         f"{out}; resume with the same settings (only epochs, time_budget and "
                         "eval_every_steps may change)")
    before.update({key: value for key, value in overrides.items()
                   if key in RESUMABLE and value is not None})
    known = experiments.setting_names(name)  # a setting since dropped is left out
    return experiments.config(name, **{key: value for key, value in before.items()
                                       if key in known})


#: points per epoch of the training-loss curve (``loss_curve`` in ``metrics.json``)
CURVE_POINTS = 20
#: the epochs of ``snf-tf train --time-budget`` without ``--epochs``: the budget decides
BUDGET_EPOCHS = 100_000


class _Clock(keras.callbacks.Callback):
    """The run's training clock: the sum of its training steps' times (evaluation, checkpoints
    and the other callbacks' epoch work excluded), its steps and the examples they saw, counted
    over the whole run (a resumed run continues them). With ``budget`` seconds it stops
    training at the first batch boundary past the budget (``exhausted``); with ``every`` steps
    it evaluates the validation and test splits exactly at every multiple of ``every`` and
    keeps the point (``points``) for the epoch's entry in ``metrics.json``."""

    def __init__(self, splits, batch_size, epoch_examples, budget=None, every=None, seconds=0.0,
                 steps=0, examples=0):
        super().__init__()
        self.splits, self.budget, self.every = splits, budget, every
        self.batch_size, self.epoch_examples = batch_size, epoch_examples
        self.seconds, self.steps, self.examples = float(seconds), int(steps), int(examples)
        self.exhausted = budget is not None and self.seconds >= budget
        self.points = []

    def _batch_examples(self, batch):
        """Examples in batch ``batch`` of an epoch: full batches but the last, which holds the
        rest of ``epoch_examples`` (the pipelines keep the remainder)."""
        size = self.batch_size
        if self.epoch_examples is not None:
            size = min(size, self.epoch_examples - batch * self.batch_size)
        return size

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds += time.perf_counter() - self._start
        self.steps += 1
        self.examples += self._batch_examples(batch)
        if self.every and self.steps % self.every == 0:
            self.points.append(self.evaluate())
        if self.budget is not None and self.seconds >= self.budget:
            self.exhausted = True
            self.model.stop_training = True

    def evaluate(self):
        """One point: steps, examples and training seconds so far, exact validation and test
        NLL. ``evaluate`` resets the metrics that ``fit`` keeps its running means in: they are
        restored after it, so the epoch's logged loss is unchanged."""
        model = self.model
        saved = [[variable.numpy() for variable in metric.variables] for metric in model.metrics]
        point = {"step": self.steps, "examples": self.examples, "train_seconds": self.seconds}
        for split, name in (("validation", "val"), ("test", "test")):
            result = model.evaluate(self.splits[split], verbose=0, return_dict=True)
            point.update({f"{name}_nll": float(result["nll"]), f"{name}_bpd": float(result["bpd"])})
        for metric, values in zip(model.metrics, saved):
            for variable, value in zip(metric.variables, values):
                variable.assign(value)
        return point

    def totals(self):
        """What each epoch's entry records of the clock."""
        return {"steps_total": self.steps, "examples_total": self.examples,
                "train_seconds_total": self.seconds}


class _RunLog(keras.callbacks.Callback):
    """Times every epoch and rewrites ``metrics.json`` after it, so a killed run keeps its curve.

    Each epoch entry also holds ``loss_curve``: ``[step, mean training loss over the steps since
    the previous point]`` about :data:`CURVE_POINTS` times an epoch, so a short run still draws a
    curve. Keras logs the running mean ``m_k`` of the epoch's first ``k`` steps; the mean over
    steps ``j+1..k`` is ``(k·m_k − j·m_j) / (k − j)``, exact and free.
    """

    def __init__(self, folder, cfg, paper, history, steps_per_epoch, guard=None):
        super().__init__()
        self.folder, self.cfg, self.paper, self.guard = folder, cfg, paper, guard
        self.history, self.steps = list(history), steps_per_epoch
        self.window = max(1, math.ceil(steps_per_epoch / CURVE_POINTS))
        self.status = "running"
        self.clock = None  # the run's _Clock

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.train_end = time.perf_counter(), None
        self.epoch, self.curve, self.mark, self.offset = epoch, [], (0, 0.0), 0

    def on_train_batch_end(self, batch, logs=None):
        k = batch + 1
        if self.guard is not None and self.guard.reset_at == (self.epoch, batch):
            self.offset, self.mark = k, (k, 0.0)  # the guard restarted the running means here
            return
        if (k % self.window and k != self.steps) or not logs or "loss" not in logs:
            return
        mean = float(np.asarray(logs["loss"]).reshape(-1)[0])
        j, before = self.mark
        if k == j:
            return
        o = self.offset  # Keras' running mean covers the steps after the last reset
        self.curve.append([self.epoch * self.steps + k,
                           ((k - o) * mean - (j - o) * before) / (k - j)])
        self.mark = (k, mean)

    def on_test_begin(self, logs=None):
        if self.train_end is None:
            self.train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train_seconds = (self.train_end or now) - self.start
        entry = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            value = float(np.asarray(value).reshape(-1)[0])
            entry[key] = int(value) if key == "best_epoch" else value
        entry["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        errors = self.model.inverse_errors()  # ‖RW − I‖_F per layer with a learned inverse
        if errors:
            entry["inverse_error_max"] = max(errors.values())
        if self.cfg.get("geco_rate"):  # the λ that GECO adapts, over the SNF layers
            weights = sorted(float(layer.reconstruction_weight.numpy())
                             for layer in self.model.flow_layers if layer.uses_reconstruction)
            if weights:
                entry["reconstruction_weight"] = {"min": weights[0], "max": weights[-1],
                                                  "median": float(np.median(weights))}
        events = [e for e in (self.guard.events if self.guard else []) if e["epoch"] == epoch + 1]
        if events:
            entry["rollbacks"] = events
        entry["loss_curve"] = self.curve
        entry.update(epoch_seconds=now - self.start, train_seconds=train_seconds,
                     steps_per_second=self.steps / train_seconds if train_seconds > 0 else None)
        if self.clock is not None:
            entry.update(self.clock.totals())
            if self.clock.points:
                entry["eval_points"], self.clock.points = self.clock.points, []
            if self.clock.exhausted:
                entry["time_budget_spent"] = True
        self.history = [e for e in self.history if e["epoch"] <= epoch] + [entry]
        self.write()

    def best(self):
        entries = [e for e in self.history if math.isfinite(e.get("val_nll", math.nan))]
        if not entries:
            return None
        best = min(entries, key=lambda e: e["val_nll"])
        return {key: best.get(key) for key in ("epoch", "val_nll", "val_bpd", "test_nll",
                                               "test_bpd")}

    def write(self):
        self.folder.write_metrics({"experiment": self.cfg["experiment"], "status": self.status,
                                "paper": self.paper, "epochs": self.history, "best": self.best()})


def _rollbacks(history):
    """How many times the guard rolled a run back (its ``metrics.json`` epochs)."""
    return sum(event.get("kind") == "rollback" for entry in history
               for event in entry.get("rollbacks", ()))


def epoch_line(entry, epochs, budget=None):
    """One plain line for an epoch of ``metrics.json``: time (and of a time ``budget``, the
    training seconds spent), training loss, the exact validation NLL and the test NLL at the best
    validation epoch so far (nats and bits/dim), ‖RW − I‖."""
    parts = [f"epoch {entry['epoch']}" if budget else f"epoch {entry['epoch']}/{epochs}",
             f"{entry.get('epoch_seconds', math.nan):.0f} s"]
    if budget:
        parts.append(f"{entry.get('train_seconds_total', math.nan):.0f}/{budget:.0f} s of "
                     "training")
    parts.append(f"loss {entry.get('loss', math.nan):.2f}")
    if "val_nll" in entry:
        parts.append(f"val {entry['val_nll']:.2f} nats = {entry['val_bpd']:.4f} bits/dim")
    if entry.get("test_nll") is not None:
        best = " (this epoch)" if entry.get("best_epoch") == entry["epoch"] else \
            f" (epoch {entry.get('best_epoch')})"
        parts.append(f"test {entry['test_nll']:.2f} nats = {entry['test_bpd']:.4f} bits/dim"
                     + best)
    if "inverse_error_max" in entry:
        parts.append(f"max ‖RW − I‖_F {entry['inverse_error_max']:.2g}")
    for event in entry.get("rollbacks", ()):
        parts.append(f"rolled back to epoch {event['restored_epoch']}" if event["kind"] ==
                     "rollback" else f"stopped at epoch {event['restored_epoch']}")
    return " · ".join(parts)


class _Progress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar (steps, ETA, running means), then :func:`epoch_line` once the epoch is
    logged — it runs last, after the checkpoint, ``metrics.json`` and the backup are written."""

    def __init__(self, log, epochs, budget=None):
        super().__init__()
        self.log, self.epochs, self.budget = log, epochs, budget

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.verbose and self.log.history:
            print(epoch_line(self.log.history[-1], self.epochs, self.budget), flush=True)


def plot_curves(history, path, title, steps_per_epoch=None):
    """Training loss (within epochs too, from ``loss_curve``, given ``steps_per_epoch``),
    validation/test NLL and (models with learned inverses) the largest ‖RW − I‖_F per epoch, as
    a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in history]
    inverse_errors = [e.get("inverse_error_max", math.nan) for e in history]
    learned = any(math.isfinite(v) for v in inverse_errors)
    fig, axes = plt.subplots(1, 3 if learned else 2, figsize=(15 if learned else 10, 3.6))
    points = [point for e in history for point in e.get("loss_curve", [])]
    if points and steps_per_epoch:  # the loss within epochs, at the x of fractional epochs
        axes[0].plot([step / steps_per_epoch for step, _ in points], [v for _, v in points],
                     "-", lw=1, label="over the last steps")
        axes[0].plot([epoch - 0.5 for epoch in epochs], [e.get("loss", math.nan) for e in history],
                     "o", ms=4, label="epoch mean")  # at the middle of the epoch it averages
        axes[0].legend(fontsize=8)
        finite = sorted(v for _, v in points if math.isfinite(v))
        if len(finite) > 10:  # the first steps' loss would flatten the rest of the curve
            spread = finite[int(0.98 * len(finite))] - finite[0]
            axes[0].set_ylim(finite[0] - 0.05 * spread, finite[0] + 1.1 * spread)
    else:
        axes[0].plot(epochs, [e.get("loss", math.nan) for e in history], "o-", ms=3)
    axes[0].set_title("training loss (SNF log-dets count as 0)", fontsize=9)
    for key, style in (("val_nll", "o-"), ("test_nll", "s--")):
        axes[1].plot(epochs, [e.get(key, math.nan) for e in history], style, ms=3,
                     label=key.replace("_nll", ""))
    axes[1].set_title("exact NLL [nats] (test: at the best validation epoch)", fontsize=9)
    axes[1].legend()
    if learned:  # how far the learned inverses are from W⁻¹ (the SNF gradient's error)
        axes[2].semilogy(epochs, inverse_errors, "o-", ms=3)
        axes[2].set_title("largest ‖RW − I‖_F over the layers", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # a failed write leaves the earlier figure
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


#: the lower sampling temperature of ``samples_t0.7.png`` (Kingma & Dhariwal 2018, Fig. 8: a
#: reduced temperature trades diversity for cleaner samples; the file name says it)
LOW_TEMPERATURE = 0.7


#: samples per class (one grid row per class) of a class-conditional model's grids
PER_CLASS = 8


def _sample_layout(model):
    """``(context, columns)`` of the run folder's sample grids: 64 samples 8 wide, or for a
    class-conditional model :data:`PER_CLASS` samples of every class, one row per class."""
    if model.num_classes is None:
        return None, None
    return np.repeat(np.arange(model.num_classes), PER_CLASS).astype("int32"), PER_CLASS


def _write_samples(model, out, seed, test=None):
    """The run folder's image grids: samples at temperature 1 through the learned (and, where
    there is one, the exact) inverse, at :data:`LOW_TEMPERATURE`, and 64 real test images.
    Class-conditional models: one row per class (:data:`PER_CLASS` samples each)."""
    if len(model.data_shape) != 3 or model.context_dim is not None:
        return []
    context, columns = _sample_layout(model)
    n = 64 if context is None else len(context)
    written = []
    variants = [("samples.png", False, 1.0)]
    if any(layer.learns_inverse for layer in model.flow_layers):
        variants.append(("samples_exact.png", True, 1.0))
    variants.append((f"samples_t{LOW_TEMPERATURE}.png", False, LOW_TEMPERATURE))
    for filename, exact, temperature in variants:
        try:
            samples = model.sample(n, exact_inverse=exact, temperature=temperature,
                                   seed=seed, context=context).numpy()
        except (tf.errors.OpError, NonFiniteError) as error:  # a numerically singular inverse
            warnings.warn(f"{filename} not written: sampling failed: "
                          f"{getattr(error, 'message', error)}",
                          RuntimeWarning, stacklevel=2)
            continue
        samples = np.nan_to_num(samples, nan=0.0, posinf=255.0, neginf=0.0)
        save_png(os.path.join(out, filename), image_grid(samples, columns))
        written.append(filename)
    if test is not None:  # the real thing, for comparison
        save_png(os.path.join(out, "test_digits.png"),
                 image_grid(_real_images(test, context), columns))
        written.append("test_digits.png")
    return written


def _real_images(test, labels=None):
    """64 test images, or (``labels``) the first test images of each label in that order."""
    if labels is None:
        images = next(iter(test.unbatch().take(64).batch(64)))
        return np.asarray(images[0] if isinstance(images, (tuple, list)) else images)
    wanted = {int(k): int(np.sum(labels == k)) for k in np.unique(labels)}
    found = {k: [] for k in wanted}
    for image, label in test.unbatch():
        label = int(label)
        if label in found and len(found[label]) < wanted[label]:
            found[label].append(image.numpy())
            if all(len(found[k]) == wanted[k] for k in wanted):
                break
    blank = np.zeros(test.element_spec[0].shape[1:], np.uint8)
    queues = {k: list(v) for k, v in found.items()}
    return np.stack([queues[int(k)].pop(0) if queues[int(k)] else blank for k in labels])


def run(name, out, *, resume=False, data_dir=None, verbose="auto", extra_callbacks=(),
        **overrides):
    """Train experiment ``name`` into the folder ``out``; returns the ``metrics.json`` payload.

    ``overrides`` are config settings (``epochs``, ``batch_size``, ``train_examples``,
    ``hidden_channels``, …; see :func:`snf_tf.experiments.config`). Everything is checked —
    name, settings, output folder, data — before the first training step (:func:`prepare`).
    """
    return prepare(name, out, resume=resume, data_dir=data_dir, **overrides).train(
        verbose=verbose, extra_callbacks=extra_callbacks)


def _epoch_examples(cfg, data_dir):
    """Training examples per epoch of a config, from the dataset's metadata."""
    if cfg["dataset"] == "normal":  # the timing experiment's synthetic data: full batches
        return None
    from snf_tf import data

    try:
        return data.num_examples(cfg["dataset"], "train", data_dir, cfg["train_examples"])
    except KeyError:  # no split metadata (tfds.testing.mock_data): every batch counts as full
        return None


def _build_checked(cfg, splits):
    """The config's model, built on the data's shape, seeded as training will use it: values
    only the builder can judge (``num_blocks=0``, an unknown ``gradient``) fail here, in one
    ``ValueError``, before anything is written."""
    spec = splits["train"].element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    keras.utils.set_random_seed(cfg["seed"])
    try:
        model = experiments.build_model(cfg)
        model.build((None,) + tuple(spec.shape[1:]))
    except (ValueError, TypeError, IndexError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else \
            type(error).__name__
        name = cfg["experiment"]
        raise ValueError(message if message.startswith(name) else
                         f"{name}: bad model argument: {message}") from None
    return model


def prepare(name, out, *, resume=False, data_dir=None, **overrides):
    """Check and set up a run without training: returns a :class:`Run` that holds the run
    folder's lock (one writer per folder) until :meth:`Run.train` ends. Raises ``ValueError``
    (bad name, setting, model argument, folder, damaged run files) or ``FileNotFoundError`` (data
    missing) — and then nothing is written.

    A run killed after its last epoch (before its final plots and grids) is completed by
    ``resume=True`` with the same settings; a finished run continues with a larger ``epochs``.
    """
    cfg = experiments.config(name, **overrides)
    out = os.path.abspath(out)
    start_epoch = prepare_run_dir(out, resume)
    folder = RunFolder(out)
    history, status = [], None
    if resume and os.path.exists(folder.file(RunFolder.CONFIG)):
        cfg = _resumed_config(name, folder.read_config()["config"], overrides, out)
        if folder.has_run():
            metrics = folder.read_metrics()
            history = [e for e in metrics.get("epochs", []) if e["epoch"] <= start_epoch]
            status = folder.status(metrics)
    if start_epoch >= cfg["epochs"] and status == "finished":
        raise ValueError(f"the run in {out} already finished {start_epoch} epochs; pass a larger "
                         "--epochs to continue it")
    if _budget_spent(cfg, history) and status == "finished":
        raise ValueError(f"the run in {out} already spent its time budget of "
                         f"{cfg['time_budget']:.0f} s of training; pass a larger --time-budget "
                         "to continue it")
    splits = experiments.datasets(cfg, data_dir=data_dir)  # FileNotFoundError if missing
    steps = int(splits["train"].cardinality())
    if steps < 1:
        raise ValueError(f"{name}: the training split has no batch (steps per epoch: {steps})")
    model = _build_checked(cfg, splits)
    lock = folder.lock()
    # under the lock: the folder may have changed since the checks above, which also read every
    # array of the backup; whether it changed shows in its metadata
    try:
        epoch = folder.saved_epoch(verify=False)
        if (epoch or 0) != start_epoch or (not resume and folder.has_run()):
            raise ValueError(f"{out} changed while the run was being prepared; try again")
        folder.remove_partial_files()  # what killed writes left behind
    except BaseException:
        lock.release()
        raise
    return Run(cfg, out, splits, history, steps, model=model, lock=lock,
               epoch_examples=_epoch_examples(cfg, data_dir))


def _clock_totals(history, steps_per_epoch):
    """``(seconds, steps, examples)`` of training in a resumed run's ``history`` (runs written
    before the clock existed: their epochs' training times, full epochs, examples unknown: 0)."""
    if not history:
        return 0.0, 0, 0
    last = history[-1]
    if "train_seconds_total" in last:
        return last["train_seconds_total"], last["steps_total"], last["examples_total"]
    return (sum(e.get("train_seconds") or 0.0 for e in history), len(history) * steps_per_epoch,
            0)


def _budget_spent(cfg, history):
    """Whether a run with a time budget has trained it all (by :func:`_clock_totals`, the
    clock's own starting point)."""
    return cfg.get("time_budget") is not None and \
        _clock_totals(history, 0)[0] >= cfg["time_budget"]


class Run:
    """A checked run: config, data pipelines, run folder, and the history to resume from."""

    def __init__(self, cfg, out, splits, history, steps_per_epoch, model=None, lock=None,
                 epoch_examples=None):
        self.cfg, self.out, self.splits = cfg, out, splits
        #: training examples per epoch (None: unknown, every batch counts as full)
        self.epoch_examples = epoch_examples
        self.folder = RunFolder(out)
        self.history, self.steps = history, steps_per_epoch
        self.model, self.images = model, []  # images: the grids written after training
        self.lock = lock
        #: the run has a time budget and had spent it
        self.budget_spent = _budget_spent(cfg, history)
        #: the run had trained all its epochs (or spent its time budget) when it was killed:
        #: train() only finishes it
        self.completes = bool(history) and (history[-1]["epoch"] >= cfg["epochs"]
                                            or self.budget_spent)

    def _path(self, name):
        return self.folder.file(name)

    def train(self, verbose="auto", extra_callbacks=()):
        """Compile and ``fit``; writes the run folder; returns the metrics payload. The folder's
        lock is released at the end, however training ends; a run stopped by an exception
        (Ctrl-C, a full disk) is recorded as ``"interrupted"``."""
        if self.lock is not None and not self.lock.held_here:
            raise RuntimeError("Run.train: this run has already been trained; prepare() it again")
        self._log = None
        try:
            return self._train(verbose, extra_callbacks)
        except BaseException:
            log = self._log
            if log is not None and log.status == "running":
                log.status = "interrupted"
                try:
                    log.write()
                except OSError:  # e.g. the full disk that stopped the run: run_status() tells
                    pass
            raise
        finally:
            if self.lock is not None:
                self.lock.release()

    def _train(self, verbose, extra_callbacks):
        cfg, name = self.cfg, self.cfg["experiment"]
        experiment = experiments.get(name)
        if self.model is None:
            keras.utils.set_random_seed(cfg["seed"])
            self.model = experiments.build_model(cfg)
        model = self.model
        rollbacks = _rollbacks(self.history)
        # a resumed run keeps the learning rate its guard lowered
        schedule = snf_callbacks.LinearWarmup(
            cfg["learning_rate"], cfg["warmup_epochs"] * self.steps,
            scale=cfg["guard_lr_factor"] ** rollbacks if cfg["guard"] else 1.0)
        optimizer = keras.optimizers.Adam(schedule, epsilon=cfg["adam_epsilon"],
                                          global_clipnorm=cfg["clipnorm"])
        model.compile(optimizer=optimizer, jit_compile=cfg["jit_compile"])
        os.makedirs(self.out, exist_ok=True)
        paper = {"value": experiment.paper_value, "unit": experiment.paper_unit,
                 "text": experiment.paper, "epochs": experiment.paper_epochs}
        self.folder.write_config({"config": cfg, "paper": paper, "versions": _versions()})

        best = snf_callbacks.BestValidationTest(self.splits["test"], self._path("best.keras"))
        previous = [e for e in self.history if math.isfinite(e.get("val_nll", math.nan))]
        if previous:  # continue the best-validation bookkeeping of the resumed run
            top = min(previous, key=lambda e: e["val_nll"])
            best.best, best.best_epoch = top["val_nll"], top["epoch"] - 1
            best.test = {"nll": top.get("test_nll"), "bpd": top.get("test_bpd")}
        guard = None
        if cfg["guard"]:
            last = self.history[-1].get("val_nll") if self.history else None
            guard = CollapseGuard(
                val_jump=cfg["guard_val_jump"], inverse_error=cfg["guard_inverse_error"],
                lr_factor=cfg["guard_lr_factor"], max_rollbacks=cfg["guard_max_rollbacks"],
                lambda_factor=cfg["guard_lambda_factor"],
                rollbacks=rollbacks, reference=last)
        log = self._log = _RunLog(self.folder, cfg, paper, self.history, self.steps, guard)
        clock = log.clock = _Clock(self.splits, cfg["batch_size"], self.epoch_examples,
                                   cfg["time_budget"], cfg["eval_every_steps"],
                                   *_clock_totals(self.history, self.steps))
        tensorboard = self._path("tensorboard")
        # the guard first: it may restore the state and rewrite the epoch's validation logs
        # before the checkpoint, metrics.json and the backup see them
        # the clock first: its step times then hold the least of the other callbacks' work
        callback_list = [clock] + ([guard] if guard else [keras.callbacks.TerminateOnNaN()]) + [
            best, log, keras.callbacks.TensorBoard(tensorboard, write_graph=False)]
        if cfg["geco_rate"]:
            callback_list.insert(0, snf_callbacks.Geco(cfg["geco_rate"]))
        spec = self.splits["train"].element_spec
        spec = spec[0] if isinstance(spec, (tuple, list)) else spec
        if spec.shape.rank == 4:  # images
            context, columns = _sample_layout(model)
            callback_list.append(snf_callbacks.ImageGrid(
                self.out, every=1, n=64, seed=cfg["seed"], log_dir=tensorboard, context=context,
                columns=columns))
        callback_list += list(extra_callbacks)
        # last, so that an epoch is backed up only after metrics.json and best.keras hold it
        callback_list.append(AtomicBackupAndRestore(self.folder.backup))
        callback_list.append(_Progress(log, cfg["epochs"], cfg["time_budget"]))
        # a run whose budget was spent when it was killed: fit only restores its last epoch
        epochs = self.history[-1]["epoch"] if clock.exhausted else cfg["epochs"]
        model.fit(self.splits["train"], validation_data=self.splits["validation"],
                  epochs=epochs, callbacks=callback_list, verbose=verbose, shuffle=False)

        # only TerminateOnNaN (no guard), the guard giving up and the time budget stop a run early
        collapsed = guard is not None and guard.gave_up
        diverged = collapsed or (guard is None and bool(model.stop_training)
                                 and not clock.exhausted)
        if collapsed or diverged:
            log.status = "collapsed" if collapsed else "diverged"
            log.write()
        if collapsed:
            raise TrainingDiverged(
                f"{name}: training collapsed again after {guard.rollbacks} rollback(s) "
                f"({guard.events[-1]['reason']}, epoch {guard.events[-1]['epoch']}); it stopped "
                f"with the last good state restored. {self._path('best.keras')} is the best "
                "validation epoch and metrics.json lists every rollback.")
        if diverged:
            raise TrainingDiverged(
                f"{name}: the loss became non-finite in epoch {len(log.history)}; training "
                f"stopped. The last good state is {self._path('best.keras')} (best validation "
                "epoch) and metrics.json keeps the curve.")
        # the final outputs, then "finished": a run killed before this point is completed by
        # --resume (which trains no further epoch and comes back here)
        plot_curves(log.history, self._path("curves.png"), name, self.steps)
        self.images = _write_samples(model, self.out, cfg["seed"], self.splits["test"])
        log.status = "finished"
        log.write()
        return self.folder.read_metrics()

    def summary(self, metrics, command="snf-tf", data_dir=None):
        """What a finished run printed last: the result, where each output is, what to run
        next (``command`` is how the CLI was called, ``data_dir`` its ``--data-dir``)."""
        cfg, out = self.cfg, os.path.relpath(self.out)
        out = self.out if out.startswith(os.pardir) else out  # short when under the cwd
        best, paper = metrics.get("best") or {}, metrics["paper"]
        entries = metrics["epochs"]
        seconds = sum(e.get("epoch_seconds") or 0.0 for e in entries)
        count = f"{len(entries)} epoch" + ("s" if len(entries) != 1 else "")
        lines = [f"{cfg['experiment']}: {count} in {seconds:.0f} s."]
        if best.get("test_nll") is not None:
            lines[0] += (f" Test NLL at the best validation epoch ({best['epoch']}): "
                         f"{best['test_nll']:.2f} nats = {best['test_bpd']:.4f} bits/dim")
            if paper.get("value") is not None:
                after = f" after {paper['epochs']} epochs" if paper.get("epochs") else ""
                lines[0] += f" (paper{after}: {paper['text']})"
            lines[0] += "."
        outputs = [("best.keras", "the best-validation checkpoint"),
                   ("metrics.json", "every epoch's numbers"),
                   ("curves.png", "loss, exact NLL and ‖RW − I‖ per epoch")]
        what = "64 samples" if self.model is None or self.model.num_classes is None else \
            f"{PER_CLASS} samples per class, one row per class,"
        real = "64 real test images" if self.model is None or self.model.num_classes is None \
            else "real test images, one row per class"
        described = {"samples.png": f"{what} at temperature 1 (learned inverses)",
                     "samples_exact.png": "the same through the exact inverses",
                     f"samples_t{LOW_TEMPERATURE}.png": f"{what} at temperature "
                                                         f"{LOW_TEMPERATURE}",
                     "test_digits.png": f"{real}, for comparison"}
        outputs += [(name, described[name]) for name in self.images]
        outputs.append(("tensorboard/", "TensorBoard logs"))
        lines.append(f"Run folder {out}/:")
        lines += [f"  {name:<20} {what}" for name, what in outputs]
        checkpoint = os.path.join(out, "best.keras")
        longer = max(2 * cfg["epochs"], cfg["epochs"] + 10)
        lines.append("Next:")
        data = f" --data-dir {data_dir}" if data_dir else ""
        lines += [f"  {command} evaluate {checkpoint} --split test{data}",
                  f"  {command} sample {checkpoint} -n 64 --temperature {LOW_TEMPERATURE} "
                  + ("--label 3 " if cfg["model_kwargs"].get("num_classes") else "")
                  + "-o samples.png",
                  f"  {command} export {checkpoint} {os.path.join(out, 'savedmodel')}",
                  f"  {command} train {cfg['experiment']} --out {out} --resume "
                  + (f"--time-budget {2 * cfg['time_budget']:.0f}s" if cfg["time_budget"] else
                     f"--epochs {longer}") + f"{data}   # train longer",
                  f"  tensorboard --logdir {os.path.join(out, 'tensorboard')}"]
        return "\n".join(lines)
