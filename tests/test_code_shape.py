"""The library's shape rules (issue 13): no function over 80 lines, docstring included."""

import ast
from pathlib import Path

import pulse_jax

LIMIT = 80


def _functions(root: Path):
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path.relative_to(root.parent), node


def test_no_library_function_is_over_80_lines():
    root = Path(pulse_jax.__file__).parent
    found = list(_functions(root))
    assert len(found) > 200  # the walk found the library
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, node in found
        if node.end_lineno - node.lineno + 1 > LIMIT
    ]
    assert long == []
