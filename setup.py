"""Builds sagemaker-gateway; pyproject.toml holds the metadata, this file only the extensions.

``SMGW_COMPILE=1`` at build time compiles the modules on every request's path with mypyc into C
extensions (the container image is built so, bench/README.md says what it buys). Without it the
package is pure Python, as ``make venv``'s editable install must be: no compiled module may
shadow the .py files a developer edits. mypyc is imported only when compiling, so the pure
build needs no mypy. The compiled build type-checks the modules first and must see the
dependencies' types, so it runs with mypy and the dependencies installed in the same environment
and without build isolation: ``SMGW_COMPILE=1 pip install --no-build-isolation .``
"""

import os

from setuptools import setup

# The hot modules: everything a request runs through, except errors.py (its classes are
# subclassed by modules left in Python) and what runs once at start-up.
COMPILED = [
    "gateway/headers.py",
    "gateway/http/body.py",
    "gateway/http/client.py",
    "gateway/http/clock.py",
    "gateway/http/server.py",
    "gateway/proxy.py",
    "gateway/signing.py",
    "gateway/validation.py",
]


def ext_modules() -> list[object]:
    flag = os.environ.get("SMGW_COMPILE", "")
    if flag in ("", "0"):
        return []
    if flag != "1":
        raise SystemExit(f"SMGW_COMPILE={flag!r}: set it to 1 to compile, unset or 0 not to")
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=ext_modules())
