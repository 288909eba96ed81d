"""The journal: one entry per request the emulator received, for tests to inspect.

Entries hold the headers exactly as they arrived and a digest of the body, never the body itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class JournalEntry:
    """One received request, recorded before its endpoint behaviour runs."""

    request_id: str
    method: str
    #: The request target as received: path and, if any, ``?query``.
    raw_path: str
    #: Every header as received: original case, order and repeats.
    headers: tuple[tuple[str, str], ...]
    body_length: int
    #: Hex SHA-256 of the body; None when the body was refused unread for being too large.
    body_sha256: str | None
    #: The ``{EndpointName}`` of an operation path (as routed, percent-decoded); else None.
    endpoint: str | None
    signature_ok: bool
    #: The ErrorType the signature check failed with; None when it passed or never ran.
    signature_error: str | None

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready data (headers as ``[name, value]`` lists)."""
        data = asdict(self)
        data["headers"] = [list(pair) for pair in self.headers]
        return data
