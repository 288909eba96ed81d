"""The upstream client over real loopback sockets, against a raw asyncio server that records
every byte it receives and answers with exactly the bytes each test scripts."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme
import uvloop

from gateway.http.client import (
    ConnectFailed,
    ConnectTimedOut,
    Disconnected,
    ProtocolError,
    TLSFailed,
    UpstreamPool,
    encode_head,
)
from gateway.retry import is_connect_failure
from tests.waiting import poll

# pytest-asyncio 1.x prefers a conftest hook, which would apply to every module; this override
# is for this module alone, and still works.
pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test runs on asyncio's own loop and on uvloop, which the gateway serves with:
    their transports differ in how they report closes, resets and TLS failures."""
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


SIGNED = [
    ("Host", "runtime.test"),
    ("X-Amz-Date", "20240101T000000Z"),
    ("Authorization", "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sagemaker/aws4_request"),
]
TARGET = "/endpoints/echo/invocations"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def signed_headers(body: bytes) -> list[tuple[str, str]]:
    return [*SIGNED, ("Content-Length", str(len(body)))]


@dataclass
class Request:
    head: bytes
    body: bytes


@dataclass
class Connection:
    """What one client connection delivered, and its server end."""

    writer: asyncio.StreamWriter
    requests: list[Request] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


#: A test's script: called for each request with the connection, writes (or not) an answer.
Answer = Callable[[Connection, Request], Awaitable[None]]


