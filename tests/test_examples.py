"""Every tutorial's script runs as its page says, in a fresh interpreter with a clean
environment (smallest data options; the pages show the full commands), writes the figure the
page shows, and prints its report in the words of the page's "expected output" block (numbers
aside: they depend on the run)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import fresh_process_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
TFDS = os.environ.get("TFDS_DATA_DIR", "")
NEEDS_MNIST = {"fc_mnist", "conv_mnist", "export_and_serve"}
NUMBER = re.compile(r"[-−]?\d[\d.]*(e[-+]?\d+)?")


def _shape(line):
    """A line with its paths, numbers and lists/dicts' contents blanked out."""
    line = re.sub(r"\S*/\S*[\w.]", "PATH", line)
    line = re.sub(r"\{[^}]*\}", "{…}", line)
    line = re.sub(r"\[[^\]]*\]", "[…]", line)
    return NUMBER.sub("#", line).strip()


def _expected_output(page):
    """The lines of the page's ```text block under "Expected output"."""
    text = (ROOT / "docs" / "tutorials" / page).read_text()
    section = text[text.index("## Expected output"):]
    return re.search(r"```text\n(.*?)```", section, re.S).group(1).splitlines()


def _run_example(script, args, cwd):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script)] + args, cwd=cwd,
                         env=fresh_process_env(), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.stdout


def _assert_report_as_documented(stdout, page, first_words):
    """Every line the script prints after ``fit`` (from the one starting with ``first_words``)
    has the shape of a line of the page's expected output."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(first_words))
    documented = {_shape(line) for line in _expected_output(page)}
    for line in lines[start:]:
        assert _shape(line) in documented, (line, sorted(documented))


CASES = {
    "fc_mnist": ("fc_mnist.py", ["--epochs", "1", "--train-examples", "200"], "fc_mnist.md",
                 "best validation epoch", ["samples.png", "best.keras", "metrics.json"]),
    "conv_mnist": ("conv_mnist.py", ["--epochs", "1", "--train-examples", "200",
                                     "--eval-examples", "500"], "conv_mnist.md",
                   "best validation epoch", ["samples.png", "best.keras"]),
    "glow_cifar10": ("glow_cifar10.py", ["--quick", "--mock-data", "--train-examples", "128",
                                         "--eval-examples", "200"], "glow_cifar10.md",
                     "test ", ["samples.png", "best.keras"]),
    "tfp_composition": ("tfp_composition.py", ["--epochs", "1", "--figure", "OUT/tfp.png"],
                        "tfp_composition.md", "test NLL of the flow", ["tfp.png"]),
    "export_and_serve": ("export_and_serve.py", [], "export_and_serve.md", "served from",
                         ["served_samples.png", "saved_model/saved_model.pb"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_tutorial_script_runs_and_reports_as_its_page_shows(name, tmp_path):
    script, args, page, first_words, outputs = CASES[name]
    if name in NEEDS_MNIST and not os.path.isdir(os.path.join(TFDS, "mnist")):
        pytest.skip("real MNIST ($TFDS_DATA_DIR) not available")
    out = tmp_path / "out"
    args = [a.replace("OUT", str(out)) for a in args]
    if name != "tfp_composition":
        args += ["--out", str(out)]
    stdout = _run_example(script, args, tmp_path)
    for output in outputs:
        assert (out / output).stat().st_size > 100, output
    _assert_report_as_documented(stdout, page, first_words)
