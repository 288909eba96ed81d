"""The gateway's own HTTP/1.1 server side, over raw sockets: keep-alive, pipelining, Expect,
HTTP/1.0, HEAD, the head limits, idle and slow callers, and the drain on stop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from gateway.http.server import MAX_HEAD_BYTES, MAX_HEADERS
from tests.rawhttp import build_request, raw_request, read_response
from tests.waiting import poll

INVOKE = "/endpoints/echo/invocations"


def keep_alive_request(body: bytes, target: str = INVOKE) -> bytes:
    return build_request("POST", target, [("Connection", "keep-alive")], body)


async def open_connection(gateway):
    return await asyncio.open_connection(gateway.host, gateway.port)


async def open_small_window_connection(gateway, *, small_gateway_buffers: bool = False):
    """A connection whose receive buffer takes next to nothing, so that what the gateway sends
    waits until the test reads; with ``small_gateway_buffers`` the gateway's send buffers are
    small too (accepted sockets take the listener's), so that an answer waits in the gateway
    rather than in the kernel. Returns (reader, writer)."""
    if small_gateway_buffers:
        for listening in gateway.server.sockets:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (gateway.host, gateway.port))
    return await asyncio.open_connection(sock=sock)


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
        ([b"Host: y", b"Content-Length: 2"], "exactly one Host header"),
        ([b"Transfer-Encoding: gzip, chunked"], "Transfer-Encoding other than chunked"),
    ],
    ids=["large-head", "many-headers", "two-lengths", "two-hosts", "gzip-coded"],
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
            await writer.drain()
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


async def test_an_http_1_1_request_without_host_is_refused(gateway, journal):
    """RFC 9112: an HTTP/1.1 request without a Host header is a 400 (HTTP/1.0 may omit it)."""
    refused = await raw_request(
        gateway.host, gateway.port,
        b"POST /endpoints/echo/invocations HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    )  # fmt: skip
    assert refused.status == 400
    assert "exactly one Host header" in refused.json()["message"]
    answered = await raw_request(
        gateway.host, gateway.port,
        b"POST /endpoints/echo/invocations HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
    )  # fmt: skip
    assert answered.status == 200
    assert len(journal) == 1


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


async def test_a_caller_that_reads_slowly_gets_every_byte(start_gateway, journal):
    """A 5 MB answer to a caller with a tiny receive window that starts reading only once the
    upstream has the request: the gateway waits for it (write back-pressure), and every byte
    arrives in order."""
    gateway = await start_gateway(upstream_timeout_s=30.0)  # the wait is not the point here
    body = bytes(range(256)) * 20_480  # 5,242,880 bytes
    reader, writer = await open_small_window_connection(gateway)
    writer.write(
        build_request("POST", INVOKE, [("Content-Type", "application/octet-stream")], body)
    )
    await poll(lambda: len(journal) == 1)
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
    await poll(lambda: requests_counted(registry, status="499") == 1)
    assert journal == []


async def test_a_caller_that_stops_reading_is_cut_at_the_deadline(start_gateway, registry):
    """A caller that takes none of a 5 MB answer holds its connection only until
    upstream_timeout: then the answer is cut, the connection closed, the error counted."""
    gateway = await start_gateway(upstream_timeout_s=1.0)
    _, writer = await open_small_window_connection(gateway)
    writer.write(build_request("POST", INVOKE, [], b"x" * 5_242_880))
    async with asyncio.timeout(10):
        await writer.drain()
    assert gateway.server.open_connections == 1
    await poll(lambda: gateway.server.open_connections == 0, deadline_s=10)
    writer.close()
    assert requests_counted(registry, error="GatewayTimeout") == 1


async def test_a_closing_connection_whose_caller_takes_nothing_is_cut(start_gateway):
    """An answer sent whole (here /metrics, made large) to a caller that asked for the close
    and reads nothing: the close does not wait forever for it, only keepalive_timeout."""
    gateway = await start_gateway(keepalive_timeout_s=0.5)
    for n in range(40):  # each endpoint name adds its series to the exposition
        data = build_request("POST", f"/endpoints/no-such-endpoint-{n}/invocations", [], b"{}")
        await raw_request(gateway.host, gateway.port, data)
    exposition = await raw_request(gateway.host, gateway.port, build_request("GET", "/metrics", []))
    assert len(exposition.body) > 200_000
    _, writer = await open_small_window_connection(gateway, small_gateway_buffers=True)
    writer.write(build_request("GET", "/metrics", []))  # with Connection: close
    await poll(lambda: gateway.server.open_connections == 1)
    await poll(lambda: gateway.server.open_connections == 0, deadline_s=10)
    writer.close()


def requests_counted(registry, **labels: str) -> float:
    """requests_total summed over the series whose labels include ``labels``."""
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "sagemaker_gateway_requests_total"
        and labels.items() <= sample.labels.items()
    )


async def test_a_pipelined_head_split_across_reads_after_a_large_body_is_answered(gateway):
    """A 40 KB body, then the next request's head in two writes: both are answered (the head
    limit counts the head's own bytes, not the body before it)."""
    first, second = keep_alive_request(b"1" * 40_000), keep_alive_request(b"{}")
    reader, writer = await open_connection(gateway)
    writer.write(first + second[:10])
    await writer.drain()
    async with asyncio.timeout(10):
        assert (await read_response(reader)).status == 200
        writer.write(second[10:])
        answer = await read_response(reader)
    writer.close()
    assert (answer.status, answer.body) == (200, b"{}")


async def test_an_answer_sent_before_the_body_arrived_says_connection_close(gateway, journal):
    """Refused before its body was sent, a request's answer announces the close that follows,
    so a keep-alive client does not send its next request on a dying connection."""
    head = build_request(
        "POST", "/endpoints/Bad_Name/invocations",
        [("Connection", "keep-alive"), ("Content-Length", "2")],
    )  # fmt: skip
    reader, writer = await open_connection(gateway)
    writer.write(head)
    async with asyncio.timeout(10):
        response = await read_response(reader)
        writer.write(b"{}")
        assert await reader.read() == b""
    writer.close()
    assert response.status == 400
    assert response.headers["connection"] == "close"
    assert journal == []


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (b"2\r\n{}\r\nzz\r\n", "Invalid character in chunk size"),
        (b"2\r\n{}\r\n0\r\nX-Trailer: a\r\n\r\n", "trailer fields are not accepted"),
        (b"1\r\nx\r\n" * 200_000 + b"0\r\n\r\n", "framing"),
    ],
    ids=["bad-chunk-size", "trailer", "one-byte-chunks"],
)
async def test_a_broken_chunked_body_is_a_400_at_once(start_gateway, journal, body, rule):
    """A chunked body whose framing breaks after its head was accepted: the request waiting
    for it gets a 400 naming the rule at once (not a 408 at body_timeout), nothing is
    forwarded, and the connection closes."""
    gateway = await start_gateway(body_timeout_s=30.0)
    head = build_request("POST", INVOKE, [("Transfer-Encoding", "chunked")])
    reader, writer = await open_connection(gateway)
    writer.write(head)
    await writer.drain()
    writer.write(body)
    async with asyncio.timeout(10):
        response = await read_response(reader)
        assert await reader.read() == b""
    writer.close()
    assert response.status == 400
    assert response.headers["x-amzn-errortype"] == "ValidationError"
    assert rule in response.json()["message"]
    assert journal == []


