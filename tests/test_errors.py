"""Request ids: the service's format, a random UUID."""

from __future__ import annotations

import os
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


def test_a_forked_child_does_not_repeat_its_parents_ids():
    """The random bytes are read in advance; a child draws its own, not the parent's next."""
    new_request_id()  # the parent has bytes in hand
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running pytest's exit
        os.write(write_end, ",".join(new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = pipe.read().decode().split(",")
    os.waitpid(pid, 0)
    parent_ids = [new_request_id() for _ in range(3)]
    assert len(child_ids) == 3 and not set(child_ids) & set(parent_ids)
