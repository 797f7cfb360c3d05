"""The collapse guard of the paper's runs: roll a collapsing run back to its last good epoch.

A collapse — a non-finite loss, the validation NLL up by more than ``val_jump`` in an epoch, or
‖RW − I‖_F above ``inverse_error`` — restores the weights and optimizer state of the last good
epoch (kept in memory), lowers the learning rate and raises the SNF layers' λ; training goes on.
Without it, ``keras.callbacks.TerminateOnNaN`` stops a run on a non-finite loss.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from snf_tf._compat import learning_rate_schedule
from snf_tf.model import FlowModel

__all__ = ["CollapseGuard", "check_settings"]


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and \
        math.isfinite(value)


def check_settings(owner, prefix="", *, val_jump, inverse_error, lr_factor, max_rollbacks,
                   lambda_factor):
    """The one check of the guard's settings (``CollapseGuard`` and the configs of
    :mod:`snf_tf.experiments.configs`, where they are named ``guard_<name>``): ``ValueError``
    ``"<owner>: <prefix><name> must be ..."``."""
    for name, value in (("val_jump", val_jump), ("inverse_error", inverse_error)):
        if value is not None and not (_number(value) and value > 0):
            raise ValueError(f"{owner}: {prefix}{name} must be a positive number or null "
                             f"(None), got {value!r}")
    if not (_number(lr_factor) and 0 < lr_factor <= 1):
        raise ValueError(f"{owner}: {prefix}lr_factor must be a number in (0, 1], got "
                         f"{lr_factor!r}")
    if not (_number(lambda_factor) and lambda_factor >= 1):
        raise ValueError(f"{owner}: {prefix}lambda_factor must be a number >= 1, got "
                         f"{lambda_factor!r}")
    if isinstance(max_rollbacks, bool) or not isinstance(max_rollbacks, int) or \
            max_rollbacks < 0:
        raise ValueError(f"{owner}: {prefix}max_rollbacks must be an integer >= 0, got "
                         f"{max_rollbacks!r}")


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
        check_settings("CollapseGuard", val_jump=val_jump, inverse_error=inverse_error,
                       lr_factor=lr_factor, max_rollbacks=max_rollbacks,
                       lambda_factor=lambda_factor)
        self.lambda_factor = float(lambda_factor)
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
        return [layer.reconstruction_weight for layer in self.model.flow_layers
                if layer.uses_reconstruction]

    def _raise_lambda(self, before):
        """λ of every SNF layer ← ``lambda_factor`` × the larger of its value before the restore
        and after it, so repeated rollbacks to one good state keep raising it."""
        for weight, previous in zip(self._reconstruction_weights(), before):
            weight.assign(self.lambda_factor * np.maximum(previous, weight.numpy()))

    def _lower_learning_rate(self):
        optimizer = self.model.optimizer
        schedule = learning_rate_schedule(optimizer)
        if schedule is not None:
            schedule.scale.assign(schedule.scale * self.lr_factor)
        else:
            optimizer.learning_rate = float(optimizer.learning_rate) * self.lr_factor

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, FlowModel):
            raise ValueError(f"CollapseGuard: guards a snf_tf.FlowModel, got "
                             f"{type(self.model).__name__}")
        schedule = learning_rate_schedule(self.model.optimizer)
        if schedule is not None and not isinstance(getattr(schedule, "scale", None), tf.Variable):
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
        errors = self.model.inverse_errors() if self.inverse_error is not None else {}
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
