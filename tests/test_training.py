"""snf_tf.experiments.training: the run folder, --resume after an interruption (exception and
SIGKILL), no clobbering, divergence, determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

from snf_tf.experiments import training

pytestmark = pytest.mark.slow  # run folders, SIGKILL and resume

needs_mnist = pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ.get("TFDS_DATA_DIR", "/nonexistent"), "mnist")),
    reason="real MNIST (../shared/tensorflow_datasets) not available")

TINY = dict(train_examples=300, eval_examples=200)


def _metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        return json.load(f)


def _weights(path):
    """Every array in a Keras ``.weights.h5`` file, by its path in the file."""
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _assert_same_weights(a, b, rtol=1e-6):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 5
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], rtol=rtol, atol=1e-7, err_msg=key)


def _without_timing(metrics):
    return [{k: v for k, v in entry.items() if k not in training.TIMING_KEYS}
            for entry in metrics["epochs"]]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "fc")
    training.run("selfnorm_fc_mnist", out, epochs=2, verbose=0, **TINY)
    return out


@needs_mnist
def test_run_folder_has_every_documented_file_and_key(finished_run):
    names = set(os.listdir(finished_run))
    assert {"config.json", "metrics.json", "best.keras", "samples.png", "samples_exact.png",
            "samples_t0.7.png", "test_digits.png", "curves.png", "tensorboard", "backup"} <= names
    digits = matplotlib.image.imread(os.path.join(finished_run, "test_digits.png"))
    assert digits.shape[:2] == (8 * 28, 8 * 28) and digits.std() > 0.1  # real digits, not blank
    assert any(name.startswith("events.out") for _, _, files in os.walk(
        os.path.join(finished_run, "tensorboard")) for name in files)
    metrics = _metrics(finished_run)
    assert metrics["status"] == "finished" and len(metrics["epochs"]) == 2
    for entry in metrics["epochs"]:
        assert set(training.EPOCH_KEYS) <= set(entry), set(training.EPOCH_KEYS) - set(entry)
        assert np.isclose(entry["val_bpd"], entry["val_nll"] / (784 * np.log(2)))
        assert entry["steps_per_second"] > 0 and entry["epoch_seconds"] >= entry["train_seconds"]
        assert 0 < entry["inverse_error_max"] < 1.0  # R stays close to W⁻¹
    best = metrics["best"]
    assert best["epoch"] == min(metrics["epochs"], key=lambda e: e["val_nll"])["epoch"]
    assert metrics["paper"]["value"] == 947.1
    config = json.load(open(os.path.join(finished_run, "config.json")))
    assert config["config"]["epochs"] == 2 and config["config"]["train_examples"] == 300
    assert "tensorflow" in config["versions"]


@needs_mnist
def test_loss_curve_points_are_window_means_of_the_epoch_loss(finished_run):
    """``loss_curve`` [step, mean over the steps since the previous point]: the window means,
    weighted by their lengths, give back the epoch's mean training loss that Keras logged."""
    entries = _metrics(finished_run)["epochs"]
    steps = 3  # TINY: 300 training images, batch 100
    for entry in entries:
        points = entry["loss_curve"]
        assert [step for step, _ in points] == [(entry["epoch"] - 1) * steps + k
                                                for k in range(1, steps + 1)]
        ends = [(entry["epoch"] - 1) * steps] + [step for step, _ in points]
        total = sum((b - a) * value for (a, b), (_, value) in zip(zip(ends, ends[1:]), points))
        assert np.isclose(total / steps, entry["loss"], rtol=1e-5)
        assert len({round(v, 3) for _, v in points}) > 1  # per-window values, not the running mean


@needs_mnist
def test_best_checkpoint_gives_the_reported_test_nll(finished_run):
    from snf_tf import data, export

    model = export.load_checkpoint(os.path.join(finished_run, "best.keras"))
    test = data.load("mnist", "test", 200, limit=200)
    nll = model.evaluate(test, verbose=0, return_dict=True)["nll"]
    # one fresh dequantization sample per evaluation: equal up to the noise of 200 images
    assert abs(nll - _metrics(finished_run)["best"]["test_nll"]) < 5.0


