"""The layering rule: the domain (`outreach/`) imports no Celery and no `workers`; only the CLI,
which stands beside `workers/` at the top, reaches into it, inside the commands that need it.
And the CLI starts without the PDF libraries, which only some commands need."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_the_cli_starts_without_the_pdf_libraries() -> None:
    """WeasyPrint and pypdf took a third of the CLI's start (0.4 s of 1.0 s of imports): they
    are imported by the commands that lay out a letter or merge a print pack, not by all."""
    code = "import sys, outreach.cli; print(sorted({'weasyprint', 'pypdf'} & set(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert run.stdout.strip() == "[]", run.stdout


def test_only_a_forking_worker_loads_weasyprint_before_its_tasks() -> None:
    """A prefork worker's parent imports WeasyPrint for its pool processes to share; the
    embedded worker (solo, threads) shares nothing that way, so its start leaves it out."""
    code = (
        "import importlib, sys, types; app = importlib.import_module('workers.app')\n"
        "for pool in ('solo', 'threads', 'prefork'):\n"
        "    app._load_shared_data(sender=types.SimpleNamespace(pool_cls=pool))\n"
        "    print(pool, 'weasyprint' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert run.stdout.split() == ["solo", "False", "threads", "False", "prefork", "True"]
