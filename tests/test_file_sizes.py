"""Files a newcomer can read: no Python file over 400 lines in detector/, tools/, scripts/ or benchmarks/, and no
function (or method) over 80 lines, decorators and docstring included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("detector", "tools", "scripts", "benchmarks")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def python_files() -> list[Path]:
    return sorted(path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py"))


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function longer than ``limit`` lines, from its first decorator to its last line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            length = node.end_lineno - first + 1
            if length > limit:
                found.append((node.name, length))
    return found


def test_the_checks_see_what_they_check():
    body = "\n".join(f"    x = {i}" for i in range(81))
    assert long_functions(f"@decorator\ndef f():\n{body}\n", MAX_FUNCTION_LINES) == [("f", 83)]
    assert long_functions("def g():\n    return 1\n", MAX_FUNCTION_LINES) == []
    assert len(python_files()) > 100


def test_no_file_over_400_lines():
    too_long = {str(path.relative_to(ROOT)): count for path in python_files()
                if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert too_long == {}


def test_no_function_over_80_lines():
    too_long = {f"{path.relative_to(ROOT)}:{name}": length for path in python_files()
                for name, length in long_functions(path.read_text(encoding="utf-8"), MAX_FUNCTION_LINES)}
    assert too_long == {}
