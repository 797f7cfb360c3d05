"""The map of what is checked (``tests/reference_checks.py``) covers the public API, names only
what exists, and is the page the docs show (``docs/checks_map.md``).

The public API: every function in ``__all__`` of the library's modules below and, for every class
there, the public methods and properties that snf_tf classes along its MRO define (``__call__``
counts as public; attributes Keras, TensorFlow or TFP define are not snf_tf's). Constants and
class-level capability flags are data, not functions. The lab (``snf_tf.experiments``) and the
aliases of moved modules (``snf_tf.training``, ``snf_tf.models``) are not library API.
"""

import ast
import collections
import importlib
import importlib.util
import inspect
import pathlib

from reference_checks import CHECKED, NOT_NUMERIC, UNCHECKED

ROOT = pathlib.Path(__file__).resolve().parents[1]

MODULES = ("snf_tf", "snf_tf.ops", "snf_tf.layers", "snf_tf.model", "snf_tf.bijectors",
           "snf_tf.export", "snf_tf.context", "snf_tf.callbacks", "snf_tf.architectures",
           "snf_tf.data", "snf_tf.images", "snf_tf.checks")
REGISTRY = {"CHECKED": CHECKED, "NOT_NUMERIC": NOT_NUMERIC, "UNCHECKED": UNCHECKED}


def _in_snf_tf(obj):
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "snf_tf"


def _function_of(value):
    """The function behind a class attribute (method, property, class or static method), or
    None for data."""
    if isinstance(value, property):
        return value.fget
    if isinstance(value, (classmethod, staticmethod)):
        return value.__func__
    return value if inspect.isfunction(value) else None


def public_api():
    """Qualified names of the public functions and methods (see the module docstring)."""
    names = set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if hasattr(module, "__path__") and importlib.util.find_spec(f"{module_name}.{name}"):
                continue  # a submodule (its own __all__ is listed above, or it is the lab)
            obj = getattr(module, name)
            if inspect.isclass(obj):
                for cls in obj.__mro__:
                    if not _in_snf_tf(cls):
                        continue
                    for attribute, value in vars(cls).items():
                        if attribute.startswith("_") and attribute != "__call__":
                            continue
                        if _in_snf_tf(_function_of(value)):
                            names.add(f"{cls.__module__}.{cls.__qualname__}.{attribute}")
            elif inspect.isfunction(obj) and _in_snf_tf(obj):
                names.add(f"{obj.__module__}.{obj.__qualname__}")
    return names


def _listed():
    return [name for entries in REGISTRY.values() for name in entries]


def test_every_public_function_is_in_exactly_one_list():
    api = public_api()
    assert len(api) > 100  # the walk found the API (not an empty import)
    missing = sorted(api - set(_listed()))
    assert not missing, ("public functions in none of CHECKED / NOT_NUMERIC / UNCHECKED of "
                         f"tests/reference_checks.py: {missing}")
    twice = sorted(name for name, count in collections.Counter(_listed()).items() if count > 1)
    assert not twice, f"listed in more than one of CHECKED / NOT_NUMERIC / UNCHECKED: {twice}"


def test_every_entry_names_a_public_function_that_exists():
    stale = sorted(set(_listed()) - public_api())
    assert not stale, ("entries of tests/reference_checks.py that are not (or no longer) public "
                       f"functions or methods: {stale}")


def test_every_entry_has_its_tests_or_its_reason():
    empty = sorted(name for name, tests in CHECKED.items() if not tests)
    assert not empty, f"CHECKED entries without tests: {empty}"
    for table in (NOT_NUMERIC, UNCHECKED):
        blank = sorted(name for name, why in table.items() if not str(why).strip())
        assert not blank, f"entries without a reason: {blank}"


def _test_functions(path):
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_listed_test_exists():
    found, missing = {}, []
    for name, tests in CHECKED.items():
        for test in tests:
            file, _, function = test.partition("::")
            path = ROOT / file
            if not (file.startswith("tests/") and path.is_file() and function.startswith("test_")):
                missing.append(f"{name}: {test}")
                continue
            if file not in found:
                found[file] = _test_functions(path)
            if function not in found[file]:
                missing.append(f"{name}: {test}")
    assert not missing, f"listed tests that do not exist (tests/FILE.py::test_NAME): {missing}"


def test_the_docs_page_is_the_registry():
    spec = importlib.util.spec_from_file_location("checks_map", ROOT / "scripts" / "checks_map.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page = ROOT / "docs" / "checks_map.md"
    assert page.read_text() == script.render(), \
        "docs/checks_map.md is out of date: run python scripts/checks_map.py"
