"""What a user runs, run the way they run it: the ``snf-tf`` console script and fresh Python
interpreters in a clean environment (no conftest imports, no warm process), every command a run
prints under "Next:", checkpoints loaded after every import order, bad settings, a second writer,
Ctrl-C and a full disk."""

import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # console scripts and fresh interpreters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the venv's console scripts: snf-tf, tensorboard
TFDS = os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.dirname(ROOT), "shared",
                                                         "tensorflow_datasets")
needs_mnist = pytest.mark.skipif(not os.path.isdir(os.path.join(TFDS, "mnist")),
                                 reason="real MNIST (../shared/tensorflow_datasets) not available")
TINY = ["--train-examples", "200", "--eval-examples", "200"]
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "checkpoints")


def clean_env(home, **extra):
    """What a fresh shell has: PATH with the venv's scripts, HOME, the data folder; nothing
    from this process (no TF_CPP_MIN_LOG_LEVEL, no PYTHONPATH)."""
    env = {"PATH": BIN + os.pathsep + "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
           "LANG": "C.UTF-8", "TFDS_DATA_DIR": TFDS}
    env.update(extra)
    return env


def run(args, cwd, timeout=600, **kwargs):
    return subprocess.run(args, cwd=cwd, env=clean_env(cwd), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def assert_one_line(result, status, *fragments):
    """The command failed with ``status`` and said why in one line on stderr."""
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained through the console script: ``(folder, cwd, the "Next:" commands)``."""
    cwd = tmp_path_factory.mktemp("user")
    result = run(["snf-tf", "train", "selfnorm_fc_mnist", "--epochs", "1", *TINY,
                  "--out", "run", "--quiet"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    commands = [line.split("#")[0].strip() for line in lines[lines.index("Next:") + 1:]
                if line.startswith("  ")]
    return cwd / "run", cwd, commands


@needs_mnist
def test_every_command_a_run_prints_works_in_a_fresh_process(trained):
    folder, cwd, commands = trained
    assert [c.split()[:2] for c in commands] == [
        ["snf-tf", "evaluate"], ["snf-tf", "sample"], ["snf-tf", "export"], ["snf-tf", "train"],
        ["tensorboard", "--logdir"]]
    for command in commands:
        args = shlex.split(command)
        if args[0] == "tensorboard":  # a server: it must start and serve the run's logs
            server = subprocess.Popen(args + ["--port", "0"], cwd=cwd, env=clean_env(cwd),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                deadline, said = time.time() + 120, ""
                while time.time() < deadline and "http://" not in said:
                    line = server.stdout.readline()
                    if not line and server.poll() is not None:
                        break
                    said += line
                assert "http://" in said, said[-3000:]
            finally:
                server.terminate()
                server.wait(30)
            continue
        result = run(args, cwd)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, (command, result.stderr[-3000:])
        if args[1] == "evaluate":
            assert re.search(r"NLL [0-9.]+ nats = [0-9.]+ bits/dim", result.stdout), result.stdout
        elif args[1] == "sample":
            assert (cwd / args[args.index("-o") + 1]).stat().st_size > 1000
        elif args[1] == "export":
            assert (cwd / args[3] / "saved_model.pb").is_file()
            mask = os.umask(0)
            os.umask(mask)
            assert (cwd / args[3]).stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's
        else:  # train longer
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["status"] == "finished"
            assert len(metrics["epochs"]) == int(args[args.index("--epochs") + 1])
    # the README's other commands on the same run
    for args in (["snf-tf", "list"], ["snf-tf", "info"], [sys.executable, "-m", "snf_tf", "list"],
                 ["snf-tf", "sample", "run/savedmodel", "-n", "16", "-o", "grid.png"],
                 [sys.executable, "-m", "snf_tf", "evaluate", "run/best.keras", "--split",
                  "validation", "--examples", "100", "--json"]):
        result = run(args, cwd)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args,
                                                                               result.stderr[-3000:])
    assert (cwd / "grid.png").stat().st_size > 1000


ORDERS = ["import snf_tf; import keras",
          "import keras; import snf_tf",
          "import tensorflow; import snf_tf; import keras",
          "from snf_tf import training; import keras",
          "import keras; from snf_tf.layers import SelfNormDense",
          "from snf_tf.model import FlowModel; import keras",
          "import tensorflow_probability; from snf_tf import data; import keras"]

_LOAD = """
import json, sys
{order}
import keras
out = {{}}
for path in sys.argv[1:]:
    model = keras.models.load_model(path)
    rate = model.optimizer.get_config()["learning_rate"] if model.optimizer else None
    schedule = rate["class_name"] if isinstance(rate, dict) else type(rate).__name__
    out[path] = [type(model).__name__, schedule]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def checkpoints(trained, tmp_path_factory):
    """Every kind of ``.keras`` file the package writes: a run's best.keras (Adam with the
    LinearWarmup schedule), a class-conditional Glow with its schedule (Python API), and the
    committed fixtures of earlier versions."""
    folder, cwd, _ = trained
    conditional = tmp_path_factory.mktemp("conditional") / "conditional.keras"
    code = (
        "import numpy as np, keras\n"
        "from snf_tf import architectures, callbacks\n"
        "m = architectures.glow(num_blocks=2, steps_per_block=1, hidden_channels=4,\n"
        "                       num_classes=3)\n"
        "m.compile(optimizer=keras.optimizers.Adam(callbacks.LinearWarmup(1e-3, 10)))\n"
        "x = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1)).astype('float32')\n"
        "m.fit(x, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)\n"
        f"m.save({str(conditional)!r})\n")
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(cwd), cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    fixtures = sorted(os.path.join(FIXTURES, name) for name in os.listdir(FIXTURES)
                      if name.endswith(".keras"))
    return [str(folder / "best.keras"), str(conditional)] + fixtures


@needs_mnist
@pytest.mark.parametrize("order", ORDERS)
def test_checkpoints_load_after_any_import_order(order, checkpoints, tmp_path):
    result = subprocess.run([sys.executable, "-c", _LOAD.format(order=order), *checkpoints],
                            env=clean_env(tmp_path), cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(kind == "FlowModel" for kind, _ in loaded.values()), loaded
    assert loaded[checkpoints[0]][1] == "LinearWarmup"
    assert loaded[checkpoints[1]][1] == "LinearWarmup"


@needs_mnist
def test_load_checkpoint_alone_in_a_fresh_process(checkpoints, tmp_path):
    code = ("import sys; from snf_tf import export\n"
            "for path in sys.argv[1:]: export.load_checkpoint(path)\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code, *checkpoints], env=clean_env(tmp_path),
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_the_command_starts_without_tensorflow(tmp_path):
    """``snf-tf list`` and ``--help`` do not load TensorFlow (they answer at once)."""
    code = ("import sys; sys.argv = ['snf-tf', 'list']\nfrom snf_tf.experiments import cli\n"
            "cli.main(['list']); print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(tmp_path), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "False", result.stderr


# -- bad settings: one line, exit 2, nothing created
@needs_mnist
@pytest.mark.parametrize("setting, fragment", [
    ("gradient=bogus", "gradient must be one of"),
    ("num_layers=0", "num_layers must be a positive int"),
])
def test_settings_only_the_builder_can_judge_are_refused_before_work(setting, fragment,
                                                                     tmp_path):
    result = run(["snf-tf", "train", "selfnorm_fc_mnist", "--epochs", "1", *TINY, "--out", "r",
                  "--set", setting], tmp_path)
    assert_one_line(result, 2, fragment)
    assert not (tmp_path / "r").exists()


@needs_mnist
def test_glow_with_no_blocks_is_refused_before_work(tmp_path):
    result = run(["snf-tf", "train", "small_selfnorm_glow_mnist", "--epochs", "1", *TINY,
                  "--out", "r", "--set", "num_blocks=0"], tmp_path)
    assert_one_line(result, 2, "num_blocks must be a positive int, got 0")
    assert not (tmp_path / "r").exists()


# -- faults of the machine
def _file_size_limit(limit):
    """A subprocess that may write no file beyond ``limit`` bytes: writes past it fail with
    EFBIG ('File too large'), as a full disk fails them with ENOSPC (Python ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@needs_mnist
def test_a_full_disk_while_training_is_one_line_and_loses_nothing(trained, tmp_path):
    # best.keras of the FC model is about 30 MB; everything else of an epoch is smaller
    result = run(["snf-tf", "train", "selfnorm_fc_mnist", "--epochs", "1", *TINY, "--out", "r",
                  "--quiet"], tmp_path, preexec_fn=_file_size_limit(20 * 2**20))
    line = assert_one_line(result, 1, "best.keras", "File too large", "--resume")
    assert line.startswith("snf-tf: error:")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert not [name for name in os.listdir(tmp_path / "r") if "partial" in name]
    # with the space back, the command it printed finishes the run
    resumed = run(shlex.split(line.split("continue with: ")[1]), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "finished"


@needs_mnist
def test_a_full_disk_in_export_and_sample_is_one_line(trained, tmp_path):
    folder, _, _ = trained
    result = run(["snf-tf", "export", str(folder / "best.keras"), "exported"], tmp_path,
                 preexec_fn=_file_size_limit(2**20))
    assert_one_line(result, 1, "cannot write exported", "File too large")
    assert not (tmp_path / "exported").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".export")]
    (tmp_path / "grid.png").write_bytes(b"an earlier grid")
    result = run(["snf-tf", "sample", str(folder / "best.keras"), "-o", "grid.png"], tmp_path,
                 preexec_fn=_file_size_limit(10_000))
    assert_one_line(result, 1, "grid.png", "File too large")
    assert (tmp_path / "grid.png").read_bytes() == b"an earlier grid"
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]


# What a terminal gives the command it starts: Ctrl-C at its default action and not blocked. A
# pytest-xdist worker may hold SIGINT ignored or blocked (both pass to a child process): the
# command is exec'd through this small reset, under the same pid.
_AS_FROM_A_TERMINAL = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])")


def _signal_state(pid):
    """The SigBlk / SigIgn / SigCgt lines of a process (what it does with a signal)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return " ".join(line.strip() for line in f if line.startswith(("SigBlk", "SigIgn",
                                                                          "SigCgt")))
    except OSError:
        return "(no /proc)"


@needs_mnist
def test_ctrl_c_stops_with_one_line_that_gives_the_resume_command(tmp_path):
    # Many epochs, interrupted after the first: a Ctrl-C that is lost shows as a timeout with
    # the signal state below, not as a short run that simply finished (status 0).
    process = subprocess.Popen(
        [sys.executable, "-c", _AS_FROM_A_TERMINAL,
         "snf-tf", "train", "selfnorm_fc_mnist", "--epochs", "100", "--train-examples", "5000",
         "--eval-examples", "200", "--out", "r", "--quiet"], cwd=tmp_path, env=clean_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metadata = tmp_path / "r" / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not metadata.exists():
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[1][-3000:]
    state = _signal_state(process.pid)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"Ctrl-C did not stop the run; its signal state: {state}") from None
    result = subprocess.CompletedProcess(process.args, process.returncode, "", err)
    line = assert_one_line(result, 130, "interrupted", "keeps its last finished epoch (")
    assert line.endswith("snf-tf train selfnorm_fc_mnist --out r --resume")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "interrupted"


# -- one writer per run folder
@needs_mnist
def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_not_in_the_way(tmp_path):
    from snf_tf.experiments import training
    from snf_tf.experiments.run_folder import RunLock

    prepared = training.prepare("selfnorm_fc_mnist", str(tmp_path / "r"), epochs=1,
                                train_examples=200, eval_examples=200)
    second = run(["snf-tf", "train", "selfnorm_fc_mnist", "--epochs", "1", *TINY, "--out", "r"],
                 tmp_path)
    assert_one_line(second, 2, "is in use", f"process {os.getpid()}")
    prepared.train(verbose=0)
    assert not RunLock.held(str(tmp_path / "r"))  # released when training ends
    # a process that dies holding the lock (SIGKILL) leaves its file, not its lock
    killed = subprocess.run(
        [sys.executable, "-c", "import os, sys; from snf_tf.experiments.run_folder import RunLock; "
         "RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), 9)", str(tmp_path / "k")],
        env=clean_env(tmp_path), cwd=tmp_path, timeout=120)
    assert killed.returncode == -9 and (tmp_path / "k" / ".lock").exists()
    assert not RunLock.held(str(tmp_path / "k"))
    again = training.prepare("selfnorm_fc_mnist", str(tmp_path / "k"), epochs=1,
                             train_examples=200, eval_examples=200)
    again.train(verbose=0)


def test_bench_models_times_a_mixed_precision_model(tmp_path):
    """``snf-tf bench models --dtype-policy mixed_bfloat16``: the GPU measurement as one
    command; it times the model in that policy and records the policy."""
    result = run(["snf-tf", "bench", "models", "--models", "selfnorm_glow_mnist", "--set",
                  "hidden_channels=8", "--set", "steps_per_block=1", "--rounds", "2",
                  "--warmup", "1", "--eval-images", "0", "--dtype-policy", "mixed_bfloat16",
                  "--out", "bench"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench" / "model_timing.json").read_text())
    assert report["machine"]["args"]["dtype_policy"] == "mixed_bfloat16"
    (row,) = report["results"]
    assert not row["failures"] and len(row["train"]["times_ms"]) == 2
    assert (tmp_path / "bench" / "model_timing.png").stat().st_size > 0


@needs_mnist
def test_a_time_budget_stops_at_a_batch_and_resume_continues_it(tmp_path):
    """``--time-budget`` stops at the first batch past the budget (evaluation excluded: the
    clock sums step times), evaluates exactly, finishes the run; ``--eval-every-steps`` records
    points; ``--resume`` with a larger budget continues the clock, the same budget is refused."""
    args = ["snf-tf", "train", "selfnorm_fc_mnist", "--train-examples", "1050",
            "--eval-examples", "200", "--eval-every-steps", "4", "--out", "run", "--quiet"]
    first = run(args + ["--time-budget", "2s"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "--resume --time-budget 4s" in first.stdout  # the "train longer" command
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    epochs = metrics["epochs"]
    assert metrics["status"] == "finished" and epochs[-1]["time_budget_spent"]
    steps, seconds = epochs[-1]["steps_total"], epochs[-1]["train_seconds_total"]
    assert 2.0 <= seconds < 2.0 + 1.0  # the first batch past the budget
    # 11 batches an epoch, the last of 50 examples
    assert epochs[-1]["examples_total"] == 1050 * (steps // 11) + 100 * (steps % 11)
    points = [p for e in epochs for p in e.get("eval_points", [])]
    assert [p["step"] for p in points] == list(range(4, steps + 1, 4))
    assert all(np.isfinite(p["val_nll"]) and np.isfinite(p["test_nll"]) for p in points)
    assert np.all(np.diff([p["train_seconds"] for p in points]) > 0)
    assert sum(e["epoch_seconds"] for e in epochs) > seconds  # evaluation is not counted

    again = run(args + ["--time-budget", "2s", "--resume"], tmp_path)
    assert_one_line(again, 2, "already spent its time budget of 2 s", "--time-budget")
    longer = run(args + ["--time-budget", "4s", "--resume"], tmp_path)
    assert longer.returncode == 0, longer.stderr[-3000:]
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert resumed[:len(epochs)] == epochs
    assert 4.0 <= resumed[-1]["train_seconds_total"] < 5.0
    assert resumed[-1]["steps_total"] > steps
