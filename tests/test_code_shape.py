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


TESTS = Path(__file__).parent


def _imported_modules(tree: ast.AST):
    """Every module an import statement names (`import a.b`, `from a.b import c` gives a.b
    and a.b.c)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_project_imports_no_old_module_path():
    """Old module paths (`pulse_jax._moved`) are for users' code: the library, the launchers
    and the tests use the new ones (a test of the aliases themselves aside)."""
    from pulse_jax import _moved

    repo = Path(pulse_jax.__file__).parent.parent
    old = set(_moved.MOVED) | set(_moved.GONE)
    found = []
    for folder in ("pulse_jax", "experiments", "tests"):
        for path in sorted((repo / folder).rglob("*.py")):
            if path.name in ("_moved.py", "test_moved.py"):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found += [f"{path.relative_to(repo)}: {m}" for m in _imported_modules(tree) if m in old]
    assert found == []


def test_tests_share_code_through_helpers_only():
    # Beside the test files, tests/ holds conftest.py only: what tests share is in helpers/.
    assert [p.name for p in TESTS.glob("*.py") if not p.name.startswith("test_")] == ["conftest.py"]
    test_files = {p.stem for p in TESTS.glob("test_*.py")}
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 40 and "test_run" in test_files  # the walk found the tests
    wrong = [
        f"{path.relative_to(TESTS)} imports {name}"
        for path in files
        for name in _imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if name.split(".")[0] in test_files
    ]
    assert wrong == []  # move what is shared into tests/helpers/