class RawUpstream:
    """A loopback HTTP/1.1 server that parses requests just enough to record them."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections: list[Connection] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def requests(self) -> list[Request]:
        return [request for connection in self.connections for request in connection.requests]

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(writer)
        self.connections.append(connection)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = Request(head, await reader.readexactly(length))
                connection.requests.append(request)
                await self.answer(connection, request)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            connection.closed.set()
            writer.close()


@pytest.fixture
async def start_upstream() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    started: list[RawUpstream] = []

    async def start(answer: Answer, ssl_context: ssl.SSLContext | None = None) -> RawUpstream:
        upstream = RawUpstream(answer)
        await upstream.start(ssl_context)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        assert upstream.server is not None
        upstream.server.close()
        for connection in upstream.connections:
            connection.writer.close()


@pytest.fixture
async def open_pool() -> AsyncIterator[Callable[..., UpstreamPool]]:
    pools: list[UpstreamPool] = []

    def open_(url: str, **kwargs: object) -> UpstreamPool:
        kwargs.setdefault("max_connections", 8)
        kwargs.setdefault("connect_timeout_s", 2.0)
        pool = UpstreamPool(url, **kwargs)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    yield open_
    for pool in pools:
        await pool.close()


def url_of(upstream: RawUpstream) -> str:
    return f"http://127.0.0.1:{upstream.port}"


async def answer_ok(connection: Connection, request: Request) -> None:
    connection.writer.write(OK)


def answer_ok_after(release: asyncio.Event) -> Answer:
    """Answer 200 ok once ``release`` is set."""

    async def answer(connection: Connection, request: Request) -> None:
        await release.wait()
        connection.writer.write(OK)

    return answer


async def post(pool: UpstreamPool, body: bytes = b"{}") -> tuple[int, bytes]:
    """One request; its status and whole body."""
    with await pool.request("POST", TARGET, signed_headers(body), body) as response:
        return response.status, await response.body.read(1 << 20)


async def test_exactly_the_signed_headers_and_the_body_go_out(start_upstream, open_pool):
    """The request line, the four signed headers in their order and the body arrive byte for
    byte: no User-Agent, Accept, Accept-Encoding, Connection or anything else is added."""
    upstream = await start_upstream(answer_ok)
    pool = open_pool(url_of(upstream))
    assert await post(pool, b'{"x": 1}') == (200, b"ok")
    [request] = upstream.requests
    assert request.head == (
        b"POST /endpoints/echo/invocations HTTP/1.1\r\n"
        b"Host: runtime.test\r\n"
        b"X-Amz-Date: 20240101T000000Z\r\n"
        b"Authorization: AWS4-HMAC-SHA256 "
        b"Credential=AKID/20240101/us-east-1/sagemaker/aws4_request\r\n"
        b"Content-Length: 8\r\n"
        b"\r\n"
    )
    assert request.body == b'{"x": 1}'


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb"])
def test_a_header_value_with_a_line_break_is_refused_before_sending(value):
    """A CR or LF in a value would start a header nobody signed: encoding the head refuses it."""
    with pytest.raises(ValueError, match="line break"):
        encode_head("POST", TARGET, [("Host", "runtime.test"), ("X-Custom", value)])


async def test_a_keep_alive_connection_carries_the_next_request(start_upstream, open_pool):
    """Three requests in a row travel on one connection."""
    upstream = await start_upstream(answer_ok)
    pool = open_pool(url_of(upstream))
    for _ in range(3):
        assert await post(pool) == (200, b"ok")
    assert len(upstream.connections) == 1
    assert len(upstream.connections[0].requests) == 3
    assert (pool.open_connections, pool.idle_connections) == (1, 1)


async def test_the_most_recently_used_connection_is_reused_first(start_upstream, open_pool):
    """Two connections busy at once, the second finishing last: the next request takes the
    second (LIFO), so a quiet pool lets its older connections age out."""
    both_arrived = asyncio.Event()
    finish_order: list[Connection] = []

    async def answer(connection: Connection, request: Request) -> None:
        if len(upstream.requests) <= 2:
            if len(upstream.requests) == 2:
                both_arrived.set()
            await both_arrived.wait()
            # The first connection answers at once, the second after the first was taken back.
            if connection is upstream.connections[1]:
                await poll(lambda: pool.idle_connections == 1)
            finish_order.append(connection)
        connection.writer.write(OK)

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    await asyncio.gather(post(pool), post(pool))
    assert finish_order == upstream.connections
    await post(pool)
    assert len(upstream.connections[1].requests) == 2


async def test_a_content_length_body_is_read_whole_across_packets(start_upstream, open_pool):
    """A 300 KB body sent in three writes comes back whole; the connection is then reused."""
    body = bytes(range(256)) * 1200

    async def answer(connection: Connection, request: Request) -> None:
        connection.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for start in range(0, len(body), 100_000):
            connection.writer.write(body[start : start + 100_000])
            await connection.writer.drain()

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    with await pool.request("POST", TARGET, signed_headers(b""), b"") as response:
        assert response.content_length == len(body)
        assert await response.body.read(1 << 20) == body
    assert await post(pool) == (200, body)
    assert len(upstream.connections) == 1


async def test_a_body_that_ends_with_the_connection_is_read_to_the_close(start_upstream, open_pool):
    """An answer with neither Content-Length nor chunking ends when the upstream closes; it is
    complete, and the next request opens a new connection."""

    async def answer(connection: Connection, request: Request) -> None:
        connection.writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil ")
        await connection.writer.drain()
        connection.writer.write(b"the close")
        connection.writer.close()

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    assert await post(pool) == (200, b"until the close")
    assert await post(pool) == (200, b"until the close")
    assert len(upstream.connections) == 2


async def test_chunked_parts_are_handed_on_as_they_arrive(start_upstream, open_pool):
    """The first chunk is readable while the upstream still holds back the second; after the
    last chunk the body ends and the connection is kept."""
    send_second = asyncio.Event()

    async def answer(connection: Connection, request: Request) -> None:
        writer = connection.writer
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await send_second.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    with await pool.request("POST", TARGET, signed_headers(b""), b"") as response:
        assert response.content_length is None
        assert await response.body.read_chunk() == b"first"
        send_second.set()
        assert await response.body.read_chunk() == b"second"
        assert await response.body.read_chunk() == b""
    assert (pool.open_connections, pool.idle_connections) == (1, 1)


async def test_informational_answers_are_skipped(start_upstream, open_pool):
    """A 100 Continue before the answer is not the answer."""

    async def answer(connection: Connection, request: Request) -> None:
        connection.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    assert await post(pool) == (200, b"ok")


async def test_headers_keep_their_order_names_and_values(start_upstream, open_pool):
    """Response headers are kept as sent (repeats too); lookup by lower-case name finds the
    first."""

    async def answer(connection: Connection, request: Request) -> None:
        connection.writer.write(
            b"HTTP/1.1 424 Failed Dependency\r\nx-amzn-ErrorType: ModelError\r\n"
            b"X-Twice: 1\r\nX-Twice: 2\r\nContent-Length: 0\r\n\r\n"
        )

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    with await pool.request("POST", TARGET, signed_headers(b""), b"") as response:
        assert response.status == 424
        assert response.headers == [
            ("x-amzn-ErrorType", "ModelError"),
            ("X-Twice", "1"),
            ("X-Twice", "2"),
            ("Content-Length", "0"),
        ]
        assert response.header("x-amzn-errortype") == "ModelError"
        assert response.header("x-twice") == "1"
        assert response.header("x-absent") is None


async def test_an_idle_connection_the_upstream_closed_is_dropped_before_reuse(
    start_upstream, open_pool
):
    """The upstream closes a kept-alive connection while it is idle: the pool drops it as soon
    as the close arrives, and the next request goes out on a new connection and succeeds."""

    async def answer(connection: Connection, request: Request) -> None:
        connection.writer.write(OK)
        await connection.writer.drain()
        connection.writer.close()  # an idle timeout on the upstream's side, no Connection: close

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    assert await post(pool) == (200, b"ok")
    await poll(lambda: pool.open_connections == 0)
    assert await post(pool) == (200, b"ok")
    assert len(upstream.connections) == 2


async def test_a_cancelled_request_closes_its_connection(start_upstream, open_pool):
    """A request cancelled while waiting for its answer (caller gone, deadline) closes its
    connection: the upstream sees it close, and nothing returns to the pool."""

    async def never_answer(connection: Connection, request: Request) -> None:
        pass

    upstream = await start_upstream(never_answer)
    pool = open_pool(url_of(upstream))
    task = asyncio.create_task(post(pool))
    await poll(lambda: len(upstream.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        await upstream.connections[0].closed.wait()
    await poll(lambda: pool.open_connections == 0)
    assert pool.idle_connections == 0


# asyncio's loop only: uvloop's transport looks data_received up once, so it cannot be wrapped.
@pytest.mark.parametrize("event_loop_policy", ["asyncio"], indirect=True)
async def test_a_caller_cancelled_as_its_answer_lands_leaves_the_next_callers_request(
    start_upstream, open_pool
):
    """A caller's whole answer arrives and its connection goes back to the pool; in that same
    turn of the loop it is cancelled (its deadline fires), and a second caller, already
    runnable, takes the connection and sends on it. The second request must go on: only an
    exchange that still owns the connection may close it.

    The turn is forced by wrapping the connection's data_received: the event loop allows this
    order (a deadline firing as the answer lands) but seldom produces it on its own.
    """
    release = asyncio.Event()
    upstream = await start_upstream(answer_ok_after(release))
    pool = open_pool(url_of(upstream), max_connections=1)
    first = asyncio.create_task(post(pool))
    await poll(lambda: len(upstream.requests) == 1)
    go = asyncio.Event()

    async def second_caller() -> tuple[int, bytes]:
        await go.wait()
        return await post(pool)

    second = asyncio.create_task(second_caller())
    [connection] = list(pool._connections)
    delivered = connection.data_received

    def answer_then_cancel_first(data: bytes) -> None:
        go.set()  # the second caller is runnable before the first resumes
        delivered(data)  # the answer is whole: the connection is back in the pool
        first.cancel()
        connection.data_received = delivered  # type: ignore[method-assign]

    connection.data_received = answer_then_cancel_first  # type: ignore[method-assign]
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(5):
        assert await second == (200, b"ok")
    assert len(upstream.requests) == 2
    assert len(upstream.connections) == 1  # the second went on the same connection


async def test_an_answer_not_read_to_its_end_is_never_reused(start_upstream, open_pool):
    """Released after its first chunk, a 1 MB answer's connection is closed, not pooled; the
    next request gets a fresh connection."""
    body = b"z" * 1_000_000

    async def answer(connection: Connection, request: Request) -> None:
        connection.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        connection.writer.write(body)
        await connection.writer.drain()

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    with await pool.request("POST", TARGET, signed_headers(b""), b"") as response:
        assert await response.body.read_chunk()
    async with asyncio.timeout(5):
        await upstream.connections[0].closed.wait()
    assert pool.idle_connections == 0
    status, received = await post(pool)
    assert (status, len(received)) == (200, len(body))
    assert len(upstream.connections) == 2


async def test_the_pool_opens_at_most_max_connections(start_upstream, open_pool):
    """With max_connections 2, a third concurrent request waits, then takes a connection one of
    the first two gave back: two connections in all."""
    release = asyncio.Event()
    upstream = await start_upstream(answer_ok_after(release))
    pool = open_pool(url_of(upstream), max_connections=2)
    tasks = [asyncio.create_task(post(pool)) for _ in range(3)]
    await poll(lambda: len(upstream.requests) == 2)
    assert pool.open_connections == 2
    assert not any(task.done() for task in tasks)
    release.set()
    assert await asyncio.gather(*tasks) == [(200, b"ok")] * 3
    assert len(upstream.connections) == 2


async def test_waiting_for_a_connection_ends_at_the_callers_deadline(start_upstream, open_pool):
    """With the only connection busy, a caller waits no longer than its own deadline, and its
    giving up leaves the pool working."""
    release = asyncio.Event()
    upstream = await start_upstream(answer_ok_after(release))
    pool = open_pool(url_of(upstream), max_connections=1)
    busy = asyncio.create_task(post(pool))
    await poll(lambda: len(upstream.requests) == 1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await post(pool)
    release.set()
    assert await busy == (200, b"ok")
    assert await post(pool) == (200, b"ok")
    assert len(upstream.connections) == 1


async def test_a_refused_connection_is_a_retryable_connect_failure(open_pool):
    """Nothing listening: ConnectFailed naming the reason, which retry treats as "nothing was
    sent"; the slot it held is free again."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    pool = open_pool(f"http://127.0.0.1:{port}", max_connections=1)
    for _ in range(2):  # a leaked slot would make the second attempt wait forever
        with pytest.raises(ConnectFailed, match="refused") as caught:
            await post(pool)
        assert is_connect_failure(caught.value)
    assert pool.open_connections == 0


