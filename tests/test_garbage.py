"""What a request leaves behind: nothing the garbage collector has to find.

An object in a reference cycle is freed only by a collection, and a collection of a young
generation full of them took about half a millisecond here: a pause in whichever request was
under way (`bench/tail.py` found it in two thirds of the slowest 1 %). So every object a
forwarded request makes must be freed by reference counting as soon as it is done with.
"""

from __future__ import annotations

import asyncio
import gc
from urllib.parse import urlsplit

import pytest

from tests.rawhttp import build_request, read_response

REQUESTS = 20


def _ours(objects: list[object]) -> list[str]:
    """The gateway's own objects among ``objects`` (the in-process emulator's left out)."""
    names = []
    for thing in objects:
        module = type(thing).__module__
        if module.startswith("gateway.") and not module.startswith("gateway.emulator"):
            names.append(f"{module}.{type(thing).__qualname__}")
    return names


@pytest.mark.parametrize("operation", ["invocations", "invocations-response-stream"])
async def test_forwarded_requests_leave_no_reference_cycles(gateway_url, operation):
    """Twenty requests on one keep-alive connection, with the collector off: collecting
    afterwards finds none of the gateway's objects (a cycle would have kept them)."""
    address = urlsplit(gateway_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    request = build_request(
        "POST",
        f"/endpoints/echo/{operation}",
        [("Content-Type", "application/json"), ("Connection", "keep-alive")],
        b'{"x": 1}',
    )
    # The first request opens what lives on (the upstream connection, label children).
    writer.write(request)
    assert (await read_response(reader)).status == 200
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(REQUESTS):
            writer.write(request)
            assert (await read_response(reader)).status == 200
        gc.collect()
        assert _ours(gc.garbage) == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        writer.close()
