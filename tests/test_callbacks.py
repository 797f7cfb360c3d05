"""snf_tf.callbacks: warm-up schedule, GECO, image grids, best-validation testing, NaN stop."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from snf_tf import FlowModel, SelfNormConv2D, SelfNormDense
from snf_tf import callbacks as cb
from snf_tf.experiments.guard import CollapseGuard
from snf_tf.experiments.run_folder import AtomicBackupAndRestore
from snf_tf.images import image_grid


def _data(n=64, d=4, seed=0):
    return (np.random.default_rng(seed).normal(size=(n, d)) * 2).astype("float32")


def test_linear_warmup_matches_reference_formula():
    n_batches, warmup_epochs, lr = 7, 3, 1e-3
    schedule = cb.LinearWarmup(lr, warmup_epochs * n_batches)
    for epoch in range(1, 6):
        for b in range(n_batches):
            step = (epoch - 1) * n_batches + b
            reference = lr * ((b + 1) + (epoch - 1) * n_batches) / (warmup_epochs * n_batches) \
                if epoch <= warmup_epochs else lr
            np.testing.assert_allclose(float(schedule(step)), reference, rtol=1e-6)
    assert cb.LinearWarmup.from_config(schedule.get_config()).warmup_steps == 21


def test_geco_grows_lambda_by_the_ema_of_reconstruction_errors():
    layer = SelfNormDense()
    model = FlowModel([layer])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(float(layer.last_reconstruction_error)))
    geco = cb.Geco(rate=0.5, decay=0.9)
    model.fit(_data(), batch_size=16, epochs=1, verbose=0, callbacks=[record, geco])
    ema, log_lambda = None, 0.0
    for error in seen:
        ema = error if ema is None else 0.9 * ema + 0.1 * error
        log_lambda += 0.5 * ema
    assert len(seen) == 4 and seen[-1] > 0
    np.testing.assert_allclose(float(layer.reconstruction_weight), math.exp(log_lambda), rtol=1e-5)


def test_geco_over_several_layers_matches_the_per_layer_update_to_the_bit():
    layers = [SelfNormDense(reconstruction_weight=w) for w in (1.0, 2.0, 0.5)]
    model = FlowModel(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    seen = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(
        [float(layer.last_reconstruction_error) for layer in layers]))
    geco = cb.Geco(rate=0.3, decay=0.9)
    model.fit(_data(), batch_size=8, epochs=2, verbose=0, callbacks=[record, geco])
    for i, layer in enumerate(layers):  # the eager λ·exp(rate·ema) on a float32 variable
        weight, ema = np.float32(layer.initial_reconstruction_weight), None
        for errors in seen:
            ema = errors[i] if ema is None else 0.9 * ema + 0.1 * errors[i]
            weight = weight * np.float32(math.exp(0.3 * ema))
        assert float(layer.reconstruction_weight.numpy()) == float(weight)
    assert len(seen) == 16 and geco._update.experimental_get_tracing_count() == 1
    assert set(geco.ema) == {layer.name for layer in layers}


def test_recorded_reconstruction_error_is_the_unweighted_loss():
    layer = SelfNormDense(reconstruction_weight=3.0)
    x = _data(8)
    layer.build(x.shape)
    layer.inverse_kernel.assign(layer.inverse_kernel + 0.1)
    layer.forward(x, training=True)
    np.testing.assert_allclose(float(layer.last_reconstruction_error),
                               float(layer.reconstruction_loss(x)) / 3.0, rtol=1e-6)


def test_image_grid_layout():
    images = np.arange(5 * 2 * 3 * 1).reshape(5, 2, 3, 1)
    grid = image_grid(images, columns=2)
    assert grid.shape == (6, 6, 1) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[2:4, 3:6], images[3])
    assert not grid[4:6, 3:6].any()  # the empty cell


def test_image_grid_callback_writes_png_and_tensorboard(tmp_path):
    model = FlowModel([SelfNormConv2D(3)])
    x = np.random.default_rng(0).uniform(0, 256, (16, 6, 6, 1)).astype("float32")
    model.compile(optimizer="adam")
    grid_cb = cb.ImageGrid(str(tmp_path / "img"), n=4, reconstruct=x[:3],
                           log_dir=str(tmp_path / "tb"))
    model.fit(x, batch_size=8, epochs=1, verbose=0, callbacks=[grid_cb])
    assert os.path.getsize(tmp_path / "img" / "samples.png") > 0
    assert os.path.getsize(tmp_path / "img" / "reconstructions.png") > 0
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tb"))


def test_best_validation_test_reports_test_nll_at_best_epoch(tmp_path):
    x_train, x_val, x_test = _data(64, seed=0), _data(32, seed=1), _data(32, seed=2)
    model = FlowModel([SelfNormDense(), SelfNormDense()])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    path = str(tmp_path / "best.keras")
    best = cb.BestValidationTest(x_test, checkpoint_path=path)
    history = model.fit(x_train, batch_size=16, epochs=3, verbose=0, validation_data=(x_val,),
                        callbacks=[best]).history
    best_epoch = int(np.argmin(history["val_nll"]))
    assert history["best_epoch"][-1] == best_epoch + 1
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.evaluate(x_test, verbose=0, return_dict=True)["nll"],
                               history["test_nll"][-1], rtol=1e-5)
    np.testing.assert_allclose(loaded.evaluate(x_val, verbose=0, return_dict=True)["nll"],
                               history["val_nll"][best_epoch], rtol=1e-5)


def test_non_finite_loss_stops_training_and_keeps_the_best_checkpoint(tmp_path):
    x = _data(64)
    model = FlowModel([SelfNormDense()])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    path = str(tmp_path / "best.keras")
    model.fit(x, batch_size=16, epochs=1, verbose=0, validation_data=(x,),
              callbacks=[cb.BestValidationTest(x, checkpoint_path=path)])
    saved = os.path.getmtime(path)
    poisoned = x.copy()
    poisoned[20] = np.nan  # the second batch; streamed (arrays with NaN are refused up front)
    poisoned = tf.data.Dataset.from_tensor_slices(poisoned).batch(16)
    history = model.fit(poisoned, epochs=2, verbose=0, validation_data=(x,),
                        callbacks=[keras.callbacks.TerminateOnNaN(),
                                   cb.BestValidationTest(x, checkpoint_path=path)]).history
    assert math.isnan(history["loss"][-1]) and len(history["loss"]) == 1
    assert os.path.getmtime(path) == saved
    loaded = keras.models.load_model(path)
    assert np.all(np.isfinite(loaded.log_prob(x).numpy()))


def test_save_atomically_leaves_no_temporary_files(tmp_path):
    model = FlowModel([SelfNormDense()])
    model.log_prob(_data(2))
    cb.save_atomically(model, str(tmp_path / "m.keras"))
    assert os.listdir(tmp_path) == ["m.keras"]


def test_image_grid_survives_a_model_that_cannot_sample(tmp_path):
    """A singular inverse must cost a picture, never the training run."""
    model = FlowModel([SelfNormConv2D(3)])
    model.build((None, 6, 6, 1))
    grid = cb.ImageGrid(str(tmp_path), every=1, n=4)
    grid.set_model(model)

    def singular(*args, **kwargs):
        raise tf.errors.InvalidArgumentError(None, None, "Input is not invertible.")

    model.sample = singular
    with pytest.warns(RuntimeWarning, match="no samples after epoch 1: Input is not invertible"):
        grid.on_epoch_end(0)
    assert not os.path.exists(tmp_path / "samples.png")


def test_atomic_backup_survives_a_kill_between_the_renames(tmp_path):
    """Killed after ``backup → backup.old`` and before ``.tmp → backup``: the old backup is
    found and restored complete."""
    model = FlowModel([SelfNormDense()])
    model.build((None, 4))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    backup = AtomicBackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup._current_epoch = 3
    backup._save_model()
    assert AtomicBackupAndRestore.saved_epoch(str(tmp_path / "backup")) == 3
    saved = [w.copy() for w in model.get_weights()]
    os.replace(tmp_path / "backup", tmp_path / "backup.old")  # the kill happened here
    os.makedirs(tmp_path / "backup.tmp")                       # a half-written new backup
    assert AtomicBackupAndRestore.saved_epoch(str(tmp_path / "backup")) == 3
    for weight in model.trainable_weights:
        weight.assign(tf.zeros_like(weight))
    restored = AtomicBackupAndRestore(str(tmp_path / "backup"))
    restored.set_model(model)
    restored.on_train_begin()
    assert model._initial_epoch == 3
    for a, b in zip(model.get_weights(), saved):
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(tmp_path / "backup.tmp")


def test_atomic_backup_never_stores_non_finite_weights(tmp_path):
    model = FlowModel([SelfNormDense()])
    model.build((None, 4))
    backup = AtomicBackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup._current_epoch = 1
    backup._save_model()
    model.trainable_weights[0].assign(np.full((4, 4), np.nan, np.float32))
    backup._current_epoch = 2
    with pytest.warns(RuntimeWarning, match="non-finite weights"):
        backup._save_model()
    assert AtomicBackupAndRestore.saved_epoch(str(tmp_path / "backup")) == 1


class _Spy(keras.callbacks.Callback):
    """Copies of the model's weights at every epoch's start and end and after chosen batches."""

    def __init__(self, batches=()):
        super().__init__()
        self.batches, self.at = set(batches), {}

    def _copy(self):
        return [w.numpy().copy() for w in self.model.weights]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.at[("begin", epoch)] = self._copy()

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) in self.batches:
            self.at[("batch", self.epoch, batch)] = self._copy()

    def on_epoch_end(self, epoch, logs=None):
        self.at[("end", epoch)] = self._copy()
        self.at[("logs", epoch)] = dict(logs)


class _Perturb(keras.callbacks.Callback):
    """A collapse on purpose: at the start of the given epochs, scale every kernel by 5."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = set(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch in self.epochs:
            for w in self.model.trainable_weights:
                w.assign(w * 5.0)


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def _guarded_model(lr=1e-2, warmup=0):
    model = FlowModel([SelfNormDense()])
    model.compile(optimizer=keras.optimizers.Adam(cb.LinearWarmup(lr, warmup)))
    model(_data(2))  # built, so the guard keeps the state before the first step
    return model