@needs_mnist
def test_an_existing_run_is_never_overwritten(finished_run):
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        training.prepare("selfnorm_fc_mnist", finished_run, epochs=2, **TINY)
    with pytest.raises(ValueError, match="already finished 2 epochs; pass a larger --epochs"):
        training.prepare("selfnorm_fc_mnist", finished_run, resume=True, epochs=2, **TINY)
    with pytest.raises(ValueError, match="settings learning_rate differ"):
        training.prepare("selfnorm_fc_mnist", finished_run, resume=True, epochs=3,
                         learning_rate=1e-3, **TINY)


class _AtBatch(keras.callbacks.Callback):
    """Calls ``action(model)`` after batch ``batch`` of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch, action, batch=1):
        super().__init__()
        self.epoch, self.action, self.batch, self.current = epoch, action, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            self.action(self.model)


def _interrupt(model):  # like a crash or Ctrl-C
    raise KeyboardInterrupt("simulated interruption")


def _poison(model):  # one weight NaN: the next loss is NaN
    weight = model.trainable_weights[0]
    weight.assign(np.full(weight.shape, np.nan, weight.dtype))


@needs_mnist
def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, finished_run):
    out = str(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        training.run("selfnorm_fc_mnist", out, epochs=2, verbose=0,
                     extra_callbacks=[_AtBatch(1, _interrupt)], **TINY)
    assert _metrics(out)["status"] == "interrupted" and len(_metrics(out)["epochs"]) == 1
    training.run("selfnorm_fc_mnist", out, resume=True, epochs=2, verbose=0, **TINY)
    assert _without_timing(_metrics(out)) == _without_timing(_metrics(finished_run))
    _assert_same_weights(os.path.join(out, "backup", "latest.weights.h5"),
                         os.path.join(finished_run, "backup", "latest.weights.h5"))


@needs_mnist
def test_a_finished_run_continues_for_more_epochs(tmp_path, finished_run):
    out = str(tmp_path / "longer")
    training.run("selfnorm_fc_mnist", out, epochs=1, verbose=0, **TINY)
    # as written by a version without the adam_epsilon setting: resumes with Keras's default
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    del saved["config"]["adam_epsilon"]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(saved, f)
    training.run("selfnorm_fc_mnist", out, resume=True, epochs=2, verbose=0, **TINY)
    assert _without_timing(_metrics(out)) == _without_timing(_metrics(finished_run))
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["config"]["adam_epsilon"] == 1e-7


@needs_mnist
def test_adam_epsilon_reaches_the_optimizer(tmp_path):
    run = training.prepare("selfnorm_fc_mnist", str(tmp_path / "eps"), epochs=1,
                           adam_epsilon=1e-8, **TINY)
    run.train(verbose=0)
    assert run.model.optimizer.epsilon == 1e-8


@needs_mnist
def test_same_seed_same_metrics(tmp_path, finished_run):
    """Determinism on CPU: everything but the timings is identical (see README for GPUs)."""
    out = str(tmp_path / "again")
    training.run("selfnorm_fc_mnist", out, epochs=2, verbose=0, **TINY)
    assert _without_timing(_metrics(out)) == _without_timing(_metrics(finished_run))
    other = str(tmp_path / "seed1")
    training.run("selfnorm_fc_mnist", other, epochs=1, seed=1, verbose=0, **TINY)
    assert _metrics(other)["epochs"][0]["val_nll"] != _metrics(out)["epochs"][0]["val_nll"]


def _poisoned_in_epoch(dataset, epoch, steps):
    """``dataset`` with the first batch of ``epoch`` (1-based) all NaN: a bad batch from the
    pipeline, as a corrupt record or a broken preprocessing step would give."""
    batches = [b.numpy() for b in dataset]
    seen = {"epochs": 0}

    def generate():
        seen["epochs"] += 1
        for i, batch in enumerate(batches):
            bad = seen["epochs"] == epoch and i == 0
            yield np.full(batch.shape, np.nan, "float32") if bad else batch.astype("float32")

    spec = tf.TensorSpec((None,) + batches[0].shape[1:], tf.float32)
    return tf.data.Dataset.from_generator(generate, output_signature=spec).apply(
        tf.data.experimental.assert_cardinality(steps))


@needs_mnist
def test_without_guard_a_nan_batch_stops_the_run_and_keeps_the_last_good_state(tmp_path):
    out = str(tmp_path / "nan-batch")
    run = training.prepare("selfnorm_fc_mnist", out, epochs=3, guard=False, **TINY)
    run.splits["train"] = _poisoned_in_epoch(run.splits["train"], 2, run.steps)
    with pytest.warns(RuntimeWarning, match="non-finite weights"):
        with pytest.raises(training.TrainingDiverged, match="non-finite in epoch 2"):
            run.train(verbose=0)
    metrics = _metrics(out)
    assert metrics["status"] == "diverged" and metrics["best"]["epoch"] == 1
    assert np.isfinite(metrics["epochs"][0]["val_nll"])
    backup = _weights(os.path.join(out, "backup", "latest.weights.h5"))
    assert all(np.all(np.isfinite(a)) for a in backup.values()
               if np.issubdtype(np.asarray(a).dtype, np.floating))
    from snf_tf import export

    best = export.load_checkpoint(os.path.join(out, "best.keras"))
    assert all(np.all(np.isfinite(w)) for w in best.get_weights())
    # the run resumes from the last good epoch once the data is fixed
    training.run("selfnorm_fc_mnist", out, resume=True, epochs=3, guard=False, verbose=0,
                 **TINY)
    assert _metrics(out)["status"] == "finished"


@needs_mnist
def test_without_guard_divergence_stops_and_keeps_the_last_good_state(tmp_path):
    out = str(tmp_path / "diverged")
    with pytest.warns(RuntimeWarning, match="non-finite weights"):
        with pytest.raises(training.TrainingDiverged, match="non-finite in epoch 2"):
            training.run("selfnorm_fc_mnist", out, epochs=3, verbose=0, guard=False,
                         extra_callbacks=[_AtBatch(1, _poison, batch=0)], **TINY)
    metrics = _metrics(out)
    assert metrics["status"] == "diverged" and len(metrics["epochs"]) == 2
    assert metrics["best"]["epoch"] == 1
    for path in (os.path.join(out, "backup", "latest.weights.h5"),):
        assert all(np.all(np.isfinite(a)) for a in _weights(path).values()
                   if np.issubdtype(np.asarray(a).dtype, np.floating))
    from snf_tf import export

    best = export.load_checkpoint(os.path.join(out, "best.keras"))
    assert all(np.all(np.isfinite(w)) for w in best.get_weights())


def _blow_up(model):  # an injected collapse: every weight ×5 mid-run
    for weight in model.trainable_weights:
        weight.assign(weight * 5.0)


@needs_mnist
def test_guard_recovers_from_a_nan_batch_and_the_run_finishes(tmp_path, capsys):
    out = str(tmp_path / "guarded-nan")
    run = training.prepare("selfnorm_fc_mnist", out, epochs=3, warmup_epochs=0, **TINY)
    run.splits["train"] = _poisoned_in_epoch(run.splits["train"], 2, run.steps)
    metrics = run.train(verbose=0)
    assert metrics["status"] == "finished" and len(metrics["epochs"]) == 3
    (event,) = metrics["epochs"][1]["rollbacks"]
    assert event["kind"] == "rollback" and event["batch"] == 1 and event["restored_epoch"] == 1
    assert "non-finite training loss at batch 1" in event["reason"]
    epoch_2 = metrics["epochs"][1]
    assert np.isfinite(epoch_2["loss"]) and np.isfinite(epoch_2["val_nll"])
    assert all(np.isfinite(v) for _, v in epoch_2["loss_curve"])  # means after the rollback
    lr = [e["learning_rate"] for e in metrics["epochs"]]
    assert lr[1] == pytest.approx(lr[0] / 2) and lr[2] == pytest.approx(lr[0] / 2)
    assert "CollapseGuard (epoch 2, batch 1): non-finite training loss" in capsys.readouterr().out


@needs_mnist
def test_guard_rolls_back_an_injected_collapse_and_resume_keeps_the_lower_rate(tmp_path):
    out = str(tmp_path / "guarded")
    training.run("selfnorm_fc_mnist", out, epochs=3, verbose=0, warmup_epochs=0,
                 extra_callbacks=[_AtBatch(1, _blow_up, batch=0)], **TINY)
    metrics = _metrics(out)
    first, second, third = metrics["epochs"]
    (event,) = second["rollbacks"]
    assert event["kind"] == "rollback" and "val_nll" in event["reason"]
    assert event["measured"]["val_nll"] > 1.1 * first["val_nll"]
    assert second["val_nll"] == pytest.approx(first["val_nll"])  # the restored state's
    assert metrics["status"] == "finished" and metrics["best"]["epoch"] in (1, 3)
    assert third["learning_rate"] == pytest.approx(first["learning_rate"] / 2)
    # the backup holds the state the run went on from; --resume keeps the lowered rate
    training.run("selfnorm_fc_mnist", out, resume=True, epochs=4, verbose=0, warmup_epochs=0,
                 **TINY)
    fourth = _metrics(out)["epochs"][3]
    assert fourth["learning_rate"] == pytest.approx(first["learning_rate"] / 2)
    assert "rollbacks" not in fourth


@needs_mnist
def test_guard_gives_up_after_max_rollbacks_and_the_run_resumes(tmp_path):
    out = str(tmp_path / "collapsed")
    with pytest.raises(training.TrainingDiverged, match="collapsed again after 0 rollback"):
        training.run("selfnorm_fc_mnist", out, epochs=3, verbose=0, guard_max_rollbacks=0,
                     extra_callbacks=[_AtBatch(1, _blow_up, batch=0)], **TINY)
    metrics = _metrics(out)
    assert metrics["status"] == "collapsed" and len(metrics["epochs"]) == 2
    assert metrics["epochs"][1]["rollbacks"][0]["kind"] == "stop"
    assert metrics["best"]["epoch"] == 1
    training.run("selfnorm_fc_mnist", out, resume=True, epochs=3, verbose=0,
                 guard_max_rollbacks=0, **TINY)
    assert _metrics(out)["status"] == "finished"


def _cli(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "snf_tf", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@needs_mnist
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    args = ["train", "selfnorm_fc_mnist", "--epochs", "3", "--train-examples", "2000",
            "--eval-examples", "200", "--quiet"]
    reference = _cli(args + ["--out", str(tmp_path / "reference")])
    killed_dir = tmp_path / "killed"
    victim = _cli(args + ["--out", str(killed_dir)])
    metadata = killed_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if metadata.exists() and json.loads(metadata.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert victim.poll() is None, victim.communicate()[1][-2000:]
    time.sleep(0.5)  # into epoch 2
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert _metrics(killed_dir)["status"] == "running"  # as the killed process left it
    assert training.run_status(str(killed_dir)) == "interrupted"  # its lock went with it
    resumed = _cli(args + ["--out", str(killed_dir), "--resume"])
    for process in (resumed, reference):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    assert _without_timing(_metrics(killed_dir)) == _without_timing(
        _metrics(tmp_path / "reference"))
    _assert_same_weights(killed_dir / "backup" / "latest.weights.h5",
                         tmp_path / "reference" / "backup" / "latest.weights.h5")


def _copy_run(source, target):
    import shutil

    shutil.copytree(source, target)
    return str(target)


@needs_mnist
def test_a_run_killed_after_its_last_epoch_is_completed_by_resume(tmp_path, finished_run):
    """SIGKILL after the last epoch's backup, while the final plots and grids are drawn: the
    folder says "running" (read as "interrupted": no process holds its lock) and has no final
    images; the same command with --resume writes them and trains nothing more."""
    out = _copy_run(finished_run, tmp_path / "killed")
    metrics = _metrics(out)
    metrics["status"] = "running"
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    for name in ("curves.png", "samples.png", "samples_exact.png", "samples_t0.7.png",
                 "test_digits.png"):
        os.remove(os.path.join(out, name))
    assert training.run_status(out) == "interrupted"
    weights = _weights(os.path.join(out, "backup", "latest.weights.h5"))
    prepared = training.prepare("selfnorm_fc_mnist", out, resume=True, **TINY)
    assert prepared.completes
    prepared.train(verbose=0)
    assert training.run_status(out) == "finished"
    assert _without_timing(_metrics(out)) == _without_timing(_metrics(finished_run))
    assert {"curves.png", "samples.png", "samples_exact.png", "samples_t0.7.png",
            "test_digits.png"} <= set(os.listdir(out))
    after = _weights(os.path.join(out, "backup", "latest.weights.h5"))
    for key in weights:  # nothing was trained
        np.testing.assert_array_equal(weights[key], after[key], err_msg=key)
    with pytest.raises(ValueError, match="already finished 2 epochs"):
        training.prepare("selfnorm_fc_mnist", out, resume=True, **TINY)


@needs_mnist
def test_damaged_run_files_are_one_line_naming_the_file_and_what_to_do(tmp_path, finished_run):
    out = _copy_run(finished_run, tmp_path / "damaged")
    weights = os.path.join(out, "backup", "latest.weights.h5")
    with open(weights, "r+b") as f:  # what a power loss before the data reached the disk leaves
        f.truncate(os.path.getsize(weights) // 3)
    with pytest.raises(ValueError) as caught:
        training.prepare("selfnorm_fc_mnist", out, resume=True, epochs=3, **TINY)
    message = str(caught.value)
    assert "\n" not in message and weights in message and "is damaged" in message
    assert "the backup of epoch 1 in" in message and "backup.old is intact" in message
    import shutil

    shutil.rmtree(os.path.join(out, "backup.old"))
    with pytest.raises(ValueError, match="no intact backup is left"):
        training.prepare("selfnorm_fc_mnist", out, resume=True, epochs=3, **TINY)

    out = _copy_run(finished_run, tmp_path / "metadata")
    open(os.path.join(out, "backup", "training_metadata.json"), "w").close()
    with pytest.raises(ValueError, match=r"training_metadata.json is damaged \(it is empty\)"):
        training.prepare("selfnorm_fc_mnist", out, resume=True, epochs=3, **TINY)
    # offered backup: moving it into place resumes
    shutil.rmtree(os.path.join(out, "backup"))
    os.rename(os.path.join(out, "backup.old"), os.path.join(out, "backup"))
    assert training.prepare("selfnorm_fc_mnist", out, resume=True, epochs=3,
                            **TINY).history[-1]["epoch"] == 1

    out = _copy_run(finished_run, tmp_path / "metrics")
    open(os.path.join(out, "metrics.json"), "w").close()
    with pytest.raises(ValueError, match=r"metrics.json is damaged: it is empty; restore it, or "
                       "delete it"):
        training.prepare("selfnorm_fc_mnist", out, resume=True, epochs=3, **TINY)
    os.remove(os.path.join(out, "metrics.json"))  # as the message offers
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write('{"config": ')
    with pytest.raises(ValueError, match="config.json is damaged: it is not valid JSON"):
        training.prepare("selfnorm_fc_mnist", out, resume=True, epochs=3, **TINY)


@needs_mnist
def test_killed_writes_are_cleaned_and_every_file_has_one_mode(tmp_path, finished_run):
    out = _copy_run(finished_run, tmp_path / "leftovers")
    leftovers = ["tmpab12cd.keras", ".best.keras.x1y2.partial.keras", ".samples.png.q.partial",
                 "metrics.json.tmp"]
    for name in leftovers:
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"half")
    training.run("selfnorm_fc_mnist", out, resume=True, epochs=3, verbose=0, **TINY)
    assert not set(leftovers) & set(os.listdir(out))
    mask = os.umask(0)
    os.umask(mask)
    modes = {name: os.stat(os.path.join(out, name)).st_mode & 0o777
             for name in os.listdir(out) if os.path.isfile(os.path.join(out, name))}
    assert set(modes.values()) == {0o666 & ~mask}, modes  # best.keras was 0600 (mkstemp)


def test_png_and_json_writes_are_atomic(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) leaves the earlier file, not a 0-byte one."""
    import matplotlib.pyplot as plt

    from snf_tf import _files, images

    path = tmp_path / "samples.png"
    images.save_png(str(path), np.zeros((8, 8, 1), np.uint8))
    before = path.read_bytes()

    def full_disk(target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plt, "imsave", full_disk)
    with pytest.raises(OSError, match="No space left") as caught:
        images.save_png(str(path), np.full((8, 8, 1), 255, np.uint8))
    assert caught.value.filename == str(path)  # named, for the one-line report
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["samples.png"]

    _files.write_json(str(tmp_path / "m.json"), {"a": 1})
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError):
        _files.write_json(str(tmp_path / "m.json"), {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json", "samples.png"]


def test_backups_reach_the_disk_before_they_are_renamed_into_place(tmp_path, monkeypatch):
    from snf_tf.experiments import run_folder
    from snf_tf.layers import SelfNormDense
    from snf_tf.model import FlowModel

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(
        f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))),
                                                     real_replace(a, b))[1])
    model = FlowModel([SelfNormDense()])
    model.build((None, 4))
    backup = run_folder.AtomicBackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup._current_epoch = 1
    backup._save_model()
    tmp = str(tmp_path / "backup.tmp")
    synced = [path for kind, path in events if kind == "fsync"]
    moved = events.index(("replace", tmp))
    assert {os.path.join(tmp, "latest.weights.h5"), os.path.join(tmp, "training_metadata.json"),
            tmp} <= {path for kind, path in events[:moved] if kind == "fsync"}, synced
