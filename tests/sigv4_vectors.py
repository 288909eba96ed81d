"""The official SigV4 test vectors in tests/data/sigv4-testsuite, parsed for parametrized tests.

Shared by the signer's tests and the emulator verifier's tests: the vectors are data, so both
sides reading them through one parser shares no signing logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
SERVICE = "service"
AMZ_DATE = "20150830T123600Z"


def suite_dir() -> Path:
    """Where the vectors are: in the repository, with their LICENSE and NOTICE (they are data)."""
    return Path(__file__).resolve().parent / "data" / "sigv4-testsuite"


@dataclass(frozen=True)
class Vector:
    """One case: the request as sent, and the expected canonical request, string and header."""

    name: str
    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes
    creq: str
    sts: str
    authz: str
    token: str | None


def _parse_request(text: str) -> tuple[str, str, str, list[tuple[str, str]], bytes]:
    head, _, body = text.partition("\n\n")
    request_line, *lines = head.split("\n")
    # The target may hold a literal space (normalize-path/get-space): split on the outer spaces.
    method, _, rest = request_line.partition(" ")
    target, _, _version = rest.rpartition(" ")
    raw_path, _, raw_query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and headers:  # continuation of a multi-line value
            name, value = headers[-1]
            headers[-1] = (name, f"{value}\n{line}")
            continue
        name, _, value = line.partition(":")
        headers.append((name, value))
    return method, raw_path, raw_query, headers, body.encode()


def load_vectors() -> list[Vector]:
    """Every case in the suite, found by walking it (none hand-picked)."""
    root = suite_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"SigV4 test suite not found at {root}")
    vectors = []
    for req in sorted(root.rglob("*.req")):
        base = req.with_suffix("")
        method, raw_path, raw_query, headers, body = _parse_request(req.read_text())
        creq = base.with_suffix(".creq").read_text()
        token = None
        for line in creq.split("\n"):
            if line.startswith("x-amz-security-token:"):
                token = line.partition(":")[2]
        vectors.append(
            Vector(
                name=str(req.parent.relative_to(root)),
                method=method,
                raw_path=raw_path,
                raw_query=raw_query,
                headers=headers,
                body=body,
                creq=creq,
                sts=base.with_suffix(".sts").read_text(),
                authz=base.with_suffix(".authz").read_text(),
                token=token,
            )
        )
    return vectors
