"""Installed like a library: ``pip install .`` (not editable) into a fresh venv, then ``snf-tf``
from a folder outside the checkout, with the data found through ``--data-dir`` or
``TFDS_DATA_DIR``, and a one-line error when it is missing.

The venv sees this interpreter's site-packages through a ``.pth`` file, so TensorFlow and the other
dependencies are found installed rather than downloaded again; snf_tf itself comes from the wheel
pip builds from the checkout (the test asserts that the venv imports that copy).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = os.environ.get("TFDS_DATA_DIR", "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "mnist")),
                       reason="real MNIST ($TFDS_DATA_DIR) not available"),
]


def _run(args, cwd, env, timeout=600):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    python = folder / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    # the dependencies of this interpreter, after the venv's own packages
    (pathlib.Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # a copy of the sources: building a wheel writes build/ and *.egg-info beside them
    source = tmp_path_factory.mktemp("source") / "snf_tf"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "runs", "site", "*.egg-info", "__pycache__", "*.keras"))
    result = _run([python, "-m", "pip", "install", "-q", str(source)], cwd=folder,
                  env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return folder


def _clean_env(home, **extra):
    env = {key: value for key, value in os.environ.items()
           if key not in ("TFDS_DATA_DIR", "PYTHONPATH")}
    return dict(env, HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3", **extra)


def test_the_venv_imports_the_installed_wheel_not_the_checkout(venv, tmp_path):
    result = _run([venv / "bin" / "python", "-c", "import snf_tf; print(snf_tf.__file__)"],
                  cwd=tmp_path, env=_clean_env(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    location = pathlib.Path(result.stdout.strip()).resolve()
    assert venv.resolve() in location.parents, location
    assert ROOT not in location.parents


@pytest.mark.parametrize("how", ["--data-dir", "TFDS_DATA_DIR"])
def test_snf_tf_train_from_any_folder(venv, tmp_path, how):
    env = _clean_env(tmp_path, **({"TFDS_DATA_DIR": DATA} if how == "TFDS_DATA_DIR" else {}))
    args = [venv / "bin" / "snf-tf", "train", "selfnorm_fc_mnist", "--epochs", "1",
            "--train-examples", "100", "--eval-examples", "100", "--out", "run"]
    args += ["--data-dir", DATA] if how == "--data-dir" else []
    result = _run(args, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["best"]["test_nll"] > 0
    assert f"{metrics['best']['test_nll']:.2f} nats" in result.stdout
    assert "Next:" in result.stdout


def test_missing_data_is_one_line_that_says_how_to_get_it(venv, tmp_path):
    result = _run([venv / "bin" / "snf-tf", "train", "selfnorm_fc_mnist", "--epochs", "1"],
                  cwd=tmp_path, env=_clean_env(tmp_path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("snf-tf: error: dataset 'mnist'")
    for hint in ("TFDS_DATA_DIR", "--data-dir", "tfds build mnist"):
        assert hint in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_the_documented_install_check_and_the_tfds_build_dependency(venv, tmp_path):
    """docs/install.md's one-line check runs in the installed venv, and the wheel declares
    importlib_resources, which tfds needs to build (download) a dataset but does not declare."""
    env = _clean_env(tmp_path)
    check = _run([venv / "bin" / "python", "-c", "import snf_tf; print(snf_tf.__version__)"],
                 cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.strip() == (ROOT / "snf_tf" / "__init__.py").read_text().split(
        '__version__ = "')[1].split('"')[0]
    info = _run([venv / "bin" / "snf-tf", "info"], cwd=tmp_path, env=env)
    assert info.returncode == 0 and "tensorflow" in info.stdout.lower(), info.stderr[-2000:]
    requires = _run([venv / "bin" / "python", "-c",
                     "import importlib.metadata as m, importlib_resources; "
                     "print('\\n'.join(m.requires('snf-tf')))"], cwd=tmp_path, env=env)
    assert requires.returncode == 0, requires.stderr[-2000:]
    assert any(line.startswith("importlib_resources") or line.startswith("importlib-resources")
               for line in requires.stdout.splitlines()), requires.stdout
    text = (ROOT / "docs" / "install.md").read_text()
    assert 'python -c "import snf_tf; print(snf_tf.__version__)" && snf-tf info' in text
