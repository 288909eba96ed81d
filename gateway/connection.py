"""Client connections: HTTP/1.1 read with httptools, one request at a time, every wait bounded.

Written here rather than served by aiohttp's web stack because the gateway's own work per
request is small, and aiohttp's request, middleware and response objects cost more than all of
it (bench/README.md: ~30 % of the CPU per request). This module does only what the gateway's
routes need, on the parser uvicorn and Node.js use (llhttp):

- One request at a time per connection; pipelined requests wait their turn (reading pauses
  meanwhile). Keep-alive as HTTP/1.1 defines it (HTTP/1.0 requests are answered, then the
  connection closes). ``Expect: 100-continue`` is answered when the handler asks for the
  body, so a refused request's body is never sent.
- Deadlines: the head must arrive within ``head_timeout`` of its first byte (a connection that
  never sends counts from its opening); an idle keep-alive connection closes after
  ``keepalive_timeout``, and a closing one whose caller does not take the rest of its answer is
  cut after as long again. A connection closed while its caller may still be sending is read
  (and what comes dropped) for up to ``LINGER_S`` first, as nginx's lingering close does, so
  the unread bytes do not make the kernel reset the answer away. The body's deadline and the
  answer's are the handler's.
- Limits: a head of at most ``MAX_HEAD_BYTES`` and ``MAX_HEADERS`` fields; reading pauses while
  more of a body waits unread than the handler will hold, and writing waits while the caller
  is slow.
- What the parser refuses (conflicting lengths, obs-fold, control characters, bare LF, ...),
  an oversized head, trailers, a Transfer-Encoding other than chunked or in an HTTP/1.0
  request (RFC 9112 section 6.1), a Host missing from an HTTP/1.1 request, repeated, or not
  ``host[:port]`` (section 3.2), a version other than 1.0 and 1.1 (505), and chunked framing
  out of proportion to its body get a SageMaker-shaped 400 (``ValidationError``), then the
  connection closes.
- An ``Upgrade`` (h2c, which Java's HttpClient and ``curl --http2`` ask for on every plain-http
  call; WebSocket) is ignored, as RFC 9110 section 7.8 allows: the request is answered in
  HTTP/1.1 as if the field were absent. CONNECT, which would turn the connection into a
  tunnel, is handed to the handler (which answers 405) and the connection then closes.
- Field values lose their trailing whitespace (leading whitespace the parser drops), which is
  not part of the value (RFC 9110 section 5.5).
- A caller that goes away cancels its handler; as with nginx, closing its sending side counts
  as going away (TCP cannot tell a half-close from a close).
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools
import structlog

from gateway.clock import PerSecond
from gateway.errors import (
    ERROR_TYPE_HEADER,
    REQUEST_ID_HEADER,
    GatewayError,
    InternalFailure,
    MethodNotAllowed,
    ValidationError,
    new_request_id,
)

#: A request line and headers larger than this are refused (aiohttp and nginx allow 8 KiB a
#: line; a signed call with a long session token stays well under this).
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
#: Reading pauses while this much of a request body waits for the handler, resumes below it.
READ_HIGH_WATER_BYTES = 256 * 1024
#: Body pieces smaller than this are joined to the one before rather than kept one by one.
SMALL_PIECE_BYTES = 4096
#: Chunked framing (chunk sizes, line ends, trailers) may add at most this much plus half the
#: body's own size; more is a client sending a body a few bytes at a time, or a huge trailer.
MAX_FRAMING_BYTES = 32 * 1024
#: A connection closed while the caller may still be sending is read (and what arrives
#: dropped) this long, so that the close does not reset the answer before it is read.
LINGER_S = 5.0
LINGER_MAX_BYTES = 8 * 1024 * 1024

Reject = Callable[[str], None]
Handler = Callable[["Request", "Response"], Awaitable[None]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY = frozenset({204, 304})
#: The Date header line, formatted once a second rather than once a request.
_DATE_LINE = PerSecond(lambda second: f"Date: {formatdate(second, usegmt=True)}\r\n")
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus
}


class BadRequest(Exception):
    """The request's framing breaks a limit of this server (raised inside parser callbacks)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


#: RFC 3986 section 3.2.2 host (IP-literal, IPv4address or reg-name), then an optional port:
#: what RFC 9112 section 3.2 allows in Host. No userinfo, path, space or second colon.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_OWS = b" \t"


