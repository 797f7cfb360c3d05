"""The documentation in docs/ says what the code does: its worked example is the tested file, its
links point at files that exist, and no docstring cites a file outside the repository."""

import pathlib
import re

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
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_no_file_cites_documents_outside_the_repository():
    offenders = []
    for path in list((ROOT / "snf_tf").rglob("*.py")) + list((ROOT / "benchmarks").rglob("*.py")) \
            + list((ROOT / "examples").rglob("*.py")) + list((ROOT / "tests").rglob("*.py")) \
            + list(ROOT.glob("*.md")) + list((ROOT / "docs").glob("*.md")):
        text = path.read_text()
        for name in ("DESIGN" + ".md", "PAPER" + ".md"):
            if name in text:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_ruff_is_clean():
    """The style the repository is written in (pyproject.toml [tool.ruff]) holds everywhere."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    out = subprocess.run([ruff, "check", "snf_tf", "tests", "benchmarks", "examples"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