async def test_a_connect_that_does_not_complete_is_a_retryable_connect_timeout(open_pool):
    """A listener whose accept queue is full never completes the handshake: ConnectTimedOut at
    connect_timeout, retryable."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # takes the one place in the queue
        pool = open_pool(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout_s=0.2)
        with pytest.raises(ConnectTimedOut) as caught:
            await post(pool)
    assert is_connect_failure(caught.value)
    assert "connect_timeout" in str(caught.value)


async def test_a_reset_before_the_answer_is_a_disconnect_never_retried(start_upstream, open_pool):
    """The upstream resets the connection after reading the request: Disconnected, which is
    not a connect failure (the model may have seen the request)."""

    async def reset(connection: Connection, request: Request) -> None:
        sock = connection.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.writer.transport.abort()

    upstream = await start_upstream(reset)
    pool = open_pool(url_of(upstream))
    with pytest.raises(Disconnected, match="reset before an answer") as caught:
        await post(pool)
    assert not is_connect_failure(caught.value)


async def test_a_body_cut_short_hands_on_what_came_then_fails(start_upstream, open_pool):
    """Content-Length 10, five bytes, then a close: the five bytes are read, then Disconnected."""

    async def answer(connection: Connection, request: Request) -> None:
        connection.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfive!")
        await connection.writer.drain()
        connection.writer.close()

    upstream = await start_upstream(answer)
    pool = open_pool(url_of(upstream))
    with await pool.request("POST", TARGET, signed_headers(b""), b"") as response:
        assert await response.body.read_chunk() == b"five!"
        with pytest.raises(Disconnected, match="before the answer ended"):
            await response.body.read_chunk()


async def test_an_answer_that_is_not_http_is_a_protocol_error(start_upstream, open_pool):
    """Bytes that are not an HTTP/1.1 status line: ProtocolError, and the connection closes."""

    async def garbage(connection: Connection, request: Request) -> None:
        connection.writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")

    upstream = await start_upstream(garbage)
    pool = open_pool(url_of(upstream))
    with pytest.raises(ProtocolError):
        await post(pool)
    await poll(lambda: pool.open_connections == 0)


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return context


async def test_an_https_upstream_is_verified_against_its_host_name(
    start_upstream, open_pool, certificate_authority
):
    """https://localhost: the certificate for localhost, issued by a trusted CA, is accepted
    (the host name is checked, so SNI and verification are on) and the request goes through."""
    upstream = await start_upstream(answer_ok, server_tls(certificate_authority))
    client_tls = ssl.create_default_context()
    certificate_authority.configure_trust(client_tls)
    pool = open_pool(f"https://localhost:{upstream.port}", ssl_context=client_tls)
    assert await post(pool) == (200, b"ok")
    assert await post(pool) == (200, b"ok")
    assert len(upstream.connections) == 1


async def test_an_untrusted_certificate_is_a_tls_failure_never_retried(
    start_upstream, open_pool, certificate_authority
):
    """A certificate from a CA the client does not trust: TLSFailed, which will not heal, so
    retry does not treat it as a connect failure."""
    upstream = await start_upstream(answer_ok, server_tls(certificate_authority))
    pool = open_pool(f"https://localhost:{upstream.port}")
    with pytest.raises(TLSFailed) as caught:
        await post(pool)
    assert not is_connect_failure(caught.value)
    assert upstream.requests == []