def test_guard_rolls_back_a_nan_batch_at_once_and_goes_on():
    x = _data(96)
    poisoned = x.copy()
    poisoned[40] = np.nan  # batch 3 of 6 in every epoch
    model = _guarded_model()
    # λ left alone here so that the restored state equals the saved one exactly
    guard, spy = CollapseGuard(lambda_factor=1), _Spy(batches=[(0, 2)])
    history = model.fit(tf.data.Dataset.from_tensor_slices(poisoned).batch(16), epochs=2,
                        verbose=0, validation_data=(x,), callbacks=[guard, spy]).history
    # restored to the state before the epoch, immediately after the bad batch
    _same(spy.at[("batch", 0, 2)], spy.at[("begin", 0)])
    assert [(e["epoch"], e["batch"], e["kind"]) for e in guard.events] == \
        [(1, 3, "rollback"), (2, 3, "rollback")]
    assert "non-finite training loss at batch 3" in guard.events[0]["reason"]
    assert guard.events[0]["restored_epoch"] == 0 and guard.events[1]["restored_epoch"] == 1
    # the epoch's loss covers the batches after the rollback; training went on at half the rate
    assert all(np.isfinite(history["loss"])) and all(np.isfinite(history["val_nll"]))
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert float(model.optimizer._learning_rate.scale) == 0.25
    np.testing.assert_allclose(guard.events[1]["learning_rate"], 2.5e-3, rtol=1e-6)


