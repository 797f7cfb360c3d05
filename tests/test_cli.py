"""The snf-tf command: export and sample (subprocess and in-process), one-line errors, exit 2."""

import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from snf_tf import architectures, experiments
from snf_tf.experiments import cli, training

pytestmark = pytest.mark.slow  # CLI runs: one training epoch of every experiment, resume, export

needs_mnist = pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ.get("TFDS_DATA_DIR", "/nonexistent"), "mnist")),
    reason="real MNIST (../shared/tensorflow_datasets) not available")

_TF_NOISE = ("WARNING: All log messages before absl", "cudart_stub", "I0000", "W0000", "E0000")


def _our_lines(stderr):
    return [line for line in stderr.splitlines()
            if line.strip() and not any(noise in line for noise in _TF_NOISE)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = architectures.fc_flow(seed=1)
    model.log_prob(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype("uint8"))
    path = tmp_path_factory.mktemp("ckpt") / "fc.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def exported_dir(checkpoint, tmp_path_factory):
    """``python -m snf_tf export CKPT OUT`` in a subprocess."""
    out = str(tmp_path_factory.mktemp("export") / "fc_saved_model")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "snf_tf", "export", checkpoint, out],
                            capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported" in result.stdout
    return out


def test_export_then_sample_from_export_and_checkpoint(exported_dir, checkpoint, tmp_path):
    assert os.path.isfile(os.path.join(exported_dir, "saved_model.pb"))
    from_export, from_ckpt = str(tmp_path / "a" / "grid.png"), str(tmp_path / "b.png")
    assert cli.main(["sample", exported_dir, "-n", "6", "-o", from_export, "--seed", "4"]) == 0
    assert cli.main(["sample", checkpoint, "-n", "6", "-o", from_ckpt, "--seed", "4"]) == 0
    a, b = matplotlib.image.imread(from_export), matplotlib.image.imread(from_ckpt)
    assert a.shape[:2] == (2 * 8, 3 * 8)  # 6 samples of 8×8: 3 columns (⌈√6⌉), 2 rows
    # same stateless seeds: the same samples up to floor() at pixel boundaries
    assert np.mean(np.abs(a - b) > 1.5 / 255) < 0.02


