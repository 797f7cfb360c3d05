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


MUTATION = """\
## Mutation testing

The map says which tests check a function; mutation testing asks whether they would notice it
going wrong. A mutation tool makes small realistic bugs in a copy of the code (a sign, an axis, a
constant, a dropped line), one at a time, and runs a targeted test selection on each: a mutant
that no test fails on "survives". We use mutmut 2.5.1 (mutmut 3 forks per mutant after importing
the tests, and a forked TensorFlow hangs in its first op), on a git worktree copy of HEAD, a
fresh test process per mutant:

```bash
bash scripts/mutation.sh /tmp/mut \\
    snf_tf/ops/selfnorm.py,snf_tf/ops/toeplitz.py,snf_tf/ops/linalg.py \\
    "tests/test_ops_selfnorm.py tests/test_toeplitz.py \\
     tests/test_linalg.py"
bash scripts/mutation.sh /tmp/mut snf_tf/model.py \\
    "-m 'not slow' tests/test_public_numbers.py tests/test_model.py \\
     tests/test_sampling_references.py tests/test_conditional.py" \\
    snf_tf/model.py:log_prob,sample,train_step
```

`FILE:FUNCTION,...` arguments restrict the mutants to the numeric lines of those functions
(`scripts/mutation_lines.py`: no docstrings, no `raise`); a later run re-tests only the
survivors. Last run, 2026-12-03/04 ("before": the suite as it was; "after": with the tests
that run added):

| code mutated (test selection below) | mutants | killed before | killed after | left |
| --- | --- | --- | --- | --- |
| `ops/selfnorm.py`, `toeplitz.py`, `linalg.py` | 285 | 161 (56 %) | 273 (96 %) | 12 |
| `layers/selfnorm.py`, 12 methods | 154 | 129 (84 %) | 134 (87 %) | 20 |
| `model.py`, 14 methods | 94 | 78 (83 %) | 83 (88 %) | 11 |

- `snf_tf/ops`: every line; tests `test_ops_selfnorm.py`, `test_toeplitz.py`, `test_linalg.py`.
- `snf_tf/layers/selfnorm.py`: the numeric lines of `_fingerprint`, `refresh_log_det`,
  `_cache_is_fresh`, `exact_log_abs_det`, `_cached_log_abs_det_with_live_gradient`,
  `_forward_with_reconstruction`, `_inverse`, `reconstruction_loss`, `_live_log_abs_det`,
  `_exact_solve`, `inverse_error`, `toeplitz_matrix`; tests `test_selfnorm.py` (not slow),
  `test_public_numbers.py` and the layer table's `SelfNorm*` rows (not XLA).
- `snf_tf/model.py`: the numeric lines of `_seed_pair`, `_seeds`, `_walk_forward`,
  `_walk_inverse`, `base_log_prob`, `log_prob`, `_forward_and_base`, `bits_per_dim`,
  `class_log_probs`, `marginal_log_prob`, `train_step`, `test_step`, `sample`,
  `inverse_errors`; tests `test_public_numbers.py`, `test_model.py`,
  `test_sampling_references.py`, `test_conditional.py` (not slow).

"Killed after" also counts mutants that tests outside the selection kill, checked by applying
each by hand: the frozen log-det of an exact layer (`test_export.py`), the recorded
reconstruction error with λ ≠ 1 (`test_callbacks.py`) and the `1/replicas` loss scaling
(`test_distribute.py`).

What is left changes no number:

- **Equivalent**: `axes=+1` for `-1` on rank-2 tensors; the banded LU's block bookkeeping
  (a wider band, one block more or fewer in the loop: the same determinant by a different split
  between the loop and the final `slogdet`, or a fall-back to the dense `slogdet`); a 1×1
  conv's log-det and solve through the general Toeplitz path; the fused or the separate
  reconstruction loss (equal by `test_fused_reconstruction_equals_standalone_reconstruction_loss`);
  `loss / 1`; other constants in the cache fingerprint (another hash of the same kind, which
  no test can tell from ours).
- **Speed only**: the per-layer traced log-det function not kept, or traced without
  `reduce_retracing` (recomputed, same value).
- **Messages only**: the names and texts in error messages (checked by `test_bad_input.py`
  and `test_user_edge.py`, not in these selections).
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
                         "with the reason."), "", MUTATION]
    return "\n".join(lines)


def main():
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
