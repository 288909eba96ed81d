"""The HTTP/1.1 server protocol on its own: bytes fed to it through a fake transport, its
deadlines driven by a hand-moved clock, its handler a few lines of echo. No socket, no
emulator, no waiting on wall-clock time (uvicorn tests its protocol the same way).

The socket tests (test_connection.py, test_liberal_input.py) stay as the integration layer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from gateway.http.body import BodyError
from gateway.http.server import (
    LINGER_S,
    MAX_HEAD_BYTES,
    MAX_PIPELINED,
    ConnectionRegistry,
    HttpError,
    Phase,
    Request,
    Response,
    ServerConnection,
)
from tests.waiting import FakeClock, loop_turns

HEAD_TIMEOUT_S = 10.0
KEEPALIVE_S = 75.0


class FakeTransport:
    """Records what the protocol does to its transport; writes wake waiting tests."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.closed = self.aborted = self.eof_written = False
        #: What the kernel would still hold unsent (the caller not reading).
        self.buffered = 0
        self._changed = asyncio.Event()

    def write(self, data: bytes) -> None:
        assert not self.eof_written, "write after write_eof"
        self.written += data
        self._changed.set()

    def write_eof(self) -> None:
        self.eof_written = True
        self._changed.set()

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def abort(self) -> None:
        self.closed = self.aborted = True
        self._changed.set()

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default  # a plain TCP connection: no peer certificate

    def answers(self) -> list[bytes]:
        """The status lines written so far."""
        return re.findall(rb"HTTP/1\.1 \d{3}[^\r]*", bytes(self.written))

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class Echo:
    """A handler that reads the whole body and answers 200 with it; it can be held back."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()

    async def __call__(self, request: Request, response: Response) -> None:
        self.started.set()
        try:
            body = await request.body.read(1 << 20, 30.0)
        except BodyError as exc:
            response.send(400, [], str(exc).encode())
            return
        self.seen.append((request.method, request.target, body))
        await self.release.wait()
        response.send(200, [("Content-Type", "text/plain")], body)


def render(response: Response, error: HttpError) -> None:
    response.send(error.status, [], error.reason.encode())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def handler() -> Echo:
    return Echo()


@pytest.fixture
def rejects() -> list[str]:
    return []


@pytest.fixture
def connect(clock, handler, rejects):
    """A new connection on a fake transport: returns (protocol, transport)."""

    class Log:
        def error(self, event: str, **fields: object) -> None:
            raise AssertionError(f"logged {event}: {fields}")

        exception = error

    def make() -> tuple[ServerConnection, FakeTransport]:
        protocol = ServerConnection(
            ConnectionRegistry(), handler, render,
            head_timeout_s=HEAD_TIMEOUT_S, keepalive_timeout_s=KEEPALIVE_S,
            on_reject=rejects.append, log=Log(), clock=clock,
        )  # fmt: skip
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return protocol, transport

    return make


def post(body: bytes = b"{}", *extra: bytes, target: bytes = b"/x") -> bytes:
    lines = [
        b"POST " + target + b" HTTP/1.1",
        b"Host: g",
        b"Content-Length: %d" % len(body),
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(pieces: list[bytes]) -> bytes:
    head = b"POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def test_a_head_must_arrive_within_head_timeout_of_its_first_byte(connect, clock, rejects):
    """Part of a head, then nothing: closed at head_timeout (counted), not a moment before."""
    clock.advance(60)  # idle first: the head's own deadline starts at its first byte
    protocol, transport = connect()
    protocol.data_received(b"POST /x HTTP/1.1\r\nHo")
    assert protocol.phase is Phase.HEAD
    clock.advance(HEAD_TIMEOUT_S - 0.01)
    assert not transport.closed
    clock.advance(0.02)
    assert transport.closed and rejects == ["head_timeout"]


async def test_a_connection_that_never_sends_is_closed_at_head_timeout(connect, clock, rejects):
    """Silence from the start counts as a slow head."""
    protocol, transport = connect()
    assert protocol.phase is Phase.IDLE
    clock.advance(HEAD_TIMEOUT_S + 0.01)
    assert transport.closed and rejects == ["head_timeout"]


async def test_keep_alive_answers_in_turn_and_closes_when_idle(connect, clock, handler):
    """Two requests one after the other on one connection, then keepalive_timeout of quiet
    closes it; the idle deadline restarts with each answer."""
    protocol, transport = connect()
    protocol.data_received(post(b"one"))
    await transport.wait_until(lambda: len(transport.answers()) == 1)
    assert protocol.phase is Phase.IDLE
    clock.advance(KEEPALIVE_S - 1)
    protocol.data_received(post(b"two"))
    await transport.wait_until(lambda: len(transport.answers()) == 2)
    clock.advance(KEEPALIVE_S - 1)
    assert not transport.closed  # measured from the second answer
    clock.advance(2)
    assert transport.closed
    assert [body for _, _, body in handler.seen] == [b"one", b"two"]
    assert b"Connection: close" not in transport.written


async def test_pipelined_requests_wait_their_turn_with_reading_paused(connect, handler):
    """Three requests in one read: the second and third are queued and reading pauses; they
    are handed to the handler one at a time, in order."""
    handler.release.clear()
    protocol, transport = connect()
    protocol.data_received(post(b"1") + post(b"2") + post(b"3"))
    await handler.started.wait()
    assert not transport.reading and protocol.phase is Phase.ANSWERING
    assert [body for _, _, body in handler.seen] == [b"1"]
    handler.release.set()
    await transport.wait_until(lambda: len(transport.answers()) == 3)
    assert [body for _, _, body in handler.seen] == [b"1", b"2", b"3"]
    assert transport.reading and protocol.phase is Phase.IDLE


async def test_a_malformed_request_behind_good_ones_is_answered_after_them(connect, handler):
    """Two good requests then a broken one in one read: 200, 200, then the 400, then the
    connection half-closes (as nginx answers them)."""
    protocol, transport = connect()
    protocol.data_received(
        post(b"1") + post(b"2") + b"POST /x HTTP/1.1\r\nHost: g\r\nBad Header\r\n\r\n"
    )
    await transport.wait_until(lambda: transport.eof_written)
    assert [line.split()[1] for line in transport.answers()] == [b"200", b"200", b"400"]
    assert [body for _, _, body in handler.seen] == [b"1", b"2"]
    assert protocol.phase is Phase.LINGERING


async def test_a_refused_request_lingers_then_closes(connect, clock):
    """After a 400 the connection sends its FIN, reads and drops what the caller still sends
    for LINGER_S, then closes."""
    protocol, transport = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert transport.answers() == [b"HTTP/1.1 400 Bad Request"]
    assert transport.eof_written and transport.reading and protocol.phase is Phase.LINGERING
    protocol.data_received(b"more bytes the caller was still sending")
    assert not transport.closed
    clock.advance(LINGER_S + 0.01)
    assert transport.closed and not transport.aborted


async def test_a_request_that_arrives_with_a_close_is_never_handed_over(connect, handler):
    """A complete request, then the caller's FIN in the same turn of the loop: taken as the
    caller going away, before the handler ever sees the request."""
    protocol, _ = connect()
    protocol.data_received(post(b"{}"))
    protocol.eof_received()
    protocol.connection_lost(None)
    # A request handed over would start on the loop's next turn: let a few pass.
    await loop_turns(3)
    assert handler.seen == [] and not handler.started.is_set()
    assert protocol.phase is Phase.CLOSED


async def test_a_caller_that_leaves_mid_answer_cancels_the_handler(connect, handler):
    """The FIN while the handler runs cancels it; nothing is written after."""
    handler.release.clear()
    protocol, transport = connect()
    protocol.data_received(post(b"{}"))
    await handler.started.wait()
    protocol.eof_received()
    protocol.connection_lost(None)
    handler.release.set()
    await loop_turns(3)
    assert transport.answers() == []


async def test_an_answer_not_taken_holds_the_next_request_until_it_is(connect, clock, handler):
    """The caller stops reading: the next pipelined request waits (reading paused) until the
    transport drains; a caller that never drains is cut at keepalive_timeout."""
    protocol, transport = connect()
    protocol.pause_writing()
    protocol.data_received(post(b"1") + post(b"2"))
    await transport.wait_until(lambda: len(transport.answers()) == 1)
    assert protocol.phase is Phase.WAITING and not transport.reading
    assert [body for _, _, body in handler.seen] == [b"1"]
    protocol.resume_writing()
    await transport.wait_until(lambda: len(transport.answers()) == 2)
    protocol.pause_writing()
    protocol.data_received(post(b"3"))
    await transport.wait_until(lambda: len(transport.answers()) == 3)
    assert protocol.phase is Phase.WAITING
    clock.advance(KEEPALIVE_S + 0.01)
    assert transport.aborted


async def test_a_large_body_pauses_reading_until_the_handler_wants_it(connect, handler):
    """More than the high-water mark queued behind a busy handler pauses reading; the
    handler's read of its own body resumes it."""
    handler.release.clear()
    protocol, transport = connect()
    protocol.data_received(post(b"a"))
    await handler.started.wait()
    big = b"x" * (300 * 1024)
    protocol.data_received(post(big)[: 200 * 1024])
    assert not transport.reading  # queued behind the first: nothing more is read
    handler.release.set()
    await transport.wait_until(lambda: transport.reading)
    protocol.data_received(post(big)[200 * 1024 :])
    await transport.wait_until(lambda: len(transport.answers()) == 2)
    assert handler.seen[1][2] == big


