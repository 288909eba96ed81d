"""gateway/http/ is a leaf: it imports nothing of the gateway outside itself."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.http

PACKAGE = Path(gateway.http.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.ImportFrom):  # relative: counted as inside by construction
            raise AssertionError(f"{path.name} uses a relative import; name the module")
    return modules


def test_the_http_package_imports_nothing_of_the_gateway_but_itself():
    """No errors, config, metrics or anything SageMaker: every gateway.* import is gateway.http."""
    files = sorted(PACKAGE.glob("*.py"))
    assert {path.name for path in files} >= {"server.py", "client.py", "body.py", "clock.py"}
    for path in files:
        outside = {
            module for module in imported_modules(path)
            if module.split(".")[0] == "gateway" and not module.startswith("gateway.http")
        }  # fmt: skip
        assert outside == set(), f"{path.name} imports {sorted(outside)}"
