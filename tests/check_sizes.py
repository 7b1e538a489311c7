"""Fail when a module of sat_helpers/ is over 400 lines or a function over 60 (make lint).

The limits keep each module one concept a learner can read beside the notebooks
(DESIGN.md, "How the package is layered").
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
PACKAGE = Path(__file__).resolve().parent.parent / "sat_helpers"
EXEMPT: set[str] = set()  # module paths relative to sat_helpers/ allowed past the limits


def problems(package: Path = PACKAGE, exempt: set[str] = EXEMPT) -> list[str]:
    """Every module over MAX_MODULE_LINES and function over MAX_FUNCTION_LINES, as messages."""
    found = []
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        if name in exempt:
            continue
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES}); split it")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno}: {node.name} is {length} lines "
                                 f"(at most {MAX_FUNCTION_LINES})")
    return found


if __name__ == "__main__":
    issues = problems()
    print("\n".join(issues) or "module and function sizes within the limits")
    sys.exit(1 if issues else 0)
