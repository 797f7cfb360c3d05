"""Write the docs page of what is checked (docs/checks_map.md) from tests/reference_checks.py.

The registry sorts every public function and method of snf_tf into three lists: checked against
an independent reference (with the tests that do it), not numeric (with why), and not checked yet
(with what is missing). The page shows the first as one table per module, the last as one table,
and counts the second. tests/test_reference_map.py fails while the page differs from what this
script writes, and while the registry misses a public name. Imports no TensorFlow.

    python scripts/checks_map.py
"""

import importlib.util
import pathlib
import re
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "tests" / "reference_checks.py"
PAGE = ROOT / "docs" / "checks_map.md"

INTRO = """\
# What is checked

Every number snf_tf returns should be checked against an independent reference. This page maps
each public function or method that returns numbers to the tests that check them, and lists the
ones no test checks yet.

An independent reference is a computation that does not use the code under test: the slogdet of
a float64 autodiff Jacobian, a numerical Jacobian, NumPy, SciPy or TFP, a closed form, or the
model's numbers against its SavedModel in a fresh interpreter. A view or wrapper counts as checked
by a comparison with the snf_tf function it claims to equal when that function is itself checked
against such a reference. A test that compares a function only with another call of the same code
(eager with traced, saved with loaded, one seed twice), or checks shapes, finiteness or
determinism alone, does not count.

The map is the registry `tests/reference_checks.py`; this page is generated from it:

```bash
python scripts/checks_map.py
```

`tests/test_reference_map.py` keeps both current: it fails when a public function or method is in
none of the registry's lists or in two, when an entry or a listed test no longer exists, and when
this page differs from what the script writes.
"""

CHECKED_INTRO = """\
## Checked

Names are relative to the module of each heading. A method appears once, under the class that
defines it: `_SelfNormLayer` holds what `SelfNormDense` and `SelfNormConv2D` inherit,
`_Rearrangement` what `Squeeze`, `Flatten` and `Reshape` inherit, and `FlowLayer` what every flow
layer inherits. Tests are files and functions in `tests/`.
"""


def load_registry():
    """The module ``tests/reference_checks.py`` (plain dicts: no snf_tf import)."""
    spec = importlib.util.spec_from_file_location("reference_checks", REGISTRY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_name(qualified):
    """``(module, name in the module)``: the module ends before the first class (a capitalised
    part, private or not), or before the last part for a function."""
    parts = qualified.split(".")
    for i, part in enumerate(parts):
        if re.match(r"_?[A-Z]", part):
            return ".".join(parts[:i]), ".".join(parts[i:])
    return ".".join(parts[:-1]), parts[-1]


def _paragraph(text):
    """Prose wrapped as the hand-written pages are (100 columns)."""
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)


def _test_cell(tests):
    return "<br>".join(f"`{test.removeprefix('tests/')}`" for test in tests)


def render(registry=None):
    """The page's Markdown."""
    registry = registry or load_registry()
    checked, unchecked = registry.CHECKED, registry.UNCHECKED
    not_numeric = registry.NOT_NUMERIC
    lines = [INTRO,
             _paragraph(f"In all: **{len(checked)}** checked, **{len(unchecked)}** not checked "
                        f"yet, **{len(not_numeric)}** with no number to check."), "",
             CHECKED_INTRO]
    modules = {}
    for qualified in checked:
        module, name = split_name(qualified)
        modules.setdefault(module, []).append((name, checked[qualified]))
    for module in sorted(modules):
        lines += [f"### {module}", "", "| function or method | checked by |", "| --- | --- |"]
        lines += [f"| `{name}` | {_test_cell(tests)} |" for name, tests in sorted(modules[module])]
        lines.append("")
    lines += ["## Not checked yet", ""]
    if unchecked:
        lines += [_paragraph("Public functions and methods whose numbers no test compares with "
                             "an independent reference."), "",
                  "| function or method | what is missing |", "| --- | --- |"]
        lines += [f"| `{name}` | {unchecked[name]} |" for name in sorted(unchecked)]
    else:
        lines.append("None: every public function or method that returns numbers has a test "
                     "above.")
    lines += ["", "## Not numeric", "",
              _paragraph(f"{len(not_numeric)} public functions and methods return no number to "
                         "check: configuration and serialisation, builders, validators, file "
                         "I/O, shape and dtype bookkeeping, and Keras hooks whose numbers another "
                         "entry carries. `NOT_NUMERIC` in `tests/reference_checks.py` lists each "
                         "with the reason."), ""]
    return "\n".join(lines)


def main():
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
