"""Every ``python -m`` entry point runs its ``main`` only after the whole module is defined.

``python -m`` executes the module top to bottom: a helper defined below the
``if __name__ == "__main__":`` block does not exist yet when ``main`` runs, though
every in-process test (which imports the module first) passes. That is how
``python -m espnet_mobile.sensitivity`` once failed with a NameError.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for folder in ("espnet_mobile", "converters") for p in (ROOT / folder).rglob("*.py")
                 if '__name__ == "__main__"' in p.read_text())


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
        and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"


def test_entry_points_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in MODULES}
    assert {"espnet_mobile/convert.py", "espnet_mobile/sensitivity.py", "espnet_mobile/bench.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_main_guard_is_the_last_statement(path: Path) -> None:
    body = ast.parse(path.read_text()).body
    guards = [i for i, node in enumerate(body) if _is_main_guard(node)]
    assert guards == [len(body) - 1], f"{path.name}: statements after the __main__ block run too late under -m"
