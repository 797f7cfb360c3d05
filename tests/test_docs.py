"""The documentation in docs/ says what the code does: its worked example is the tested file, its
links point at files that exist, no docstring cites a file outside the repository, and the site
(mkdocs.yml) builds in strict mode with every internal link resolving."""

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_adding_a_layer_shows_the_tested_example():
    page = (ROOT / "docs" / "adding_a_layer.md").read_text()
    assert '--8<-- "tests/example_layer.py"' in page  # included verbatim by the docs build
    example = (ROOT / "tests" / "example_layer.py").read_text()
    row = re.search(r"```python\n(Case\(.*?\)),?\n```", page, re.S).group(1)
    table = (ROOT / "tests" / "test_layer_table.py").read_text()
    assert " ".join(row.split()) in " ".join(table.split())  # the row, as the table has it
    assert "class ElementwiseAffine(FlowLayer)" in example


def test_relative_links_in_docs_exist():
    pages = sorted((ROOT / "docs").rglob("*.md"))
    assert (ROOT / "docs" / "tutorials" / "fc_mnist.md") in pages  # subfolders are scanned too
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), \
                f"{page.relative_to(ROOT)} links to missing {target}"


def test_no_file_cites_documents_outside_the_repository():
    offenders = []
    for path in list((ROOT / "snf_tf").rglob("*.py")) + list((ROOT / "studies").rglob("*.py")) \
            + list((ROOT / "examples").rglob("*.py")) + list((ROOT / "tests").rglob("*.py")) \
            + [p for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh")] \
            + [ROOT / "mkdocs.yml"] \
            + list(ROOT.glob("*.md")) + list((ROOT / "docs").rglob("*.md")):
        text = path.read_text()
        for name in ("DESIGN" + ".md", "PAPER" + ".md"):
            if name in text:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_ruff_is_clean():
    """The style the repository is written in (pyproject.toml [tool.ruff]) holds everywhere."""
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    out = subprocess.run([ruff, "check", "snf_tf", "tests", "studies", "examples", "scripts"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_builds_strict_and_its_links_resolve(tmp_path):
    """``mkdocs build --strict`` (every page, API entry, snippet and link checked by mkdocs), then
    the built HTML crawled as scripts/docs.sh does, without the browser part."""
    pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                          "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert out.returncode == 0, out.stdout + out.stderr
    failures, count = _load_script("check_site").check_links(site, host="")
    assert count > 30 and not failures, failures
    # The API entry of SelfNormDense at its stable URL, with a rendered signature.
    api = (site / "api" / "layers" / "index.html").read_text()
    assert 'id="snf_tf.layers.selfnorm.SelfNormDense"' in api and "doc-signature" in api
    # scripts/docs_griffe.py: private bases are hidden (SelfNormDense shows Bases: FlowLayer, and
    # still inherits refresh_log_det), and "docs/paper.md: layer details" links to the page.
    bases = re.findall(r'class="doc doc-class-bases">(.*?)</p>', api, re.S)
    assert bases and not [b for b in bases if "_SelfNormLayer" in b or "_NHWCLayer" in b], bases
    assert 'id="snf_tf.layers.selfnorm.SelfNormDense.refresh_log_det"' in api
    assert 'href="../../paper/#layer-details"' in api
    # Snippets: the tested example layer, the examples' sources, RESULTS.md with its figures.
    assert "ElementwiseAffine" in (site / "adding_a_layer" / "index.html").read_text()
    assert "_MetricsFile" in (site / "tutorials" / "fc_mnist" / "index.html").read_text()
    results = (site / "results" / "index.html").read_text()
    assert 'src="../figures/reproduce_fc.png"' in results
    assert (site / "figures" / "reproduce_fc.png").is_file()


def test_docstrings_are_rewritten_for_the_site():
    """scripts/docs_griffe.py: reStructuredText habits of the docstrings become Markdown."""
    rewrite = _load_script("docs_griffe")._rewrite
    text = rewrite("See :class:`FlowLayer`, :math:`\\log p`.\n\n.. math::\n    z = x W\n\n"
                   ">>> f(1)\n2\n\n"
                   "=====  =====\n``a``  first\n       more\n``b``  second\n=====  =====\n")
    assert "See `FlowLayer`, \\(\\log p\\)." in text
    assert "\n$$\nz = x W\n$$\n" in text
    assert "```pycon\n>>> f(1)\n2\n```" in text
    assert "- ``a``: first more\n- ``b``: second" in text
    cited = rewrite("Details (docs/paper.md: layer\n    details; reference). "
                    "See ``docs/design.md``.")
    assert "([paper: layer details](../paper.md#layer-details); reference)." in cited
    assert "See [design](../design.md)." in cited


@pytest.mark.slow
def test_site_in_a_real_browser(tmp_path):
    """scripts/docs.sh: strict build, served on 127.0.0.1, checked and screenshotted in Chromium."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not on PATH (scripts/docs.sh installs it with apt-get)")
    pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")
    shots = tmp_path / "shots"
    out = subprocess.run(["bash", "scripts/docs.sh", str(shots)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, PYTHON=sys.executable))
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "api_selfnormdense.png", "home.png", "own_data.png", "quickstart.png",
        "tutorial_conv_mnist.png"]