@pytest.mark.parametrize("argv, message", [
    (["export", "missing.keras", "out"], "checkpoint not found"),
    (["sample", "missing_dir", "-n", "4"], "model not found"),
    (["sample", "{ckpt}", "-n", "0"], "positive integer"),
    (["sample", "{ckpt}", "-n", "-3"], "positive integer"),
    (["sample", "{ckpt}", "-n", "x"], "positive integer"),
    (["sample", "{ckpt}", "-o", "{file}/grid.png"], "not a directory"),
    (["sample", "{ckpt}", "-o", "{tmp}"], "is a directory"),
    (["export", "{ckpt}", "{file}/out"], "not a directory"),
    (["export", "{ckpt}", "{nonempty}"], "--overwrite"),
    (["export", "{file}", "{tmp}/out"], "not a .keras checkpoint"),
    (["sample", "{tmp}", "-n", "2", "-o", "{tmp}/x.png"], "no SavedModel"),
    ([], "a command is required"),
    (["train"], "required: experiment"),
    (["fly"], "invalid choice"),
    (["train", "glow_svhn", "--out", "{tmp}/r"], "unknown experiment 'glow_svhn'"),
    (["train", "selfnorm_fc_mnist", "--epochs", "0"], "positive integer"),
    (["train", "selfnorm_fc_mnist", "--set", "hidden_channels=8", "--out", "{tmp}/r"],
     "unknown setting 'hidden_channels'"),
    (["train", "selfnorm_fc_mnist", "--set", "epochs", "--out", "{tmp}/r"], "key=value"),
    (["train", "selfnorm_fc_mnist", "--set", "learning_rate=-1", "--out", "{tmp}/r"],
     "learning_rate must be a positive number"),
    (["train", "selfnorm_fc_mnist", "--out", "{file}/run"], "not a directory"),
    (["train", "selfnorm_fc_mnist", "--out", "{nonempty}/f"], "exists and is not a directory"),
    (["train", "selfnorm_fc_mnist", "--data-dir", "{tmp}/no_data", "--out", "{tmp}/r"],
     "was not found"),
    (["evaluate", "missing.keras"], "checkpoint not found"),
    (["evaluate", "{ckpt}"], "pass --dataset"),
    (["evaluate", "{ckpt}", "--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["evaluate", "{ckpt}", "--dataset", "cifar10", "--data-dir", "{tmp}"], "was not found"),
    (["bench", "everything"], "invalid choice"),
    (["train", "selfnorm_fc_mnist", "--time-budget", "0s"], "finite time > 0"),
    (["train", "selfnorm_fc_mnist", "--time-budget", "soon"], "90s, 30m, 2h"),
    (["train", "selfnorm_fc_mnist", "--eval-every-steps", "-3"], "positive integer"),
    (["train", "selfnorm_fc_mnist", "--set", "time_budget=-5", "--out", "{tmp}/r"],
     "time_budget must be a positive number"),
    (["train", "selfnorm_fc_mnist", "--set", "eval_every_steps=1.5", "--out", "{tmp}/r"],
     "eval_every_steps must be a positive integer"),
])
def test_bad_input_gives_one_line_and_exit_2(argv, message, checkpoint, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "f").write_text("x")
    names = dict(ckpt=checkpoint, file=str(tmp_path / "file.txt"), tmp=str(tmp_path),
                 nonempty=str(tmp_path / "nonempty"))
    assert cli.main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("snf-tf: error:") and message in err, err


def test_bad_input_in_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snf_tf", "sample", str(tmp_path / "nothing"), "-n", "4"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=120)
    assert result.returncode == 2
    lines = _our_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("snf-tf: error: model not found"), lines


def test_parser_has_a_subcommand_per_registered_command():
    parser = cli.build_parser()
    assert {"export", "sample", "list", "train", "evaluate", "bench"} <= set(cli.COMMANDS)
    help_text = parser.format_help()
    assert "export" in help_text and "sample" in help_text


def test_list_names_every_experiment_with_its_paper_number(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in experiments.names():
        assert name in out
    assert "947.1" in out and "3.37" in out
    assert cli.main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == experiments.names()


# -- every experiment: one tiny training run through the CLI -------------------------------------
_SMALL_GLOW = ["--set", "steps_per_block=2", "--set", "hidden_channels=16"]
_SMOKE = {
    "cifar": ["--batch-size", "10"] + _SMALL_GLOW,
    "imagenet": ["--batch-size", "10"] + _SMALL_GLOW,
    "glow_mnist": ["--batch-size", "50"] + _SMALL_GLOW,
    "glow_fashion_mnist": ["--batch-size", "50"] + _SMALL_GLOW,
    "snf_timescaling": ["--set", "dimension=64", "--train-examples", "256"],
    "cnn": ["--set", "convs_per_block=1"],  # 3 convs: the code path of 9 at a third of the cost
}


def _smoke_args(name):
    for key, extra in _SMOKE.items():
        if key in name and not name.startswith("geco"):
            return extra
    return []


def _mock_images(self, split, **kwargs):
    images = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.zeros(30, np.int64)})


@needs_mnist
@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_trains_one_epoch_through_the_cli(name, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", name, "--epochs", "1", "--train-examples", "200", "--eval-examples", "100",
            "--out", str(out), "--quiet", "--set", "jit_compile=false"] + _smoke_args(name)
    if experiments.get(name).dataset in ("cifar10", "downsampled_imagenet/32x32"):
        with tfds.testing.mock_data(num_examples=30, as_dataset_fn=_mock_images):
            status = cli.main(argv)
    else:
        status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    assert f"{name}: 1 epoch in " in captured.out
    assert "Test NLL at the best validation epoch (1): " in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and len(metrics["epochs"]) == 1
    entry = metrics["epochs"][0]
    assert set(training.EPOCH_KEYS) - {"recon"} <= set(entry)
    assert np.isfinite(entry["val_nll"]) and np.isfinite(entry["test_nll"])
    assert (out / "best.keras").is_file() and (out / "curves.png").is_file()
    if name != "snf_timescaling":
        assert (out / "samples.png").is_file()
    if experiments.get(name).geco_rate:  # λ per epoch; GECO only lets it grow from λ₀ = 1
        weights = entry["reconstruction_weight"]
        assert 1.0 < weights["min"] <= weights["median"] <= weights["max"]


@needs_mnist
def test_train_resume_then_evaluate(tmp_path, capsys):
    out = tmp_path / "fc"
    argv = ["train", "selfnorm_fc_mnist", "--train-examples", "200", "--eval-examples", "100",
            "--out", str(out), "--quiet"]
    assert cli.main(argv + ["--epochs", "1", "--no-guard"]) == 0
    first = json.loads((out / "metrics.json").read_text())["epochs"][0]
    assert cli.main(argv + ["--epochs", "1"]) == 2  # never overwrites a run
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main(argv + ["--epochs", "2", "--resume"]) == 0
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[0] == first
    # --resume keeps the run's own settings, --no-guard among them
    assert json.loads((out / "config.json").read_text())["config"]["guard"] is False
    capsys.readouterr()
    assert cli.main(["evaluate", str(out / "best.keras"), "--examples", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "mnist" and result["split"] == "test"
    assert abs(result["nll"] - epochs[-1]["test_nll"]) < 10.0  # one dequantization sample each


_TINY_FC = ["train", "selfnorm_fc_mnist", "--train-examples", "100", "--eval-examples", "100",
            "--quiet"]


@pytest.fixture(scope="module")
def one_epoch_fc_run(tmp_path_factory):
    """A finished 1-epoch run folder of selfnorm_fc_mnist, trained through the CLI."""
    out = tmp_path_factory.mktemp("resume") / "fc"
    assert cli.main(_TINY_FC + ["--out", str(out), "--epochs", "1"]) == 0
    return out


@needs_mnist
@pytest.mark.parametrize("change, setting", [
    pytest.param(["--seed", "1"], "seed", id="seed"),
    pytest.param(["--set", "learning_rate=0.001"], "learning_rate", id="set-learning_rate"),
    pytest.param(["--set", "gradient=exact"], "gradient", id="set-model-kwarg"),
])
def test_resume_with_a_changed_seed_or_setting_exits_2_and_leaves_the_run(
        change, setting, one_epoch_fc_run, tmp_path, capsys):
    out = tmp_path / "fc"
    shutil.copytree(one_epoch_fc_run, out)  # a private copy: one test's failure stays its own
    capsys.readouterr()
    files = {name: (out / name).read_bytes() for name in ("metrics.json", "config.json",
                                                          "best.keras")}
    argv = _TINY_FC + ["--out", str(out), "--epochs", "2", "--resume"] + change
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"snf-tf: error: --resume: the settings {setting} differ"), err
    for name, content in files.items():  # nothing was trained or rewritten
        assert (out / name).read_bytes() == content, name


@needs_mnist
def test_resume_takes_the_runs_own_settings(one_epoch_fc_run, tmp_path, capsys):
    """``--resume --epochs N`` alone continues a run started with ``--set`` options."""
    out = tmp_path / "fc"
    assert cli.main(["train", "selfnorm_fc_mnist", "--train-examples", "100", "--eval-examples",
                     "100", "--quiet", "--set", "learning_rate=5e-4", "--out", str(out),
                     "--epochs", "1"]) == 0
    assert cli.main(["train", "selfnorm_fc_mnist", "--out", str(out), "--resume", "--epochs",
                     "2", "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["learning_rate"] == 5e-4 and saved["train_examples"] == 100
    assert saved["epochs"] == 2
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 2
    assert cli.main(["train", "selfnorm_cnn_mnist", "--out", str(out), "--resume", "--epochs",
                     "3"]) == 2  # another experiment's run folder
    assert "was trained as 'selfnorm_fc_mnist'" in capsys.readouterr().err


@needs_mnist
def test_a_run_prints_its_epochs_and_a_summary_whose_commands_work(tmp_path, capsys,
                                                                    monkeypatch):
    """One plain line per epoch (exact val/test NLL in nats and bits/dim), then where each output
    is and the next commands — each of which is run here, as printed."""
    import re
    import shlex

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["train", "selfnorm_fc_mnist", "--train-examples", "100", "--eval-examples",
                     "100", "--out", "run", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    entries = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    lines = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert lines == [training.epoch_line(entry, 2) for entry in entries]
    for line, entry in zip(lines, entries):
        assert f"val {entry['val_nll']:.2f} nats = {entry['val_bpd']:.4f} bits/dim" in line
        assert f"test {entry['test_nll']:.2f} nats" in line and "‖RW − I‖_F" in line
    summary = printed[printed.index("selfnorm_fc_mnist: 2 epochs in"):]
    best = json.loads((tmp_path / "run" / "metrics.json").read_text())["best"]
    assert f"{best['test_nll']:.2f} nats = {best['test_bpd']:.4f} bits/dim" in summary
    listed = re.findall(r"^  (\S+) {2,}\S", summary.split("Next:")[0], re.M)
    assert {"best.keras", "metrics.json", "curves.png", "samples.png", "samples_t0.7.png",
            "test_digits.png", "tensorboard/"} <= set(listed)
    for name in listed:
        assert (tmp_path / "run" / name).exists(), name
    commands = [shlex.split(line.split("#")[0]) for line in summary.split("Next:")[1].splitlines()
                if line.strip()]
    assert [c[:2] for c in commands] == [["snf-tf", "evaluate"], ["snf-tf", "sample"],
                                         ["snf-tf", "export"], ["snf-tf", "train"],
                                         ["tensorboard", "--logdir"]]
    assert os.path.isdir(commands[-1][2])
    for command in commands[:-1]:
        assert cli.main(command[1:]) == 0, command
    assert (tmp_path / "samples.png").is_file()
    assert (tmp_path / "run" / "savedmodel" / "saved_model.pb").is_file()
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]) == 12


def test_sample_at_a_temperature(checkpoint, exported_dir, tmp_path, capsys):
    import keras

    from snf_tf.images import image_grid, save_png

    path = tmp_path / "cold.png"
    assert cli.main(["sample", checkpoint, "-n", "4", "-o", str(path), "--seed", "3",
                     "--temperature", "0.5"]) == 0
    model = keras.models.load_model(checkpoint)
    save_png(str(tmp_path / "expected.png"),
             image_grid(model.sample(4, temperature=0.5, seed=3).numpy()))
    np.testing.assert_array_equal(matplotlib.image.imread(path),
                                  matplotlib.image.imread(tmp_path / "expected.png"))
    warm = tmp_path / "warm.png"
    assert cli.main(["sample", checkpoint, "-n", "4", "-o", str(warm), "--seed", "3"]) == 0
    assert not np.array_equal(matplotlib.image.imread(path), matplotlib.image.imread(warm))
    capsys.readouterr()
    assert cli.main(["sample", exported_dir, "-o", str(tmp_path / "x.png"), "--temperature",
                     "0.5"]) == 2
    assert "temperature 1 only" in capsys.readouterr().err
    for bad in ("-1", "0", "nan", "inf", "warm"):  # the words of FlowModel.sample
        assert cli.main(["sample", checkpoint, "--temperature", bad]) == 2
        assert f"temperature must be a finite number > 0, got {bad}" in capsys.readouterr().err


def test_the_cli_leaves_out_tensorflows_import_noise_and_nothing_else(tmp_path):
    """A stand-in ``tensorflow`` module writes TF 2.21's import-time C++ lines and one other line
    to file descriptor 2: only the other line reaches stderr."""
    (tmp_path / "tensorflow.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. x\\n')\n"
        "os.write(2, b'I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your "
        "machine, GPU will not be used.\\n')\n"
        "os.write(2, b'E0000 something that matters\\n')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['snf-tf']  # as the command\n"
         "from snf_tf import _environment; _environment.import_tensorflow_quietly(); "
         "print('tensorflow' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root])))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert result.stderr == "E0000 something that matters\n"


@needs_mnist
def test_evaluate_rejects_a_dataset_of_another_shape(checkpoint, capsys):
    assert cli.main(["evaluate", checkpoint, "--dataset", "mnist", "--examples", "10"]) == 2
    assert "(8, 8, 1)" in capsys.readouterr().err


@needs_mnist
def test_class_conditional_run_sample_by_label_evaluate_and_export(tmp_path, capsys):
    out = tmp_path / "cond"
    argv = ["train", "conditional_glow_mnist", "--epochs", "1", "--train-examples", "200",
            "--eval-examples", "100", "--out", str(out), "--quiet"] + _SMALL_GLOW
    assert cli.main(argv) == 0, capsys.readouterr().err[-3000:]
    printed = capsys.readouterr().out
    assert "one row per class" in printed and "--label 3" in printed
    grid = matplotlib.image.imread(out / "samples.png")
    assert grid.shape[:2] == (10 * 28, 8 * 28)  # 10 classes × 8 samples
    ckpt = str(out / "best.keras")
    assert cli.main(["sample", ckpt, "-n", "6", "--label", "3", "-o",
                     str(tmp_path / "three.png")]) == 0
    assert "6 samples of class 3" in capsys.readouterr().out
    assert cli.main(["sample", ckpt, "-n", "20", "--label", "all", "-o",
                     str(tmp_path / "all.png")]) == 0
    assert matplotlib.image.imread(tmp_path / "all.png").shape[:2] == (10 * 28, 2 * 28)
    capsys.readouterr()
    for label, message in [("12", "out of range"), ("x", "class number or 'all'"),
                           (None, "pass --label K")]:
        extra = [] if label is None else ["--label", label]
        assert cli.main(["sample", ckpt, "-o", str(tmp_path / "bad.png")] + extra) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["evaluate", ckpt, "--examples", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.isfinite(result["nll"])
    assert abs(result["nll"] - json.loads((out / "metrics.json").read_text())["best"]
               ["test_nll"]) < 10.0
    saved = str(tmp_path / "sm")
    assert cli.main(["export", ckpt, saved]) == 0
    assert cli.main(["sample", saved, "-n", "4", "--label", "5", "-o",
                     str(tmp_path / "sm.png")]) == 0
    capsys.readouterr()
    assert cli.main(["sample", saved, "-n", "4", "-o", str(tmp_path / "sm.png")]) == 2
    assert "is class-conditional" in capsys.readouterr().err
    assert cli.main(["sample", saved, "-n", "4", "--label", "12", "-o",
                     str(tmp_path / "sm.png")]) == 2  # the served graph's words, in one line
    err = capsys.readouterr().err
    assert "--label 12: FlowModel: a label is out of range" in err, err
    assert "Graph execution error" not in err and len(err.strip().splitlines()) == 1


def test_label_for_an_unconditional_model_is_refused(checkpoint, tmp_path, capsys):
    assert cli.main(["sample", checkpoint, "--label", "3", "-o", str(tmp_path / "x.png")]) == 2
    assert "not class-conditional" in capsys.readouterr().err


def _train_overrides(*argv):
    args = cli.build_parser().parse_args(["train", "small_selfnorm_glow_mnist", *argv])
    return cli.TrainCommand.overrides(args)


def test_set_of_a_setting_that_also_has_a_flag_is_kept():
    """``--set seed=1`` (or epochs, batch_size, train/eval_examples, guard) trains with that
    value, not with the flag's default."""
    overrides = _train_overrides("--set", "seed=1", "--set", "epochs=2", "--set", "batch_size=50",
                                 "--set", "train_examples=300", "--set", "guard=false")
    assert overrides == {"seed": 1, "epochs": 2, "batch_size": 50, "train_examples": 300,
                         "guard": False}
    cfg = experiments.config("small_selfnorm_glow_mnist", **overrides)
    assert (cfg["seed"], cfg["epochs"], cfg["batch_size"]) == (1, 2, 50)
    assert _train_overrides("--seed", "3", "--no-guard") == {"seed": 3, "guard": False}
    assert _train_overrides("--seed", "3", "--set", "seed=3") == {"seed": 3}


@pytest.mark.parametrize("argv,message", [
    (("--seed", "3", "--set", "seed=4"), r"--seed 3 and --set seed=4 disagree"),
    (("--no-guard", "--set", "guard=true"), r"--no-guard and --set guard=true disagree"),
    (("--epochs", "2", "--set", "epochs=3"), r"--epochs 2 and --set epochs=3 disagree"),
])
def test_a_flag_and_a_set_that_disagree_are_one_error(argv, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=message):
        _train_overrides(*argv)
    status = cli.main(["train", "small_selfnorm_glow_mnist", "--out", str(tmp_path / "r"), *argv])
    assert status == 2 and "disagree" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")
