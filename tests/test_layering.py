"""The package's floors (docs/design.md): a module imports only from lower floors (or its own
subpackage), so layers and ops never reach up to the model, the TFP views or the CLI."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "snf_tf"

FLOORS = {
    "_files": 0, "_deprecated": 0, "_compat": 0, "checks": 0,
    "ops": 1, "images": 1, "context": 1, "_environment": 1,
    "layers": 2,
    "data": 3, "callbacks": 3, "bijectors": 3,
    "model": 4,
    "architectures": 5, "export": 5,
    # the lab: every module of the subpackage snf_tf.experiments
    "experiments": 6,
    # old paths of moved lab modules (aliases until 0.3)
    "models": 5, "training": 7, "bench": 8, "cli": 8, "__main__": 9,
}
#: the library: what users build flows from; it imports nothing from the lab
LIBRARY = {unit for unit, floor in FLOORS.items() if floor < FLOORS["experiments"]}


def _unit(parts):
    """The floor unit of a dotted module path below ``snf_tf`` (``layers.glow`` → ``layers``)."""
    return parts[0] if parts else None


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "snf_tf":
                continue
            if len(parts) == 1:  # from snf_tf import x, y
                yield from ((alias.name, node.lineno) for alias in node.names)
            else:
                yield parts[1], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "snf_tf" and len(parts) > 1:
                    yield parts[1], node.lineno


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_floor():
    units = {p.relative_to(PACKAGE).with_suffix("").parts[0] for p in MODULES}
    assert units <= set(FLOORS), sorted(units - set(FLOORS))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_floor(path):
    unit = path.relative_to(PACKAGE).with_suffix("").parts[0]
    for imported, line in _imports(path):
        if imported == unit:
            continue
        assert FLOORS[imported] < FLOORS[unit], (
            f"{path.relative_to(PACKAGE)}:{line} imports snf_tf.{imported} "
            f"(floor {FLOORS[imported]}) from floor {FLOORS[unit]}")


@pytest.mark.slow
def test_keras_knows_the_flow_classes_as_soon_as_it_is_loaded():
    """``import snf_tf`` then ``import keras``: the classes are registered for load_model."""
    import subprocess
    import sys

    code = ("import sys, snf_tf; import keras; objects = keras.saving.get_custom_objects(); "
            "print(all(f'snf_tf>{n}' in objects for n in ('FlowModel', 'SelfNormDense', "
            "'SplitPrior', 'RealNVPCoupling', 'LinearWarmup')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("path", [p for p in MODULES if p.relative_to(PACKAGE).with_suffix(
    "").parts[0] in LIBRARY], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_imports_nothing_from_the_lab(path):
    """Not even lazily: ``snf_tf.experiments`` (configs, runs, run folders, the guard, the CLI,
    the benchmarks) stays out of every library module's imports."""
    lab = [line for imported, line in _imports(path) if imported == "experiments"]
    assert not lab, f"{path.relative_to(PACKAGE)} imports snf_tf.experiments at lines {lab}"
