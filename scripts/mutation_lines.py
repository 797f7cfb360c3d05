"""Write a patch that marks the numeric lines of chosen functions as added, for
``mutmut run --use-patch-file``: mutants are then made on those lines only.

    python scripts/mutation_lines.py snf_tf/model.py:log_prob,sample snf_tf/layers/base.py:draw \
        > /tmp/numeric.patch

``FILE:NAME,NAME`` picks functions and methods by name (``NAME`` or ``Class.NAME``; ``FILE:*``
takes every function of the file). Docstrings and ``raise`` statements are left out: the
mutation run asks whether the numbers a function returns are checked, and its test selection
does not include the bad-input tests that check error messages.
"""

import ast
import difflib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _functions(tree):
    """``(qualified name, node)`` for every function and method of a module."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                yield from walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
    return walk(tree, "")


def numeric_lines(source, names):
    """Line numbers (1-based) of the chosen functions' bodies, without docstrings and raises."""
    tree = ast.parse(source)
    chosen, found = set(), set()
    for qualified, node in _functions(tree):
        short = qualified.rsplit(".", 1)[-1]
        if "*" not in names and qualified not in names and short not in names:
            continue
        found.update({qualified, short})
        chosen.update(range(node.body[0].lineno, node.end_lineno + 1))
        for inner in ast.walk(node):
            skip = isinstance(inner, ast.Raise) or (
                isinstance(inner, ast.Expr) and isinstance(inner.value, ast.Constant)
                and isinstance(inner.value.value, str))
            if skip:
                chosen.difference_update(range(inner.lineno, inner.end_lineno + 1))
    missing = set(names) - found - {"*"}
    if missing:
        raise SystemExit(f"mutation_lines.py: no function named {sorted(missing)}")
    lines = source.splitlines()
    return sorted(n for n in chosen if lines[n - 1].strip() and
                  not lines[n - 1].strip().startswith("#"))


def patch(path, names):
    source = (ROOT / path).read_text()
    keep = set(numeric_lines(source, names))
    lines = source.splitlines(keepends=True)
    before = [line for n, line in enumerate(lines, 1) if n not in keep]
    return "".join(difflib.unified_diff(before, lines, path, path, n=0))


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    for spec in argv:
        path, _, names = spec.partition(":")
        sys.stdout.write(patch(path, [n for n in names.split(",") if n] or ["*"]))


if __name__ == "__main__":
    main(sys.argv[1:])