async def test_expect_100_continue_is_sent_when_the_handler_asks_for_the_body(connect):
    """The interim answer goes out only once the handler reads, before the final one."""
    protocol, transport = connect()
    head = b"POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    protocol.data_received(head)
    await transport.wait_until(lambda: b"100 Continue" in transport.written)
    protocol.data_received(b"{}")
    await transport.wait_until(lambda: len(transport.answers()) == 2)
    assert transport.answers() == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 200 OK"]


@pytest.mark.parametrize("pieces", [1, 6, 50], ids=lambda n: f"{n}-reads")
async def test_many_tiny_chunks_are_refused_however_they_arrive(connect, pieces):
    """12,000 one-byte chunks: refused whether they arrive in one read or in several."""
    protocol, transport = connect()
    data = chunked([b"x"] * 12_000)
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        protocol.data_received(data[start : start + step])
        if transport.eof_written:
            break
    await transport.wait_until(lambda: bool(transport.answers()))
    assert transport.answers()[0].startswith(b"HTTP/1.1 400")
    assert b"framing" in transport.written


async def test_chunks_of_a_sensible_size_pass(connect, handler):
    """A 1 MB body in 8 KiB chunks, fed in small reads, is read whole."""
    protocol, transport = connect()
    data = chunked([b"y" * 8192] * 128)
    for start in range(0, len(data), 1000):
        protocol.data_received(data[start : start + 1000])
    await transport.wait_until(lambda: bool(transport.answers()))
    assert transport.answers() == [b"HTTP/1.1 200 OK"]
    assert handler.seen[0][2] == b"y" * (8192 * 128)


