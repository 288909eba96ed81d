"""Request ids: the service's format, a random UUID."""

from __future__ import annotations

import uuid

from gateway.errors import new_request_id


def test_request_ids_are_distinct_version_4_uuids():
    """Each id reads back as an RFC 4122 version-4 UUID in canonical form, and none repeats."""
    ids = [new_request_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == request_id
