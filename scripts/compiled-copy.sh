#!/usr/bin/env bash
# scripts/compiled-copy.sh DIR: the tracked files, as they are in the working tree, copied to DIR
# (created, must not exist yet) with the hot modules compiled there by mypyc (setup.py,
# SMGW_COMPILE=1): the build the container image ships, for make test-compiled and make bench.
# This tree never gets a compiled module that could shadow the .py files being edited. Run the
# copy with DIR as the working directory or first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="${VENV_BIN:-$PWD/.venv/bin}"
dest="$1"
mkdir "$dest"
# --ignore-failed-read: a tracked file deleted in the working tree is left out, not an error.
git ls-files -z | tar --null --ignore-failed-read -T - -cf - | tar -C "$dest" -xf -
cd "$dest"
started_at=$(date +%s)
SMGW_COMPILE=1 "$VENV_BIN/python" setup.py --quiet build_ext --inplace --parallel "$(nproc)" \
    >build.log 2>&1 || { tail -n 40 build.log >&2; echo "compiled-copy: FAIL: mypyc build" >&2; exit 1; }
echo "compiled in $(($(date +%s) - started_at)) s: $dest"