async def test_an_h2c_upgrade_is_answered_in_http_1_1_with_its_body(connect, handler):
    """Upgrade: h2c on a POST with a body: the handler gets the request and its body, and the
    Upgrade field is gone from what it sees."""
    protocol, transport = connect()
    protocol.data_received(post(b"abc", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                                b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA"))  # fmt: skip
    await transport.wait_until(lambda: bool(transport.answers()))
    assert transport.answers() == [b"HTTP/1.1 200 OK"]
    assert handler.seen == [("POST", "/x", b"abc")]


async def test_a_stop_closes_an_idle_connection_and_lets_an_answer_finish(connect, handler):
    """close_when_idle: an idle connection closes at once; one mid-answer answers with
    Connection: close, then closes."""
    idle, idle_transport = connect()
    idle.close_when_idle()
    assert idle_transport.closed
    handler.release.clear()
    busy, busy_transport = connect()
    busy.data_received(post(b"{}"))
    await handler.started.wait()
    busy.close_when_idle()
    assert not busy_transport.closed
    handler.release.set()
    await busy_transport.wait_until(lambda: busy_transport.closed)
    assert b"Connection: close" in busy_transport.written


async def test_a_half_close_during_an_answer_the_caller_does_not_take_is_cut(connect, clock):
    """A caller that stops reading, then half-closes while its answer is still buffered: the
    connection is cut after keepalive_timeout, not held open for ever."""
    protocol, transport = connect()
    protocol.data_received(post(b"{}"))
    await transport.wait_until(lambda: bool(transport.answers()))
    transport.buffered = 200_000  # what the kernel could not send: the caller reads nothing
    protocol.data_received(b"POST /x HTTP/1.1\r\nHo")  # the next head begins
    protocol.eof_received()
    clock.advance(KEEPALIVE_S + 0.01)
    assert transport.aborted


async def test_many_pipelined_upgrade_heads_are_answered_without_recursion(connect, handler):
    """A thousand pipelined requests asking for an upgrade in one read: each is parsed again
    in turn (no call deeper than the last), MAX_PIPELINED wait behind the first, and the one
    after them is refused, after their answers."""
    protocol, transport = connect()
    one = b"GET /x HTTP/1.1\r\nHost: g\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
    protocol.data_received(one * 1000)
    await transport.wait_until(lambda: transport.eof_written)
    statuses = [line.split()[1] for line in transport.answers()]
    assert statuses == [b"200"] * (MAX_PIPELINED + 1) + [b"400"]
    assert len(handler.seen) == MAX_PIPELINED + 1


async def test_a_read_full_of_tiny_pipelined_requests_queues_a_bounded_number(connect, handler):
    """One read of 10,000 minimal requests: at most MAX_PIPELINED are ever queued, so a few
    hundred KiB on the wire cannot become many MB of request objects."""
    handler.release.clear()
    protocol, transport = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost:\r\n\r\n" * 10_000)
    await handler.started.wait()
    assert len(protocol._queue) == MAX_PIPELINED
    handler.release.set()
    await transport.wait_until(lambda: transport.eof_written)
    assert transport.answers()[-1].startswith(b"HTTP/1.1 400")
    assert len(transport.answers()) == MAX_PIPELINED + 2


@pytest.mark.parametrize("where", ["trailing", "target"])
async def test_a_head_padded_past_the_limit_is_refused(connect, where):
    """A head whose bytes pass MAX_HEAD_BYTES only with padding (spaces after a value, a long
    target) is refused in whichever read it arrives."""
    protocol, transport = connect()
    pad = b" " * (MAX_HEAD_BYTES + 10)
    if where == "trailing":
        data = b"GET / HTTP/1.1\r\nHost: g\r\nX-Pad: v" + pad + b"\r\n\r\n"
    else:
        data = b"GET /" + b"a" * (MAX_HEAD_BYTES + 10) + b" HTTP/1.1\r\nHost: g\r\n\r\n"
    protocol.data_received(data)
    assert transport.answers() == [b"HTTP/1.1 400 Bad Request"]
    assert b"larger than" in transport.written