def converse(
    host: str,
    port: int,
    sends: list[tuple[float, bytes]],
    read_after_s: float,
    sent: list[threading.Event] | None = None,
):
    """On a socket with a tiny receive buffer: send each part at its time (seconds from
    connecting), read nothing until ``read_after_s``, then read to the close; ``sent[i]`` is
    set once part i is sent. The pacing is the behaviour under test: a caller still sending,
    and reading late. Returns what arrived and how the connection ended ("clean" or
    "reset"). Runs in a thread."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.settimeout(10)
        sock.connect((host, port))
        started = time.monotonic()
        for index, (at_s, data) in enumerate(sends):
            time.sleep(max(0.0, started + at_s - time.monotonic()))
            sock.sendall(data)
            if sent is not None:
                sent[index].set()
        time.sleep(max(0.0, started + read_after_s - time.monotonic()))
        received, ending = b"", "clean"
        try:
            while data := sock.recv(65536):
                received += data
        except ConnectionResetError:
            ending = "reset"
    return received, ending


def first_answer(received: bytes) -> tuple[bytes, bytes]:
    """The head and the Content-Length-framed body of the first answer in ``received``."""
    head, _, rest = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert len(rest) >= length, f"{len(rest)} of {length} body bytes arrived"
    return head, rest[:length]


@pytest.mark.parametrize("stop_midway", [False, True], ids=["close", "stop-while-closing"])
async def test_closing_with_a_body_unread_does_not_reset_the_answer(gateway, stop_midway):
    """/metrics asked with a 1 MB body it never reads, by a caller that reads slowly: the
    connection closes after the whole answer, without a reset that would cut it short (also
    when the gateway is stopped meanwhile)."""
    for n in range(10):  # a few more series, so that the answer outgrows the socket buffers
        data = build_request("POST", f"/endpoints/no-such-endpoint-{n}/invocations", [], b"{}")
        await raw_request(gateway.host, gateway.port, data)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    part = b"x" * 200_000  # still sending when the gateway has answered (and is stopped)
    sends = [(0.0, request + part), (0.4, part), (0.8, part)]
    sent = [threading.Event() for _ in sends]
    caller = asyncio.create_task(
        asyncio.to_thread(converse, gateway.host, gateway.port, sends, 1.0, sent)
    )
    if stop_midway:  # answered and closing, while the caller still has a part to send
        await poll(sent[1].is_set)
        await gateway.server.stop(grace_s=0)
    received, ending = await caller
    _, body = first_answer(received)
    assert ending == "clean"
    assert body.startswith(b"# HELP")


async def test_a_stop_with_pipelined_requests_unread_does_not_reset_the_answer(gateway, journal):
    """Stopped while answering the first of pipelined requests (more arriving while reading
    is paused): the first answer arrives whole, then the connection closes without a reset."""
    body = b"z" * 40_000
    first = keep_alive_request(body, "/endpoints/slow-500/invocations")
    then = build_request("GET", "/healthz", [("Connection", "keep-alive")])
    caller = asyncio.create_task(
        asyncio.to_thread(
            converse, gateway.host, gateway.port, [(0, first + then), (0.3, then)], 1.5
        )
    )
    await poll(lambda: len(journal) == 1)  # the slow call is under way
    await gateway.server.stop(grace_s=0)
    received, ending = await caller
    head, answer = first_answer(received)
    assert head.startswith(b"HTTP/1.1 200")
    assert answer == body
    assert ending == "clean"


async def test_pipelined_requests_wait_for_a_caller_that_does_not_read(start_gateway, journal):
    """50 pipelined 64 KB echoes from a caller that reads nothing: the gateway stops taking
    requests once an answer waits unread, and cuts the connection at keepalive_timeout,
    rather than answering all 50 into its own memory."""
    gateway = await start_gateway(keepalive_timeout_s=0.5)
    _, writer = await open_small_window_connection(gateway, small_gateway_buffers=True)
    writer.write(keep_alive_request(b"y" * 65_536) * 50)
    await poll(lambda: gateway.server.open_connections == 1)
    await poll(lambda: gateway.server.open_connections == 0, deadline_s=10)
    writer.close()
    assert 1 <= len(journal) < 10
