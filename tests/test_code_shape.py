"""The shape of the code a newcomer reads: no function in ``src/`` longer than a screen or two."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 80


def long_functions(root: Path, limit: int) -> list[str]:
    """``path:line name (N lines)`` for every function or method under ``root`` longer than ``limit`` lines, its
    decorators and docstring included."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - start + 1
                if length > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_measure_counts_decorators_and_bodies(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(5))
    (tmp_path / "m.py").write_text(f"@decorator\ndef short():\n{body}\n\n\ndef one():\n    return 1\n")
    assert long_functions(tmp_path, 7) == []
    assert long_functions(tmp_path, 6) == ["m.py:2 short (7 lines)"]


def test_no_function_in_src_is_longer_than_the_limit():
    assert long_functions(SRC, MAX_FUNCTION_LINES) == []
