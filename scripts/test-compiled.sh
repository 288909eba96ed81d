#!/usr/bin/env bash
# make test-compiled: the whole test suite against the build the container image ships, with the
# hot modules compiled by mypyc (setup.py, SMGW_COMPILE=1). The tracked files, as they are in the
# working tree, are copied to a new directory under /tmp; the extensions are built in place
# there, and pytest runs there with that directory first on PYTHONPATH (the venv's editable
# install of this tree comes after it). This tree never gets a compiled module that could shadow
# the .py files being edited. The directory is removed on exit, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="${VENV_BIN:-$PWD/.venv/bin}"

work="$(mktemp -d "${TMPDIR:-/tmp}/sagemaker-gateway-compiled.XXXXXX")"
trap 'rm -rf "$work"' EXIT
VENV_BIN="$VENV_BIN" bash scripts/compiled-copy.sh "$work/tree"
cd "$work/tree"

# Every module setup.py lists must now load from its extension, not from its .py file.
export PYTHONPATH="$work/tree"
"$VENV_BIN/python" - <<'PY'
import ast
import importlib
import sys

# setup.py's COMPILED list, read without running setup().
tree = ast.parse(open("setup.py").read())
names = [
    path.value.removesuffix(".py").replace("/", ".")
    for node in tree.body
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED"
    for path in node.value.elts
]
if "gateway.http.server" not in names:
    sys.exit("test-compiled: FAIL: setup.py's COMPILED does not list gateway.http.server")
for name in names:
    path = importlib.import_module(name).__file__ or ""
    if not path.endswith(".so"):
        sys.exit(f"test-compiled: FAIL: {name} is loaded from {path}, not an extension")
    print(f"  {name}: {path.rsplit('/', 1)[-1]}")
PY

"$VENV_BIN/pytest" -p no:cacheprovider
