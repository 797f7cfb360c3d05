"""One home for private framework imports and one for argument checks (docs/design.md): only
``snf_tf/_compat.py`` imports ``keras.src``, ``tensorflow.python`` or
``tensorflow_probability.python``, and the checks' old import paths still work."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "snf_tf"
PRIVATE = ("keras.src", "tensorflow.python", "tensorflow_probability.python")
#: none: the lab (snf_tf/experiments) keeps to the rule too
EXCLUDED = ()


def _private_imports(path):
    """``(module, line)`` of every import of a private framework module in ``path`` (also inside
    functions and ``try`` blocks; ``from tensorflow import python`` counts too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if any(name == prefix or name.startswith(prefix + ".") for prefix in PRIVATE):
                yield name, node.lineno
                break


def _library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith(EXCLUDED):
            yield relative, path


def test_only_compat_imports_framework_internals():
    offenders = [f"snf_tf/{relative}:{line} imports {name}"
                 for relative, path in _library_modules() if relative != "_compat.py"
                 for name, line in _private_imports(path)]
    assert not offenders, "\n".join(offenders)


def test_the_scan_sees_the_imports_of_compat():
    """The scan is not vacuous: it finds each framework's internals in ``_compat.py``."""
    found = {name for name, _ in _private_imports(PACKAGE / "_compat.py")}
    for prefix in PRIVATE:
        assert any(name.startswith(prefix) for name in found), prefix
    modules = dict(_library_modules())
    assert {"model.py", "layers/base.py", "experiments/cli.py", "experiments/guard.py"} <= set(
        modules)


def test_checks_keep_their_old_import_paths():
    from snf_tf import checks, layers, model
    from snf_tf._compat import in_xla_context
    from snf_tf.layers import base

    for name in ("check_positive_int", "check_temperature", "check_batch_values",
                 "NonFiniteError"):
        assert getattr(base, name) is getattr(checks, name), name
    assert model.check_temperature is checks.check_temperature
    assert layers.NonFiniteError is checks.NonFiniteError
    assert base.in_xla_context is in_xla_context
    assert set(checks.__all__) <= set(dir(checks))
