"""The snf-tf command: export and sample (subprocess and in-process), one-line errors, exit 2."""

import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from snf_tf import cli, models

_TF_NOISE = ("WARNING: All log messages before absl", "cudart_stub", "I0000", "W0000", "E0000")


def _our_lines(stderr):
    return [line for line in stderr.splitlines()
            if line.strip() and not any(noise in line for noise in _TF_NOISE)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = models.fc_flow(seed=1)
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
    (["train"], "invalid choice"),
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
    assert {"export", "sample"} <= set(cli.COMMANDS)
    help_text = parser.format_help()
    assert "export" in help_text and "sample" in help_text
