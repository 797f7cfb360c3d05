"""The collapse guard restores everything it promises: after a rollback, for each kind of
trigger, every weight of the model and every variable of the optimizer (Adam's moments and its
iteration count) equals its value at the end of the restored epoch, bit for bit; the learning
rate is that value × ``lr_factor`` and each SNF layer's λ is ``lambda_factor`` × the larger of
its value before and after the restore."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from snf_tf import FlowModel
from snf_tf import layers as L
from snf_tf.experiments.guard import CollapseGuard

STEPS, BATCH = 8, 50


def _state(model):
    """``[(path, value)]`` of every model weight and optimizer variable, in a fixed order."""
    variables = list(model.weights) + list(model.optimizer.variables)
    return [(v.path, np.array(v.numpy(), copy=True)) for v in variables]


class _Probe(keras.callbacks.Callback):
    """Placed after the guard: keeps the state at each epoch's end (and at the start), and when
    the guard has just rolled back, compares the state with the one it restored."""

    def __init__(self, guard):
        super().__init__()
        self.guard, self.snapshots, self.checked = guard, {}, []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:
            self.snapshots[0] = _state(self.model)

    def _check_if_rolled_back(self):
        if len(self.guard.events) == len(self.checked):
            return False
        event = self.guard.events[-1]
        good = dict(self.snapshots[event["restored_epoch"]])
        before_restore = self.before
        now = _state(self.model)
        for path, value in now:
            if "reconstruction_weight" in path:
                expected = self.guard.lambda_factor * np.maximum(good[path],
                                                                 before_restore[path])
                np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=path)
            elif "learning_rate" in path:
                np.testing.assert_allclose(value, good[path] * self.guard.lr_factor,
                                           rtol=1e-6, err_msg=path)
            else:
                np.testing.assert_array_equal(value, good[path], err_msg=path)
        assert any("iteration" in path for path, _ in now)  # the count was compared too
        self.checked.append(event)
        return True

    def on_train_batch_begin(self, batch, logs=None):
        self.before = dict(_state(self.model))

    def on_train_batch_end(self, batch, logs=None):
        self._check_if_rolled_back()
        self.before = dict(_state(self.model))

    def on_epoch_end(self, epoch, logs=None):
        if not self._check_if_rolled_back():
            self.snapshots[epoch + 1] = _state(self.model)


class _AtLastBatchOfEpoch2(keras.callbacks.Callback):
    def __init__(self, action):
        super().__init__()
        self.action, self.epoch = action, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == STEPS - 1:
            self.action(self.model)


def _blow_up(model):
    for weight in model.trainable_weights:
        weight.assign(weight * 5.0)


def _spoil_inverses(model):
    for layer in model.flow_layers:
        if layer.learns_inverse:
            layer.inverse_kernel.assign(layer.inverse_kernel + 1.0)


def _data(nan_in_epoch=None):
    x = np.random.default_rng(0).standard_normal((STEPS * BATCH, 3)).astype("float32")
    x[:, 1] += 0.5 * x[:, 0] ** 2
    seen = {"epochs": 0}

    def generate():
        seen["epochs"] += 1
        for i in range(STEPS):
            batch = x[i * BATCH:(i + 1) * BATCH]
            yield np.full_like(batch, np.nan) if seen["epochs"] == nan_in_epoch and i == 2 \
                else batch

    spec = tf.TensorSpec((None, 3), tf.float32)
    train = tf.data.Dataset.from_generator(generate, output_signature=spec).apply(
        tf.data.experimental.assert_cardinality(STEPS))
    return train, tf.data.Dataset.from_tensor_slices(x[:200]).batch(100)


@pytest.mark.parametrize("trigger", ["nan_batch", "val_jump", "inverse_error"])
def test_a_rollback_restores_every_weight_and_optimizer_variable(trigger):
    keras.utils.set_random_seed(0)
    model = FlowModel([L.SelfNormDense(), L.SmoothLeakyReLU(), L.SelfNormDense()])
    model(np.zeros((2, 3), "float32"))  # built: the guard keeps the state before training
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    guard = CollapseGuard(verbose=False,
                          inverse_error=0.5 if trigger == "inverse_error" else None)
    probe = _Probe(guard)
    callbacks = [guard, probe]
    if trigger != "nan_batch":
        action = _blow_up if trigger == "val_jump" else _spoil_inverses
        callbacks.insert(0, _AtLastBatchOfEpoch2(action))
    train, val = _data(nan_in_epoch=2 if trigger == "nan_batch" else None)
    model.fit(train, validation_data=val, epochs=3, verbose=0, callbacks=callbacks)
    (event,) = guard.events
    assert event["kind"] == "rollback" and event["epoch"] == 2 and event["restored_epoch"] == 1
    expected_reason = {"nan_batch": "non-finite training loss at batch 3",
                       "val_jump": "val_nll", "inverse_error": "‖RW − I‖_F"}[trigger]
    assert expected_reason in event["reason"], event["reason"]
    assert probe.checked == [event]  # the probe compared the state right after the rollback
    assert np.isfinite(model.evaluate(val, verbose=0, return_dict=True)["nll"])
