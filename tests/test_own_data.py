"""The "your own data" documentation runs as written: the home page's snippet and
examples/own_data.py (the tutorial's script), each in a fresh interpreter with a clean
environment, and the tutorial's table of layers for vectors and images matches the layers."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import fresh_process_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKS = """
import numpy
assert samples.shape == (1000, 2) and numpy.isfinite(samples.numpy()).all()
assert log_p.shape == (5,) and numpy.isfinite(log_p.numpy()).all()
errors = model.inverse_errors()
assert len(errors) == 3 and max(errors.values()) < 0.1, errors
history = model.history.history
assert history["val_nll"][-1] < history["val_nll"][0], history["val_nll"]
print("checked")
"""


def _block_after(page, heading):
    text = page.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_home_page_snippet_on_your_own_data_runs(tmp_path):
    code = _block_after(ROOT / "docs" / "index.md", "## Your own data")
    assert "FlowModel(" in code and ".fit(" in code and "log_prob" in code
    script = tmp_path / "snippet.py"
    script.write_text(code + CHECKS)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=fresh_process_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().endswith("checked")
    assert "val_nll" in out.stdout  # fit's progress shows the exact validation NLL


@pytest.mark.slow
def test_the_own_data_tutorial_script_runs(tmp_path):
    pytest.importorskip("sklearn", reason="examples/own_data.py reads scikit-learn's digits")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "own_data.py"), "--quick",
                          "--out", str(tmp_path / "out")], cwd=tmp_path, env=fresh_process_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (tmp_path / "out" / "own_data.png").stat().st_size > 10_000
    for name in ("moons", "digits"):
        r = report[name]
        assert np.isfinite(r["test_nll"]) and r["max_inverse_error"] < 0.5
        assert len(r["val_nll"]) == 3 and r["val_nll"][-1] == pytest.approx(r["test_nll"],
                                                                            rel=1e-4)
        assert f"{name}: exact test NLL {r['test_nll']:.3f} nats" in out.stdout
    # Even 3 epochs beat a full-covariance Gaussian on the digits (independent NumPy fit).
    assert report["digits"]["test_nll"] < report["digits"]["gaussian_test_nll"] - 5


def test_the_tutorial_table_of_layers_matches_their_input_ranks():
    from snf_tf import layers

    page = (ROOT / "docs" / "tutorials" / "own_data.md").read_text()
    rows = dict(re.findall(r"^\| (vectors|images|either)[^|]*\| (.*) \|$", page, re.M))
    assert set(rows) == {"vectors", "images", "either"}
    expected = {"vectors": 2, "images": 4, "either": None}
    listed = set()
    for kind, cell in rows.items():
        for name in re.findall(r"`([A-Z]\w+)`", cell):
            assert getattr(layers, name).input_rank == expected[kind], (kind, name)
            listed.add(name)
    # every public flow layer is in the table (Flatten and Reshape in their own row)
    public = {name for name in layers.__all__ if isinstance(getattr(layers, name), type)
              and issubclass(getattr(layers, name), layers.FlowLayer)}
    assert public - listed <= {"FlowLayer", "Flatten", "Reshape"}, public - listed
