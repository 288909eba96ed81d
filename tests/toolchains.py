"""Clients in other languages: their toolchains found (or a clear skip, never in CI), their
programs built once a session and run against the live gateway.

Each client under ``tests/clients/`` is a small program that makes real calls and prints what it
saw as one JSON object a line; the tests assert on those lines and on the emulator's journal.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.emulator.behaviours import MODEL_FAILURE_MESSAGE
from gateway.emulator.errors import ACCOUNT_ID
from tests.conftest import REGION

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
#: The ModelError fields a client program reports for the emulator's ``model-error`` endpoint.
MODEL_ERROR_FIELDS = {
    "original_status_code": 500,
    "original_message": MODEL_FAILURE_MESSAGE,
    "log_stream_arn": (
        f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/sagemaker/Endpoints/model-error"
    ),
}


def require(*commands: str) -> None:
    """Skip the test when a command is missing, saying which; in CI (CI=true) fail instead,
    since CI must run every client test."""
    missing = [command for command in commands if shutil.which(command) is None]
    if not missing:
        return
    message = f"this test needs {', '.join(missing)} on PATH (not found)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI never skips the client tests")
    pytest.skip(message)


def build(
    argv: list[str], *, cwd: Path, timeout_s: float, env: dict[str, str] | None = None
) -> None:
    """Run one build step, failing the test with its output when it fails."""
    result = subprocess.run(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        pytest.fail(f"{' '.join(argv)} failed ({result.returncode}):\n{output}")


async def run_client(
    argv: list[str], *, timeout_s: float = 120.0, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run a client program while the test's event loop keeps serving; its JSON lines.

    A non-zero exit fails the test with the program's output, so a client that could not make
    its calls never passes silently.
    """
    process = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        pytest.fail(f"{argv[0]} exited {process.returncode}:\n{out.decode()}\n{err.decode()}")
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
