"""Entry points get oneDNN without the user doing anything (TF only reads the switch at import),
unless TF_ENABLE_ONEDNN_OPTS=0; `snf-tf bench profile` runs end to end on a small experiment."""

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.slow,  # console script and python -m in subprocesses
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                       reason="oneDNN is switched on by default on x86-64 only"),
]


def _env(**overrides):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(overrides)
    return env


def _console_script():
    path = os.path.join(os.path.dirname(sys.executable), "snf-tf")
    return path if os.path.exists(path) else shutil.which("snf-tf")


def _info(command, env):
    out = subprocess.run(command + ["info", "--json"], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("entry", ["console script", "python -m snf_tf"])
def test_entry_points_turn_onednn_on_with_the_variable_unset(entry):
    command = [_console_script()] if entry == "console script" else [sys.executable, "-m", "snf_tf"]
    if command[0] is None:
        pytest.skip("the snf-tf console script is not installed")
    assert _info(command, _env())["onednn"] is True
    assert _info(command, _env(TF_ENABLE_ONEDNN_OPTS="0"))["onednn"] is False


def test_import_snf_tf_first_turns_onednn_on_and_tensorflow_first_keeps_its_default():
    code = ("import {first}, {second}; from snf_tf import _environment; "
            "print(_environment.onednn_enabled())")
    results = {}
    for order in (("snf_tf", "tensorflow"), ("tensorflow", "snf_tf")):
        out = subprocess.run([sys.executable, "-c", code.format(first=order[0], second=order[1])],
                             env=_env(), capture_output=True, text=True, timeout=300, check=True)
        results[order[0]] = out.stdout.strip().splitlines()[-1]
    assert results["snf_tf"] == "True"
    default = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; from tensorflow.python.util import "
         "_pywrap_util_port as p; print(bool(p.IsMklEnabled()))"],
        env=_env(), capture_output=True, text=True, timeout=300, check=True)
    assert results["tensorflow"] == default.stdout.strip().splitlines()[-1]


def test_bench_profile_writes_a_table_json_and_png(tmp_path):
    from snf_tf.experiments.bench import profile

    results = profile.main(["selfnorm_fc_mnist", "--rounds", "1", "--warmup", "1", "--batch", "8",
                            "--by-layer", "--out", str(tmp_path)])
    (result,) = results
    stem = tmp_path / "profile_selfnorm_fc_mnist"
    saved = json.loads(stem.with_suffix(".json").read_text())["results"][0]
    assert saved["experiment"] == "selfnorm_fc_mnist"
    assert stem.with_suffix(".png").stat().st_size > 1000
    families = {f["family"]: f for f in result["families"]}
    assert families["SelfNormDense"]["count"] == 2 and families["SmoothLeakyReLU"]["count"] == 1
    # analytic FLOPs: per dense layer the training forward does W x and R (W x) (reconstruction):
    # 2 matmuls of 2·B·D² each; the step counts 3× the forward's (forward + two backward products)
    d, batch = 784, 8
    expected = 3 * 2 * 2 * (2 * batch * d * d)
    assert families["SelfNormDense"]["train_gflop"] * 1e9 == pytest.approx(expected, rel=1e-6)
    assert result["train_gflop"] * 1e9 == pytest.approx(expected, rel=1e-6)
    assert result["train_step_ms"] > 0 and result["train_floor_ms"] > 0


def test_count_flops_counts_convs_and_matmuls_analytically():
    import tensorflow as tf

    from snf_tf.experiments.bench.profile import count_flops

    def fn(x, a):
        return tf.nn.conv2d(x, tf.ones([3, 3, 4, 5]), 1, "SAME"), tf.matmul(a, a, transpose_a=True)

    flops = count_flops(fn, tf.TensorSpec([2, 6, 7, 4]), tf.TensorSpec([3, 9]))
    assert flops["conv"] == 2 * (2 * 6 * 7 * 5) * 3 * 3 * 4
    assert flops["matmul"] == 2 * (9 * 9) * 3


def test_bench_models_times_train_sample_and_the_eval_ratio(tmp_path):
    from snf_tf.experiments.bench import timing as models

    rows = models.main(["--models", "selfnorm_fc_mnist", "--rounds", "2", "--warmup", "1",
                        "--eval-images", "200", "--eval-rounds", "1", "--out", str(tmp_path)])
    (row,) = rows
    saved = json.loads((tmp_path / "model_timing.json").read_text())["results"][0]
    assert saved["name"] == "selfnorm_fc_mnist" and not saved["failures"]
    assert len(saved["train"]["times_ms"]) == 2 and len(saved["evaluate"]["times_ms"]) == 1
    assert row["eval_over_forward"] == pytest.approx(
        row["evaluate"]["median_ms"] / row["forward"]["median_ms"])
    assert (tmp_path / "model_timing.png").stat().st_size > 1000