def test_guard_rolls_back_a_validation_jump_and_rewrites_the_logs(tmp_path):
    x = _data(64)
    model = _guarded_model(lr=1e-3)
    guard, spy = CollapseGuard(val_jump=0.1), _Spy()
    path = str(tmp_path / "best.keras")
    best = cb.BestValidationTest(x, checkpoint_path=path)
    model.fit(x, batch_size=16, epochs=3, verbose=0, validation_data=(x,),
              callbacks=[_Perturb([1]), guard, best, spy])
    (event,) = guard.events
    assert event["epoch"] == 2 and event["batch"] is None and event["kind"] == "rollback"
    assert "val_nll" in event["reason"] and event["restored_epoch"] == 1
    first = spy.at[("logs", 0)]["val_nll"]
    assert event["measured"]["val_nll"] > 1.1 * first
    # after epoch 2 the model is the state after epoch 1 with λ ×10, and the logs say so
    is_lambda = ["reconstruction_weight" in w.path for w in model.weights]
    after, before = spy.at[("end", 1)], spy.at[("end", 0)]
    _same([v for v, skip in zip(after, is_lambda) if not skip],
          [v for v, skip in zip(before, is_lambda) if not skip])
    assert [float(v) for v, keep in zip(after, is_lambda) if keep] == [10.0]
    assert spy.at[("logs", 1)]["val_nll"] == pytest.approx(first)
    assert best.best_epoch in (0, 2)  # the collapsed epoch never became the best
    assert float(model.optimizer._learning_rate.scale) == 0.5


