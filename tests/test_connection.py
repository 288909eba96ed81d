"""The gateway's own HTTP/1.1 server side, over raw sockets: keep-alive, pipelining, Expect,
HTTP/1.0, HEAD, the head limits, idle and slow callers, and the drain on stop."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from gateway.connection import MAX_HEAD_BYTES, MAX_HEADERS
from tests.rawhttp import build_request, raw_request, read_response
from tests.waiting import poll

INVOKE = "/endpoints/echo/invocations"


def keep_alive_request(body: bytes, target: str = INVOKE) -> bytes:
    return build_request("POST", target, [("Connection", "keep-alive")], body)


async def open_connection(gateway):
    return await asyncio.open_connection(gateway.host, gateway.port)


async def test_one_connection_carries_many_requests(gateway, journal):
    """Keep-alive: three requests in turn on one connection, each answered with its own body."""
    reader, writer = await open_connection(gateway)
    async with asyncio.timeout(10):
        for n in range(3):
            writer.write(keep_alive_request(b'{"n": %d}' % n))
            response = await read_response(reader)
            assert (response.status, response.body) == (200, b'{"n": %d}' % n)
            assert "connection" not in response.headers
    writer.close()
    assert len(journal) == 3
    assert gateway.server.open_connections <= 1


async def test_pipelined_requests_are_answered_in_order(gateway, journal):
    """Two requests sent in one write get their answers in the order they were sent."""
    reader, writer = await open_connection(gateway)
    writer.write(keep_alive_request(b'{"n": 1}') + keep_alive_request(b'{"n": 2}'))
    async with asyncio.timeout(10):
        first, second = await read_response(reader), await read_response(reader)
    writer.close()
    assert (first.body, second.body) == (b'{"n": 1}', b'{"n": 2}')
    assert [entry.body_length for entry in journal] == [8, 8]


async def test_expect_100_continue_asks_for_the_body_only_when_it_is_wanted(gateway, journal):
    """A valid request gets 100 Continue before its body is sent; an invalid one is refused
    at once, without 100 Continue, and its body is never asked for."""
    headers = [("Expect", "100-continue"), ("Content-Length", "2")]
    reader, writer = await open_connection(gateway)
    async with asyncio.timeout(10):
        writer.write(build_request("POST", INVOKE, headers))
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        response = await read_response(reader)
    writer.close()
    assert (response.status, response.body) == (200, b"{}")

    reader, writer = await open_connection(gateway)
    async with asyncio.timeout(10):
        writer.write(build_request("POST", "/endpoints/no_such_name/invocations", headers))
        refused = await read_response(reader)
        assert await reader.read() == b""  # closed: the body it refused is not read
    writer.close()
    assert refused.status == 400
    assert refused.headers["x-amzn-errortype"] == "ValidationError"
    assert len(journal) == 1


async def test_an_http_1_0_request_is_answered_and_the_connection_closed(gateway, journal):
    """HTTP/1.0 is answered with a framed body and Connection: close, then closed."""
    reader, writer = await open_connection(gateway)
    writer.write(
        b"POST /endpoints/echo/invocations HTTP/1.0\r\nContent-Length: 2\r\n"
        b"Connection: keep-alive\r\n\r\n{}"
    )
    async with asyncio.timeout(10):
        response = await read_response(reader)
        assert await reader.read() == b""
    writer.close()
    assert (response.status, response.body) == (200, b"{}")
    assert response.headers["connection"] == "close"


async def test_a_head_request_gets_headers_and_no_body(gateway):
    """HEAD /healthz: 200 with the length GET would have, and no body bytes before the next
    answer on the same connection."""
    reader, writer = await open_connection(gateway)
    writer.write(build_request("HEAD", "/healthz", [("Connection", "keep-alive")]))
    writer.write(build_request("GET", "/healthz", [("Connection", "keep-alive")]))
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        get = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {len(get.body)}".encode() in head
    assert json.loads(get.body) == {"status": "ok"}


@pytest.mark.parametrize(
    ("head_lines", "rule"),
    [
        ([b"X-Big: " + b"a" * MAX_HEAD_BYTES], f"larger than {MAX_HEAD_BYTES} bytes"),
        ([b"X-H%d: v" % i for i in range(MAX_HEADERS + 1)], f"more than {MAX_HEADERS} headers"),
        ([b"Content-Length: 2", b"Content-Length: 3"], "Duplicate Content-Length"),
        ([b"Connection: Upgrade", b"Upgrade: h2c"], "protocol upgrades are not supported"),
    ],
    ids=["large-head", "many-headers", "two-lengths", "upgrade"],
)
async def test_framing_errors_are_sagemaker_shaped_and_name_the_rule(
    gateway, journal, registry, head_lines, rule
):
    """What the HTTP layer refuses is a 400 ValidationError naming the rule, counted as
    bad_http; the connection closes and nothing is forwarded."""
    data = b"\r\n".join([b"POST " + INVOKE.encode() + b" HTTP/1.1", b"Host: x", *head_lines])
    reader, writer = await open_connection(gateway)
    async with asyncio.timeout(10):
        for start in range(0, len(data), 4096):  # in pieces, as a slow sender would
            writer.write(data[start : start + 4096])
            await asyncio.sleep(0)
        writer.write(b"\r\n\r\n{}")
        response = await read_response(reader)
        assert await reader.read() == b""
    writer.close()
    assert response.status == 400
    assert response.headers["x-amzn-errortype"] == "ValidationError"
    assert response.headers["x-amzn-requestid"]
    assert response.json()["message"].startswith("The request is not valid HTTP/1.1: ")
    assert rule in response.json()["message"]
    assert (
        registry.get_sample_value(
            "sagemaker_gateway_rejected_requests_total", {"reason": "bad_http"}
        )
        == 1
    )
    assert journal == []


async def test_an_idle_keep_alive_connection_closes_after_keepalive_timeout(start_gateway):
    """After its answer, a connection that sends nothing more is closed at keepalive_timeout."""
    gateway = await start_gateway(keepalive_timeout_s=0.3)
    reader, writer = await open_connection(gateway)
    writer.write(keep_alive_request(b"{}"))
    async with asyncio.timeout(5):
        assert (await read_response(reader)).status == 200
        assert await reader.read() == b""
    writer.close()
    await poll(lambda: gateway.server.open_connections == 0)


async def test_a_caller_that_reads_slowly_gets_every_byte(gateway):
    """A 5 MB answer to a caller that waits before reading: the gateway waits for it (write
    back-pressure), and every byte arrives in order."""
    body = bytes(range(256)) * 20_480  # 5,242,880 bytes
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port, limit=1 << 16)
    writer.write(
        build_request("POST", INVOKE, [("Content-Type", "application/octet-stream")], body)
    )
    await asyncio.sleep(0.5)
    async with asyncio.timeout(20):
        response = await read_response(reader)
    writer.close()
    assert response.status == 200
    assert response.body == body


async def test_stop_closes_idle_connections_and_answers_the_one_in_flight(start_gateway, journal):
    """On stop, an idle keep-alive connection is closed at once; a request in flight gets its
    answer, marked Connection: close, and then its connection closes."""
    gateway = await start_gateway()
    idle_reader, idle_writer = await open_connection(gateway)
    idle_writer.write(keep_alive_request(b"{}"))
    busy_reader, busy_writer = await open_connection(gateway)
    async with asyncio.timeout(10):
        assert (await read_response(idle_reader)).status == 200
        busy_writer.write(keep_alive_request(b"{}", "/endpoints/slow-500/invocations"))
        await poll(lambda: len(journal) == 2)
        stopping = asyncio.create_task(gateway.server.stop(grace_s=0))
        assert await idle_reader.read() == b""
        answer = await read_response(busy_reader)
        assert await busy_reader.read() == b""
        await stopping
    idle_writer.close()
    busy_writer.close()
    assert answer.status == 200
    assert answer.headers["connection"] == "close"


async def test_a_request_cut_short_by_a_half_close_is_not_forwarded(gateway, journal, registry):
    """A body that can never be completed: no answer, nothing forwarded, counted as 499."""
    reader, writer = await open_connection(gateway)
    writer.write(build_request("POST", INVOKE, [("Content-Length", "10")], b"{}"))
    await poll(lambda: registry.get_sample_value(
        "sagemaker_gateway_in_flight_requests", {"endpoint": "echo"}) == 1)  # fmt: skip
    writer.write_eof()
    async with asyncio.timeout(10):
        assert await reader.read() == b""
    writer.close()
    await poll(lambda: status_count(registry, "499") == 1)
    assert journal == []


async def test_a_caller_that_stops_reading_is_cut_at_the_deadline(start_gateway, registry):
    """A caller that takes none of a 5 MB answer holds its connection only until
    upstream_timeout: then the answer is cut, the connection closed, the error counted."""
    gateway = await start_gateway(upstream_timeout_s=1.0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # take next to nothing
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (gateway.host, gateway.port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(build_request("POST", INVOKE, [], b"x" * 5_242_880))
    async with asyncio.timeout(10):
        await writer.drain()
    assert gateway.server.open_connections == 1
    await poll(lambda: gateway.server.open_connections == 0, deadline_s=10)
    writer.close()
    assert error_count(registry, "GatewayTimeout") == 1


async def test_a_closing_connection_whose_caller_takes_nothing_is_cut(start_gateway):
    """An answer sent whole (here /metrics, made large) to a caller that asked for the close
    and reads nothing: the close does not wait forever for it, only keepalive_timeout."""
    gateway = await start_gateway(keepalive_timeout_s=0.5)
    for n in range(40):  # each endpoint name adds its series to the exposition
        data = build_request("POST", f"/endpoints/no-such-endpoint-{n}/invocations", [], b"{}")
        await raw_request(gateway.host, gateway.port, data)
    exposition = await raw_request(gateway.host, gateway.port, build_request("GET", "/metrics", []))
    assert len(exposition.body) > 200_000
    # Small socket buffers on both sides (accepted sockets take the listener's), so that most
    # of the answer waits in the gateway rather than in the kernel.
    for listening in gateway.server.sockets:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (gateway.host, gateway.port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(build_request("GET", "/metrics", []))  # with Connection: close
    await poll(lambda: gateway.server.open_connections == 1)
    await poll(lambda: gateway.server.open_connections == 0, deadline_s=10)
    writer.close()


def status_count(registry, status: str) -> float:
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "sagemaker_gateway_requests_total" and sample.labels["status"] == status
    )


def error_count(registry, error: str) -> float:
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "sagemaker_gateway_requests_total" and sample.labels["error"] == error
    )
