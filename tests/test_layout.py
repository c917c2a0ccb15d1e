"""The layering rule: the domain (`outreach/`) imports no Celery and no `workers`; only the CLI,
which stands beside `workers/` at the top, reaches into it, inside the commands that need it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "outreach"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, id(node) in top))
    return found


def test_the_domain_imports_no_celery_and_no_workers() -> None:
    for path in PACKAGE.rglob("*.py"):
        for module, at_top in _imports(path):
            root = module.split(".")[0]
            if root in {"celery", "kombu"}:
                raise AssertionError(f"{path.name} imports {module}")
            if root == "workers" and (path.name != "cli.py" or at_top):
                raise AssertionError(f"{path.name} imports {module} at module level")