def test_guard_stops_after_max_rollbacks_with_the_last_good_state():
    x = _data(64)
    model = _guarded_model(lr=1e-3)
    guard, spy = CollapseGuard(val_jump=0.1, max_rollbacks=1, verbose=False), _Spy()
    history = model.fit(x, batch_size=16, epochs=5, verbose=0, validation_data=(x,),
                        callbacks=[_Perturb([1, 2]), guard, spy]).history
    assert [e["kind"] for e in guard.events] == ["rollback", "stop"] and guard.gave_up
    assert len(history["loss"]) == 3 and model.stop_training
    _same([w.numpy() for w in model.weights], spy.at[("end", 0)])


def test_guard_checks_the_inverse_error_when_asked():
    x = _data(64)
    model = _guarded_model(lr=1e-3)
    guard = CollapseGuard(val_jump=None, inverse_error=1e-9, max_rollbacks=0, verbose=False)
    model.fit(x, batch_size=16, epochs=2, verbose=0, validation_data=(x,), callbacks=[guard])
    (event,) = guard.events
    assert event["kind"] == "stop" and "‖RW − I‖_F" in event["reason"]
    assert "guard_inverse_error" in event["reason"]  # says how to loosen it
    assert event["measured"]["inverse_error_max"] > 1e-9


def test_each_rollback_raises_lambda_and_a_stop_keeps_the_last_good_state():
    x = _data(64)
    model = _guarded_model(lr=1e-3)
    (snf,) = model.flow_layers
    guard = CollapseGuard(val_jump=None, inverse_error=1e-9, max_rollbacks=2, verbose=False)
    seen = []

    class Lambda(keras.callbacks.Callback):  # λ while each epoch trains
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(snf.reconstruction_weight.numpy()))

    model.fit(x, batch_size=16, epochs=4, verbose=0, validation_data=(x,),
              callbacks=[Lambda(), guard])
    assert [e["kind"] for e in guard.events] == ["rollback", "rollback", "stop"]
    assert seen == pytest.approx([1.0, 10.0, 100.0])  # ×10 per rollback, compounding
    assert [e["reconstruction_weight_max"] for e in guard.events[:2]] == pytest.approx([10, 100])
    assert "λ ×10" in guard.events[0]["action"]
    assert float(snf.reconstruction_weight.numpy()) == 1.0  # the restored start state


def test_guard_leaves_lambda_alone_with_factor_1():
    x = _data(64)
    model = _guarded_model(lr=1e-3)
    guard = CollapseGuard(val_jump=None, inverse_error=1e-9, max_rollbacks=1,
                             lambda_factor=1, verbose=False)
    model.fit(x, batch_size=16, epochs=2, verbose=0, validation_data=(x,), callbacks=[guard])
    assert guard.events[0]["kind"] == "rollback" and "λ" not in guard.events[0]["action"]
    assert float(model.flow_layers[0].reconstruction_weight.numpy()) == 1.0


def test_guard_arguments_and_schedules_are_checked():
    for kwargs, message in [({"val_jump": 0}, "val_jump"), ({"lr_factor": 1.5}, "lr_factor"),
                            ({"max_rollbacks": -1}, "max_rollbacks"),
                            ({"inverse_error": math.nan}, "inverse_error"),
                            ({"lambda_factor": 0.5}, "lambda_factor must be a number >= 1"),
                            ({"lambda_factor": math.inf}, "lambda_factor")]:
        with pytest.raises(ValueError, match=message):
            CollapseGuard(**kwargs)
    model = FlowModel([SelfNormDense()])
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)))
    with pytest.raises(ValueError, match="no `scale` variable"):
        model.fit(_data(32), batch_size=16, epochs=1, verbose=0, callbacks=[CollapseGuard()])


def test_guard_lowers_a_float_learning_rate():
    x = _data(64)
    poisoned = x.copy()
    poisoned[20] = np.nan
    model = FlowModel([SelfNormDense()])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model(_data(2))
    guard = CollapseGuard(verbose=False)
    model.fit(tf.data.Dataset.from_tensor_slices(poisoned).batch(16), epochs=1, verbose=0,
              callbacks=[guard])
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-3)


def test_linear_warmup_scale_multiplies_and_round_trips():
    schedule = cb.LinearWarmup(1e-3, 10, scale=0.25)
    np.testing.assert_allclose(float(schedule(9)), 2.5e-4, rtol=1e-6)
    schedule.scale.assign(0.5)
    np.testing.assert_allclose(float(schedule(4)), 1e-3 * 0.5 * 0.5, rtol=1e-6)
    assert cb.LinearWarmup.from_config(schedule.get_config()).get_config() == \
        {"learning_rate": 1e-3, "warmup_steps": 10, "scale": 0.5}
    with pytest.raises(ValueError, match="scale"):
        cb.LinearWarmup(1e-3, 10, scale=0.0)
