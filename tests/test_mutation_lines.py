"""scripts/mutation_lines.py: the patch that restricts mutmut to the numeric lines of functions."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutation_lines",
                                               ROOT / "scripts" / "mutation_lines.py")
mutation_lines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutation_lines)

SOURCE = '''\
def outside():
    return 0


class Layer:
    def scale(self, x):
        """Twice x.

        More words."""
        if x is None:
            raise ValueError(
                "x is None")
        # a comment
        return 2 * x

    def other(self):
        return 1
'''


def test_picks_the_body_without_docstring_raise_or_comments():
    assert mutation_lines.numeric_lines(SOURCE, ["scale"]) == [10, 14]
    assert mutation_lines.numeric_lines(SOURCE, ["Layer.other", "outside"]) == [2, 17]


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit, match="no function named"):
        mutation_lines.numeric_lines(SOURCE, ["missing"])


def test_the_patch_adds_exactly_the_chosen_lines(tmp_path, monkeypatch):
    (tmp_path / "m.py").write_text(SOURCE)
    monkeypatch.setattr(mutation_lines, "ROOT", tmp_path)
    patch = mutation_lines.patch("m.py", ["scale"])
    added = [line[1:] for line in patch.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    assert added == ["        if x is None:", "        return 2 * x"]
    assert patch.startswith("--- m.py\n+++ m.py\n")