class RequestBody:
    """A request's body as it arrives, handed over whole: the gateway signs its hash, so it
    never forwards part of one."""

    __slots__ = ("_chunks", "_connection", "_continue", "_error", "_size", "_waiter", "complete",
                 "framing", "high_water", "received")  # fmt: skip

    def __init__(self, connection: HttpConnection, expect_continue: bool) -> None:
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expect_continue
        self._error: str | None = None
        #: Every byte of the body has been received (it may not have been taken yet).
        self.complete = False
        #: Reading from the connection pauses while more than this waits here.
        self.high_water = READ_HIGH_WATER_BYTES
        #: Body bytes received so far, and bytes of chunked framing (sizes, line ends) around them.
        self.received = 0
        self.framing = 0

    def take(self) -> bytes:
        """Everything received and not yet taken."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._connection.body_consumed()
        return data

    async def read_all(self, limit: int) -> bytes | None:
        """The whole body once it has all arrived, or None as soon as it passes ``limit``.

        Up to ``limit`` reading does not pause (the caller holds the whole body anyway), and the
        pieces are joined once, so a body is held once plus one copy, not several. Raises
        ValidationError when the body's framing turns out to be broken.
        """
        self.high_water = limit
        self._connection.body_consumed()
        if self._continue:  # the handler wants the body: now the client may send it
            self._continue = False
            self._connection.write_raw(_CONTINUE)
        while not self.complete and self._size <= limit and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter  # a caller that goes away cancels the handler, and this
            finally:
                self._waiter = None
        if self._error is not None:
            raise ValidationError(self._error, reason="bad_http")
        return None if self._size > limit else self.take()

    def _feed(self, data: bytes) -> int:
        chunks = self._chunks
        last = chunks[-1] if chunks else None
        if len(data) < SMALL_PIECE_BYTES and last is not None and len(last) < SMALL_PIECE_BYTES:
            # Tiny pieces (a chunked body sent a few bytes at a time) are joined up to a few
            # KiB, so that per-object overhead cannot make a body cost many times its size.
            chunks[-1] = last + data
        else:
            chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self._size > self.high_water:  # read_all waits for the end or for this
            self._wake()
        return self._size

    def _finish(self) -> None:
        self.complete = True
        self._continue = False
        self._wake()

    def _fail(self, reason: str) -> None:
        self._error = reason
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Request:
    """A request whose head has arrived: method, raw target, headers and the body to come."""

    __slots__ = ("body", "content_length", "headers", "keep_alive", "method", "raw_headers",
                 "target")  # fmt: skip

    def __init__(
        self,
        method: str,
        target: str,
        raw_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        body: RequestBody,
        content_length: int | None = None,
    ) -> None:
        self.method = method
        #: The request target exactly as sent (path and query, nothing decoded).
        self.target = target
        self.raw_headers = raw_headers
        #: Names as sent; values decoded as latin-1 so that no byte is lost or invented.
        self.headers = [(name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in raw_headers]  # fmt: skip
        self.keep_alive = keep_alive
        self.body = body
        #: The Content-Length header's value (the parser has refused malformed or repeated
        #: ones); None for a chunked body or none.
        self.content_length = content_length


class Response:
    """The answer to one request: sent whole with :meth:`send`, or streamed with :meth:`start`,
    :meth:`write` and :meth:`finish`.

    The last bytes (the whole of a sent answer, a stream's end) go out when the handler has
    returned, as with aiohttp: what the handler records after answering (metrics, the access
    line) is recorded before the caller can see its answer complete.
    """

    __slots__ = ("_chunked", "_connection", "_head_only", "_last", "_request", "finished",
                 "started")  # fmt: skip

    def __init__(self, connection: HttpConnection, request: Request) -> None:
        self._connection = connection
        self._request = request
        self._head_only = request.method == "HEAD"
        self._chunked = False
        self._last = b""
        self.started = False
        self.finished = False

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """The whole answer, in one write once the handler returns."""
        head = self._head(status, headers, len(body))
        self._last = head if self._head_only or status in _NO_BODY else head + body
        self.started = self.finished = True

    def send_error(self, error: GatewayError, request_id: str) -> None:
        """The SageMaker-shaped answer for ``error``: status, ErrorType header, JSON message."""
        headers = [
            ("Content-Type", "application/json"),
            (ERROR_TYPE_HEADER, error.error_type),
            (REQUEST_ID_HEADER, request_id),
        ]
        if isinstance(error, MethodNotAllowed):
            headers.append(("Allow", error.allowed))
        self.send(error.status, headers, json.dumps({"message": error.message}).encode())

    def send_json(self, status: int, fields: dict[str, str]) -> None:
        """A small JSON answer (health and readiness)."""
        self.send(status, [("Content-Type", "application/json")], json.dumps(fields).encode())

    def start(
        self, status: int, headers: list[tuple[str, str]], content_length: int | None
    ) -> None:
        """Send the head of an answer whose body follows (chunked when its length is unknown)."""
        # HTTP/1.0 callers (never kept alive here) read an unframed body to the close.
        self._chunked = (
            content_length is None and not self._head_only and self._request.keep_alive
            and status not in _NO_BODY
        )  # fmt: skip
        self._connection.write_raw(self._head(status, headers, content_length))
        self.started = True

    async def write(self, data: bytes) -> None:
        """Send part of the body; waits while the caller reads slower than it arrives."""
        if not data or self._head_only:
            return
        connection = self._connection
        if self._chunked:
            connection.write_raw(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            connection.write_raw(data)
        if connection.write_paused:
            await connection.drain()

    def finish(self) -> None:
        """The body is complete (its end is written once the handler returns)."""
        if self._chunked:
            self._last = b"0\r\n\r\n"
        self.finished = True

    def flush(self) -> None:
        """Write what :meth:`send` or :meth:`finish` left (the connection calls this)."""
        if self._last:
            self._connection.write_raw(self._last)
            self._last = b""

    def abort(self) -> None:
        """The answer cannot be completed: cut the connection so the caller sees it fail."""
        self.finished = True
        self._last = b""
        self._connection.abort()

    def _head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> bytes:
        connection = self._connection
        lines = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if status in _NO_BODY:
            pass  # no length and no body (RFC 9110 section 8.6)
        elif length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif self._chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.append(_DATE_LINE.now())
        # A body not read to its end means the connection closes after this answer: say so,
        # or a keep-alive client would send its next request on a connection about to close.
        request = self._request
        if connection.close_after_response or not request.keep_alive or not request.body.complete:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        # The upstream's values were decoded this way, so they go back byte for byte; the
        # gateway's own values are ASCII.
        return "".join(lines).encode("utf-8", "surrogateescape")


class ConnectionRegistry:
    """The open connections of one listener, so that a shutdown can find and close them."""

    def __init__(self) -> None:
        self.connections: set[HttpConnection] = set()
        self._emptied: asyncio.Event | None = None

    def add(self, connection: HttpConnection) -> None:
        self.connections.add(connection)

    def discard(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._emptied is not None:
            self._emptied.set()

    def close_idle(self) -> None:
        """Close connections between requests now; the others close after their answer."""
        for connection in list(self.connections):
            connection.close_when_idle()

    async def wait_closed(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every connection to close, then cut what is left."""
        if self.connections:
            self._emptied = asyncio.Event()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._emptied.wait()
            except TimeoutError:
                for connection in list(self.connections):
                    connection.abort()
            finally:
                self._emptied = None


class HttpConnection(asyncio.Protocol):
    """One client connection, parsed by httptools, its requests answered by ``handler``."""

    def __init__(
        self,
        registry: ConnectionRegistry,
        handler: Handler,
        *,
        head_timeout_s: float,
        keepalive_timeout_s: float,
        on_reject: Reject,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._registry = registry
        self._log = logger
        self._handler = handler
        self._head_timeout_s = head_timeout_s
        self._keepalive_timeout_s = keepalive_timeout_s
        self._on_reject = on_reject
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        # httptools looks its callbacks up on this object once, here.
        self._parser = httptools.HttpRequestParser(self)
        # One timer serves the head and idle deadlines: moving the deadline later (as every
        # request does) only updates it, and the timer re-arms when it finds it moved.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] | None = None
        # The head being parsed: whether one is, and its bytes counted so far.
        self._in_head = False
        self._head_bytes = 0
        self._url: list[bytes] = []
        self._raw_headers: list[tuple[bytes, bytes]] = []
        # Per feed: whether a message began in it, and how many body bytes it carried.
        self._began = False
        self._fed_body = 0
        #: The request whose body the parser is reading (it may wait behind the active one).
        self._parsing: Request | None = None
        #: The request being answered, its task, and requests waiting behind it.
        self._active: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._pipeline: collections.deque[Request] = collections.deque()
        #: An answer waits for the caller to read before the next request starts.
        self._after_drain: Request | None = None
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        #: Bytes dropped while lingering before a close; -1 when not lingering.
        self._lingering = -1
        self.write_paused = False
        self.close_after_response = False
        self.closed = False
        self._refused = False
        #: The head of a request that asked for an upgrade, rebuilt without its Upgrade field,
        #: to parse again once the parser stops at it; or, for CONNECT, True: what follows is
        #: a tunnel's bytes, never read as HTTP.
        self._upgrade: bytes | bool = False

    # --- used by requests and responses

    def write_raw(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait until the caller has taken what is buffered for it (or has gone)."""
        if self.write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def body_consumed(self) -> None:
        """The handler took (or will take) what waited: read on, unless requests are queued."""
        if self._reading_paused and not self._pipeline and self._after_drain is None:
            self._resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def close_when_idle(self) -> None:
        """Close now if between requests; otherwise once the request under way is answered."""
        if self.closed:  # closing already (perhaps lingering, which ends on its own)
            return
        self.close_after_response = True
        if self._active is None and not self._in_head and self._after_drain is None:
            self._close()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but have its methods.
        # (TCP_NODELAY is already set: asyncio and uvloop set it on every TCP transport.)
        self._transport = cast(asyncio.Transport, transport)
        self._registry.add(self)
        # A connection that never sends a byte is the same threat as one that sends slowly.
        self._set_deadline(self._head_timeout_s, self._head_expired)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._linger_drop(len(data))
            return
        if self.closed or self._refused or self._upgrade is True:
            return
        if not self._in_head and self._parsing is None:
            # The first bytes of a new head: its deadline starts now.
            self._in_head = True
            self._head_bytes = 0
            self._set_deadline(self._head_timeout_s, self._head_expired)
        parsing = self._parsing
        self._began = False
        self._fed_body = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The parser stops after a head that asks for another protocol.
            self._upgrade_ignored(data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                self._refuse(str(cause), cause.status)
            else:  # a bug of ours: the connection is in no known state
                self._log.error("connection_error", error=repr(cause))
                self.abort()
            return
        except httptools.HttpParserError as exc:
            self._refuse(str(exc))
            return
        # What the parser holds unparsed is bounded: a head still arriving (its bytes from
        # the feed after the one it began in), or the framing around a chunked body.
        if self._in_head and not self._began:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(f"the request head is larger than {MAX_HEAD_BYTES} bytes")
        elif parsing is not None and parsing is self._parsing and not self._began:
            body = parsing.body
            body.framing += len(data) - self._fed_body
            if body.framing > MAX_FRAMING_BYTES + body.received // 2:
                self._refuse("the chunked body's framing (chunk sizes, trailers) is larger "
                             "than the body allows")  # fmt: skip

    def eof_received(self) -> None:
        """The caller closed its sending side: as nginx does, taken as the caller going away
        (TCP cannot tell a half-close from a close). Returning None closes the transport."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self._registry.discard(self)
        if self._task is not None:
            self._task.cancel()  # the caller is gone: so is the reason to finish its request
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the caller closed the connection"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        request, self._after_drain = self._after_drain, None
        if request is not None and not self.closed:
            self._next()

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._began = True
        self._head_bytes = 0
        self._url = []
        self._raw_headers = []

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # after a chunked body: nothing a SageMaker client sends
            raise BadRequest("trailer fields are not accepted")
        headers = self._raw_headers
        headers.append((name, value.rstrip(_OWS)))
        if len(headers) > MAX_HEADERS:
            raise BadRequest(f"the request has more than {MAX_HEADERS} headers")

    def on_headers_complete(self) -> None:
        parser = self._parser
        target = b"".join(self._url)
        raw_headers = self._raw_headers
        if len(target) + sum(len(n) + len(v) + 4 for n, v in raw_headers) > MAX_HEAD_BYTES:
            raise BadRequest(f"the request head is larger than {MAX_HEAD_BYTES} bytes")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):  # llhttp reads a line without one as 0.9
            raise BadRequest(f"HTTP version {version} is not supported", status=505)
        http11 = version == "1.1"
        method = parser.get_method()
        if parser.should_upgrade() and method != b"CONNECT":
            # Ignored (RFC 9110 section 7.8). The parser would read no body after this head,
            # so the head is parsed again without its Upgrade field, and the rest after it.
            self._upgrade = self._head_without_upgrade(method, target, version)
            return
        hosts = 0
        host = b""
        chunked = False
        expect_continue = False
        content_length = None
        for name, value in raw_headers:
            lower = name.lower()
            if lower == b"host":
                hosts += 1
                host = value
            elif lower == b"content-length":
                content_length = int(value)
            elif lower == b"expect":
                expect_continue = http11 and value.lower() == b"100-continue"
            elif lower == b"transfer-encoding":
                if value.lower() != b"chunked":
                    raise BadRequest("Transfer-Encoding other than chunked is not supported")
                chunked = True
        if hosts > 1 or (http11 and hosts == 0):
            raise BadRequest("a request must have exactly one Host header (none in HTTP/1.0)")
        if not _HOST.fullmatch(host):
            raise BadRequest("the Host header must be host[:port]")
        if chunked and not http11:
            raise BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request")
        self._in_head = False
        self._on_deadline = None
        request = Request(
            method.decode("ascii"),
            target.decode("latin-1"),
            raw_headers,
            # HTTP/1.0 keep-alive is an old extension no SageMaker client needs; after a
            # CONNECT come a tunnel's bytes.
            http11 and parser.should_keep_alive() and method != b"CONNECT",
            RequestBody(self, expect_continue),
            content_length,
        )
        if method == b"CONNECT":
            self._upgrade = True
        self._parsing = request
        if self._active is None and self._after_drain is None:
            self._begin(request)
        else:  # pipelined: answered in turn; read no further until then
            self._pipeline.append(request)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        self._fed_body += len(body)
        request = self._parsing
        if request is not None and request.body._feed(body) > request.body.high_water:
            self._pause_reading()

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None:
            request.body._finish()

    def _head_without_upgrade(self, method: bytes, target: bytes, version: str) -> bytes:
        """The request head as received, less its Upgrade fields (the Connection field's
        tokens then name nothing; no field of either kind is ever forwarded)."""
        lines = [b"%b %b HTTP/%b" % (method, target, version.encode())]
        lines += [name + b": " + value for name, value in self._raw_headers
                  if name.lower() != b"upgrade"]  # fmt: skip
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _upgrade_ignored(self, rest: bytes) -> None:
        """The parser stopped at a head asking for an upgrade: for CONNECT, read no further;
        otherwise parse that head again without its Upgrade field, then what followed it."""
        head = self._upgrade
        if not isinstance(head, bytes):
            return
        self._upgrade = False
        self._parser = httptools.HttpRequestParser(self)
        self._parsing = None
        self._in_head = False
        self.data_received(head + rest)

    # --- requests

    def _begin(self, request: Request) -> None:
        self._active = request
        self._task = self._loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        response = Response(self, request)
        try:
            await self._handler(request, response)
        except asyncio.CancelledError:
            return  # the caller went away (connection_lost): nothing to answer
        except Exception:
            self._log.exception("unhandled_error", path=request.target[:200])
            if not response.started:
                error = InternalFailure("The gateway failed to handle the request")
                self.close_after_response = True
                response.send_error(error, new_request_id())
        if response.finished:
            response.flush()
        else:
            response.abort()
        self._answered(request)

    def _answered(self, request: Request) -> None:
        self._active = self._task = None
        if self.closed:
            return
        if self.close_after_response or not request.keep_alive or not request.body.complete:
            # A body the handler refused unread is not read to its end: closing is cheaper
            # and safer than reading what the caller may never finish sending.
            self._close(linger=self._input_pending())
            return
        if self.write_paused:
            # The caller has not taken this answer yet: nothing more is read or answered
            # until it does, and it has keepalive_timeout to start.
            self._after_drain = request
            self._pause_reading()
            self._set_deadline(self._keepalive_timeout_s, self.abort)
            return
        self._next()

    def _next(self) -> None:
        """After an answer: the next pipelined request, or wait for one."""
        self._on_deadline = None
        if self.close_after_response:  # a drain began while the answer waited to be read
            self._close(linger=self._input_pending())
            return
        if self._pipeline:
            self._begin(self._pipeline.popleft())
            if not self._pipeline and self._reading_paused:
                self._resume_reading()
            return
        if self._reading_paused:
            self._resume_reading()
        if self._in_head:  # the next head began while this request was answered
            self._set_deadline(self._head_timeout_s, self._head_expired)
        else:
            self._set_deadline(self._keepalive_timeout_s, self._close)

    def _refuse(self, reason: str, status: int = 400) -> None:
        """Answer a request that is not valid HTTP (or breaks a limit) with 400, and close."""
        self._refused = True
        self._stop_timer()
        self._in_head = False
        self.close_after_response = True
        printable = "".join(ch if " " <= ch <= "~" else "?" for ch in reason)[:200]
        message = f"The request is not valid HTTP/1.1: {printable}"
        parsing, self._parsing = self._parsing, None
        self._pipeline.clear()
        if self._active is None:
            self._on_reject("bad_http")
            response = Response(self, Request("GET", "", [], False, RequestBody(self, False)))
            error = ValidationError(message)
            error.status = status  # 400, or 505 for an HTTP version other than 1.x
            response.send_error(error, new_request_id())
            response.flush()
            self._close(linger=True)
        else:
            # The answer under way is sent, then the connection closes; a handler waiting for
            # the broken body gets the 400 (and counts it).
            if parsing is not None:
                parsing.body._fail(message)
            self._pause_reading()

    # --- plumbing

    def _close(self, *, linger: bool = False) -> None:
        """Close after what is written has gone. With ``linger``, the caller may still be
        sending: stop sending, then read and drop what comes for up to LINGER_S before
        closing, so that unread bytes do not make the kernel reset the answer away."""
        self._stop_timer()
        self.closed = True
        transport = self._transport
        if transport is None:
            return
        if linger and transport.can_write_eof():
            transport.write_eof()  # after the answer, a FIN: the caller knows it is over
            self._lingering = 0
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()
            self._set_deadline(LINGER_S, self._end_linger)
            return
        transport.close()
        if transport.get_write_buffer_size():
            # The close waits for the answer to be taken: a caller that stops reading
            # gets keepalive_timeout to take it, then the connection is cut.
            self._set_deadline(self._keepalive_timeout_s, self.abort)

    def _input_pending(self) -> bool:
        """Whether the caller may have sent bytes not read yet (a body, a next request)."""
        parsing = self._parsing
        return (
            self._reading_paused or self._in_head or bool(self._pipeline) or self._upgrade is True
            or (parsing is not None and not parsing.body.complete)
        )  # fmt: skip

    def _linger_drop(self, size: int) -> None:
        self._lingering += size
        if self._lingering > LINGER_MAX_BYTES:
            self._end_linger()

    def _end_linger(self) -> None:
        """Close a lingering connection: cut it if its caller has not taken the answer yet."""
        transport = self._transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def _head_expired(self) -> None:
        if self._active is None:
            self._on_reject("head_timeout")
            self._close()

    def _set_deadline(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` in ``delay_s`` unless the deadline is moved or cleared first."""
        at = self._loop.time() + delay_s
        self._deadline, self._on_deadline = at, callback
        if self._timer is None or self._timer_at > at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self._loop.call_at(at, self._timer_fired), at

    def _timer_fired(self) -> None:
        self._timer = None
        callback = self._on_deadline
        if callback is None:
            return
        if self._loop.time() < self._deadline:  # moved later since the timer was set
            self._timer = self._loop.call_at(self._deadline, self._timer_fired)
            self._timer_at = self._deadline
            return
        self._on_deadline = None
        callback()

    def _stop_timer(self) -> None:
        self._on_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self.closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self.closed:
            self._reading_paused = False
            self._transport.resume_reading()


class RefusedConnection(asyncio.Protocol):
    """Stands in for a connection when ``max_connections`` are open: closes at once."""

    def __init__(self, on_reject: Reject) -> None:
        self._on_reject = on_reject

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._on_reject("connection_limit")
        transport.close()
