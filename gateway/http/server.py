"""The server side of HTTP/1.1: one ``asyncio.Protocol`` per client connection, parsed by
httptools (llhttp, the parser of Node.js and uvicorn), answering one request at a time.

What is refused, and why (each is answered, then the connection closes):

    rule                                                         status  RFC
    request line or field the parser refuses: bad tokens, bare    400    9112 2.2, 5; 9110 5.5
      CR or LF, obs-fold, control characters (HTAB aside), a
      malformed or repeated Content-Length, Content-Length with
      Transfer-Encoding
    a version other than HTTP/1.0 and 1.1 (llhttp reads a line     505    9112 2.3; 9110 15.6.6
      without one as 0.9)
    Transfer-Encoding other than exactly ``chunked``               400    9112 6.1 (we decode
                                                                          no other coding)
    Transfer-Encoding in an HTTP/1.0 request                       400    9112 6.1 ("faulty")
    Host missing (HTTP/1.1), repeated, or not ``host[:port]``      400    9112 3.2
    a head over MAX_HEAD_BYTES or MAX_HEADERS fields               400    9112 2.3 (limits are
                                                                          the server's to set)
    more than MAX_PIPELINED requests waiting behind the one being   400    -   (memory)
      answered (answered after them)
    trailer fields                                                 400    9112 7.1.2 (no API
                                                                          field is a trailer)
    chunked framing out of proportion to its body (more than       400    -   (a body a few
      MAX_CHUNKS_FREE chunks plus one per MIN_CHUNK_BYTES of              bytes at a time is a
      body, or more framing bytes than MAX_FRAMING_BYTES plus             denial of service)
      half the body)

What is tolerated: an ``Upgrade`` (h2c, which Java's HttpClient and ``curl --http2`` send on
every plain-http call; WebSocket) is ignored and the request answered in HTTP/1.1 as if the
field were absent (RFC 9110 7.8); field values lose the whitespace around them, which is not
part of them (RFC 9110 5.5), though llhttp refuses a Transfer-Encoding with a trailing tab before
that; obs-text (bytes 0x80-0xFF) passes in field values (RFC 9110 5.5); line ends before a
request line are skipped (RFC 9112 2.2), and runs of spaces between its parts read as one
(RFC 9112 3 allows both; neither can change which requests are forwarded, since the gateway
forwards its own serialization of each).
CONNECT is handed to the handler like any request, and the connection closes after its answer:
what follows it would be a tunnel's bytes, never read as HTTP.

Requests on one connection are answered in order, one at a time: pipelined requests wait their
turn with reading paused. A request refused after others were pipelined ahead of it is answered
in its turn, after theirs. Keep-alive as HTTP/1.1 defines it; HTTP/1.0 requests are answered,
then the connection closes. ``Expect: 100-continue`` is answered when the handler first asks
for the body, so a request refused from its head never has its body sent.

Deadlines: a head must arrive within ``head_timeout`` of its first byte (a new connection that
sends nothing counts from its opening); an idle keep-alive connection closes after
``keepalive_timeout``; an answer the caller does not take is cut after as long again. A
connection closed while its caller may still be sending first half-closes, then reads and drops
what comes for up to LINGER_S (nginx's lingering close), so that unread bytes do not make the
kernel reset the answer away. The body's deadline and the answer's are the handler's.

A caller that closes its sending side is taken as gone, as nginx takes it (TCP cannot tell a
half-close from a close): its handler is cancelled, and a request that arrived with the close
is never handed to the handler.

This package knows nothing of what it serves: it reports a refused request to ``on_error`` as
an :class:`HttpError` (status and reason), and the application renders the answer.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import re
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol, cast

import httptools

from gateway.http.body import Body, BodyBroken
from gateway.http.clock import Clock, Deadline, PerSecond

#: A request line and headers larger than this are refused (nginx allows 8 KiB a line; a
#: signed call with a long session token stays well under this).
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
#: Requests parsed while one is answered wait in a queue of at most this many; one more is
#: refused (each costs far more in memory than its bytes on the wire).
MAX_PIPELINED = 16
#: A chunked body may have this many chunks, plus one per MIN_CHUNK_BYTES of its size ...
MAX_CHUNKS_FREE = 1024
MIN_CHUNK_BYTES = 64
#: ... and this many bytes of framing (sizes, extensions, line ends), plus half its size.
MAX_FRAMING_BYTES = 32 * 1024
#: A connection closed while the caller may still be sending is read (and what arrives
#: dropped) this long, so that the close does not reset the answer before it is read.
LINGER_S = 5.0
LINGER_MAX_BYTES = 8 * 1024 * 1024

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY = frozenset({204, 304})
#: RFC 3986 section 3.2.2 host (IP-literal, IPv4address or reg-name), then an optional port:
#: what RFC 9112 section 3.2 allows in Host. No userinfo, path, space or second colon.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_OWS = b" \t"
#: The Date header line, formatted once a second rather than once a request.
_DATE_LINE = PerSecond(lambda second: f"Date: {formatdate(second, usegmt=True)}\r\n")
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus
}


class HttpError(Exception):
    """A request this server will not hand to the handler, or a handler that failed: the
    status to answer with and the reason, for the application to render."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Log(Protocol):
    """What the connection logs: bugs, never a request's content."""

    def error(self, event: str, **fields: Any) -> Any: ...

    def exception(self, event: str, **fields: Any) -> Any: ...


#: Answers a request: at once (returning None), or in the awaitable it returns.
Handler = Callable[["Request", "Response"], Awaitable[None] | None]
#: Renders the answer to a refused request (4xx/505) or a failed handler (500).
ErrorRenderer = Callable[["Response", HttpError], None]
#: Counts a connection or request turned away before a handler saw it ("head_timeout", ...).
Reject = Callable[[str], None]


class Phase(enum.Enum):
    """Where a connection is; each value says what it waits for and which deadline runs."""

    #: Between requests: waiting for a head's first byte (keepalive_timeout; for a new
    #: connection, head_timeout).
    IDLE = enum.auto()
    #: A head is arriving and no request is being answered (head_timeout from its first byte).
    HEAD = enum.auto()
    #: A handler is answering a request; later requests may be parsed and queued meanwhile.
    ANSWERING = enum.auto()
    #: The answer is written but the caller has not taken it: nothing more is read or answered
    #: until it does (keepalive_timeout, then cut).
    WAITING = enum.auto()
    #: The last answer went with a FIN; what the caller still sends is read and dropped
    #: (LINGER_S).
    LINGERING = enum.auto()
    #: Closed, or closing once the last answer is taken (keepalive_timeout, then cut).
    CLOSED = enum.auto()


# The phases as module names: in Python 3.11 a global costs a tenth of an enum member's
# attribute lookup, and the protocol compares its phase a few dozen times a request.
IDLE = Phase.IDLE
HEAD = Phase.HEAD
ANSWERING = Phase.ANSWERING
WAITING = Phase.WAITING
LINGERING = Phase.LINGERING
CLOSED = Phase.CLOSED


class Request:
    """A request whose head has arrived: method, raw target, headers and the body to come."""

    __slots__ = ("body", "chunks", "content_length", "framing", "headers", "keep_alive",
                 "method", "peer", "raw_headers", "target")  # fmt: skip

    def __init__(
        self,
        method: str,
        target: str,
        raw_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        body: Body,
        content_length: int | None = None,
        peer: Any = None,
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
        #: A chunked body's chunks so far, and the bytes of framing counted around them.
        self.chunks = 0
        self.framing = 0
        #: What the transport reports of the caller: over TLS, the client certificate it
        #: verified (``getpeercert()``), else None.
        self.peer = peer


class Response:
    """The answer to one request: sent whole with :meth:`send`, or streamed with :meth:`start`,
    :meth:`write` and :meth:`finish`.

    The last bytes (the whole of a sent answer, a stream's end) go out when the handler has
    returned, or when it calls :meth:`flush` itself. The proxy does, before it records the
    request (metrics, the access line), so that its caller is not kept waiting for them: the
    caller may then see its answer before the request is counted, but this connection serves
    nothing else until the handler has returned.
    """

    __slots__ = ("_chunked", "_connection", "_head_only", "_last", "_request", "finished",
                 "started")  # fmt: skip

    def __init__(self, connection: ServerConnection, request: Request) -> None:
        self._connection = connection
        self._request = request
        self._head_only = request.method == "HEAD"
        self._chunked = False
        self._last = b""
        self.started = False
        self.finished = False

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """The whole answer, in one write when the handler returns or flushes."""
        head = self._head(status, headers, len(body))
        self._last = head if self._head_only or status in _NO_BODY else head + body
        self.started = self.finished = True

    def start(
        self, status: int, headers: list[tuple[str, str]], content_length: int | None
    ) -> None:
        """Send the head of an answer whose body follows (chunked when its length is unknown)."""
        # HTTP/1.0 callers (never kept alive here) read an unframed body to the close.
        self._chunked = (
            content_length is None and not self._head_only and self._request.keep_alive
            and status not in _NO_BODY
        )  # fmt: skip
        self._connection.write(self._head(status, headers, content_length))
        self.started = True

    async def write(self, data: bytes) -> None:
        """Send part of the body; waits while the caller reads slower than it arrives."""
        if not data or self._head_only:
            return
        connection = self._connection
        if self._chunked:
            connection.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            connection.write(data)
        if connection.write_paused:
            await connection.drain()

    def finish(self) -> None:
        """The body is complete (its end is written when the handler returns or flushes)."""
        if self._chunked:
            self._last = b"0\r\n\r\n"
        self.finished = True

    def flush(self) -> None:
        """Write what :meth:`send` or :meth:`finish` left. The connection calls this when the
        handler returns; a handler may call it sooner (after either), and nothing is written
        twice."""
        if self._last:
            self._connection.write(self._last)
            self._last = b""

    def abort(self) -> None:
        """The answer cannot be completed: cut the connection so the caller sees it fail."""
        self.finished = True
        self._last = b""
        self._connection.abort()

    def _head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> bytes:
        lines = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if status in _NO_BODY:
            pass  # no length and no body (RFC 9110 section 8.6)
        elif length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif self._chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.append(_DATE_LINE.now())
        if self._connection.closes_after(self._request):
            # Say so, or a keep-alive client would send its next request on a connection
            # about to close.
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        # The upstream's values were decoded this way, so they go back byte for byte; the
        # gateway's own values are ASCII.
        return "".join(lines).encode("utf-8", "surrogateescape")


class ConnectionRegistry:
    """The open connections of one listener, so that a shutdown can find and close them."""

    def __init__(self) -> None:
        self.connections: set[ServerConnection] = set()
        self._emptied: asyncio.Event | None = None

    def add(self, connection: ServerConnection) -> None:
        self.connections.add(connection)

    def discard(self, connection: ServerConnection) -> None:
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


class _Head:
    """A request head while the parser reads it."""

    __slots__ = ("headers", "held", "size", "url")

    def __init__(self) -> None:
        self.url: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        #: Bytes counted from the reads after the one it began in (the parser may hold a
        #: field's bytes across reads before it hands the field over).
        self.size = 0
        #: Bytes of the target and fields handed over so far, as received (the whitespace the
        #: parser drops before a value is never held, so not counted).
        self.held = 0


class ServerConnection(asyncio.Protocol):
    """One client connection: its phase, its parser, and the requests it carries."""

    def __init__(
        self,
        registry: ConnectionRegistry,
        handler: Handler,
        on_error: ErrorRenderer,
        *,
        head_timeout_s: float,
        keepalive_timeout_s: float,
        on_reject: Reject,
        log: Log,
        clock: Clock | None = None,
    ) -> None:
        self._registry = registry
        self._handler = handler
        self._on_error = on_error
        self._on_reject = on_reject
        self._log = log
        self._head_timeout_s = head_timeout_s
        self._keepalive_timeout_s = keepalive_timeout_s
        self._loop = asyncio.get_running_loop()
        self._deadline = Deadline(clock or self._loop)
        self._transport: asyncio.Transport | None = None
        self._peer: Any = None
        self.phase = IDLE
        # httptools looks its callbacks up on this object once, here.
        self._parser = httptools.HttpRequestParser(self)
        #: The head being parsed, if one is.
        self._head: _Head | None = None
        #: Whether a message began in the read being parsed now.
        self._began = False
        #: The request whose body the parser is reading (it may wait behind the active one).
        self._parsing: Request | None = None
        #: The request being answered, its handler's task, and requests waiting behind it.
        self._active: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: collections.deque[Request] = collections.deque()
        #: The parser reads no further: after a refusal, an upgrade to a tunnel (CONNECT).
        self._parse_stopped = False
        #: What the parser refused, answered once the requests ahead of it are.
        self._refusal: HttpError | None = None
        #: A head that asked for an upgrade, rebuilt without its Upgrade fields, to parse again.
        self._reparse: bytes | None = None
        #: The answer being sent is the connection's last.
        self._close_after = False
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lingered_bytes = 0
        self.write_paused = False

    # --- used by responses, bodies and the registry

    def write(self, data: bytes) -> None:
        if self._transport is not None and self.phase is not CLOSED:
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait until the caller has taken what is buffered for it (or has gone)."""
        if self.write_paused and self.phase is not CLOSED:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def closes_after(self, request: Request) -> bool:
        """Whether the connection closes once ``request`` is answered: asked for, HTTP/1.0,
        stopping, or a body not read to its end (closing is cheaper and safer than reading
        what the caller may never finish sending)."""
        return self._close_after or not request.keep_alive or not request.body.complete

    def body_full(self) -> None:
        self._pause_reading()

    def body_taken(self) -> None:
        """The handler took (or wants) the body: read on, unless requests wait their turn."""
        if not self._queue and self.phase is not WAITING and not self._parse_stopped:
            self._resume_reading()

    def abort(self) -> None:
        self.phase = CLOSED
        if self._transport is not None:
            self._transport.abort()

    def close_when_idle(self) -> None:
        """Close now if between requests; otherwise once the request under way is answered."""
        if self.phase in (CLOSED, LINGERING):  # closing already
            return
        self._close_after = True
        if self.phase is IDLE or (self.phase is HEAD and self._head is None):
            self._close()  # (a read of nothing but blank lines begins no head)

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but have its methods.
        # (TCP_NODELAY is already set: asyncio and uvloop set it on every TCP transport.)
        self._transport = cast(asyncio.Transport, transport)
        self._peer = transport.get_extra_info("peercert")  # after the handshake, over TLS
        self._registry.add(self)
        # A connection that never sends a byte is the same threat as one that sends slowly.
        self._deadline.set(self._head_timeout_s, self._head_expired)

    def data_received(self, data: bytes) -> None:
        pieces = self._parse(data)
        while pieces:  # only after an ignored upgrade: its head again, then the rest
            pieces = self._parse(pieces[0]) + pieces[1:]

    def eof_received(self) -> None:
        """The caller closed its sending side: taken as gone (see the module's docstring).
        Returning None closes the transport once what is written has gone; an answer the
        caller does not take is cut after keepalive_timeout, as on any close."""
        if self.phase is LINGERING:
            return
        self._gone()
        if self._transport is not None and self._transport.get_write_buffer_size():
            self._deadline.set(self._keepalive_timeout_s, self.abort)

    def _parse(self, data: bytes | memoryview) -> tuple[bytes | memoryview, ...]:
        """Feed one read to the parser. Returns what to feed next: after an ignored upgrade,
        its head rebuilt without the Upgrade fields and the rest of the read; else nothing."""
        phase = self.phase
        if phase is LINGERING:
            self._linger_drop(len(data))
            return ()
        if phase is CLOSED or self._parse_stopped:
            return ()
        if phase is IDLE:  # the first bytes of a new head: its deadline starts now
            self.phase = HEAD
            self._deadline.set(self._head_timeout_s, self._head_expired)
        parsing = self._parsing
        received = parsing.body.received if parsing is not None else 0
        self._began = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return self._upgrade_ignored(memoryview(data)[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpError):
                self._refuse(cause)
            else:  # a bug of ours: the connection is in no known state
                self._log.error("connection_error", error=repr(cause))
                self.abort()
            return ()
        except httptools.HttpParserError as exc:
            self._refuse(HttpError(str(exc)))
            return ()
        if self._began:
            return ()
        # What the parser holds unparsed is bounded: a head still arriving, or the framing
        # around a chunked body. Counted from the reads after the one they began in.
        head = self._head
        if head is not None:
            head.size += len(data)
            if head.size > MAX_HEAD_BYTES:
                self._refuse(HttpError(_HEAD_REFUSED))
        elif parsing is not None and parsing is self._parsing:
            body = parsing.body
            parsing.framing += len(data) - (body.received - received)
            if parsing.framing > MAX_FRAMING_BYTES + body.received // 2:
                self._refuse(HttpError(_FRAMING_REFUSED))
        return ()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        self._deadline.cancel()
        self._registry.discard(self)
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
        if self.phase is WAITING:
            self._next()

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        self._began = True
        self._head = _Head()

    def on_url(self, url: bytes) -> None:
        head = self._head
        assert head is not None
        head.url.append(url)
        head.held += len(url)
        if head.held > MAX_HEAD_BYTES:
            raise HttpError(_HEAD_REFUSED)

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        if head is None:  # after a chunked body: nothing a SageMaker client sends
            raise HttpError("trailer fields are not accepted")
        head.headers.append((name, value.rstrip(_OWS)))
        head.held += len(name) + len(value) + 4
        if head.held > MAX_HEAD_BYTES:
            raise HttpError(_HEAD_REFUSED)
        if len(head.headers) > MAX_HEADERS:
            raise HttpError(f"the request has more than {MAX_HEADERS} headers")

    def on_headers_complete(self) -> None:
        head = self._head
        assert head is not None
        parser = self._parser
        target = b"".join(head.url)
        raw_headers = head.headers
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HttpError(f"HTTP version {version} is not supported", status=505)
        http11 = version == "1.1"
        method = parser.get_method()
        connect = method == b"CONNECT"
        if parser.should_upgrade() and not connect:
            # The parser would read no body after this head; it is parsed again without its
            # Upgrade fields, and then what followed it.
            self._reparse = _without_upgrade(method, target, version, raw_headers)
            return
        hosts = 0
        host = b""
        chunked = expect_continue = False
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
                    raise HttpError("Transfer-Encoding other than chunked is not supported")
                chunked = True
        if hosts > 1 or (http11 and hosts == 0):
            raise HttpError("a request must have exactly one Host header (none in HTTP/1.0)")
        if not _HOST.fullmatch(host):
            raise HttpError("the Host header must be host[:port]")
        if chunked and not http11:
            raise HttpError("Transfer-Encoding is not allowed in an HTTP/1.0 request")
        self._head = None
        request = Request(
            method.decode("ascii"),
            target.decode("latin-1"),
            raw_headers,
            # HTTP/1.0 keep-alive is an old extension no SageMaker client needs; after a
            # CONNECT come a tunnel's bytes.
            http11 and parser.should_keep_alive() and not connect,
            Body(self, on_wanted=self._send_continue if expect_continue else None),
            content_length,
            self._peer,
        )
        if self.phase in (IDLE, HEAD):
            self._begin(request)
        else:  # pipelined: answered in turn; read no further until then
            if len(self._queue) >= MAX_PIPELINED:
                raise HttpError(f"more than {MAX_PIPELINED} requests were pipelined")
            self._queue.append(request)
            self._pause_reading()
        self._parsing = request
        if connect:
            self._parse_stopped = True

    def on_chunk_header(self) -> None:
        request = self._parsing
        if request is not None:
            request.chunks += 1
            if request.chunks > MAX_CHUNKS_FREE + request.body.received // MIN_CHUNK_BYTES:
                raise HttpError(_FRAMING_REFUSED)

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None:
            request.body.finish()

    # --- requests

    def _begin(self, request: Request) -> None:
        self.phase = ANSWERING
        self._deadline.clear()
        self._active = request
        # On the loop's next turn, so that a close that came with the request is seen first
        # (then the request is never handed over), whichever event loop this is.
        self._loop.call_soon(self._start, request)

    def _start(self, request: Request) -> None:
        if self._active is request and self.phase is ANSWERING:
            self._task = self._loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        response = Response(self, request)
        try:
            pending = self._handler(request, response)
            if pending is not None:
                await pending
        except asyncio.CancelledError:
            return  # the caller went away: nothing to answer
        except Exception:
            self._log.exception("unhandled_error", path=request.target[:200])
            if not response.started:
                self._close_after = True
                self._on_error(response, HttpError("the handler failed", status=500))
        if response.finished:
            response.flush()
        else:
            response.abort()
        self._answered(request)

    def _answered(self, request: Request) -> None:
        self._active = self._task = None
        if self.phase is CLOSED:
            return
        if self.closes_after(request):
            self._close(linger=self._input_pending())
        elif self.write_paused:
            # The caller has not taken this answer yet: nothing more is read or answered
            # until it does, and it has keepalive_timeout to start.
            self.phase = WAITING
            self._pause_reading()
            self._deadline.set(self._keepalive_timeout_s, self.abort)
        else:
            self._next()

    def _next(self) -> None:
        """After an answer: the next queued request, the refusal behind them, or a wait."""
        if self._close_after:  # a stop began while the answer waited to be taken
            self._close(linger=self._input_pending())
        elif self._queue:
            self._begin(self._queue.popleft())
            if not self._queue:
                self.body_taken()
        elif self._refusal is not None:
            self._answer_refusal(self._refusal)
        else:
            self._resume_reading()
            if self._head is not None:  # the next head began while this one was answered
                self.phase = HEAD
                self._deadline.set(self._head_timeout_s, self._head_expired)
            else:
                self.phase = IDLE
                self._deadline.set(self._keepalive_timeout_s, self._close)

    def _refuse(self, error: HttpError) -> None:
        """The parser refused what it read: nothing after it is read. The requests parsed
        before it are answered first, then the refusal, then the connection closes."""
        self._parse_stopped = True
        self._head = None
        self._pause_reading()
        parsing, self._parsing = self._parsing, None
        if parsing is not None and parsing is self._active:
            # Its handler is waiting for the body, and answers the failure itself.
            parsing.body.fail(BodyBroken(error.reason))
            self._close_after = True
            return
        if parsing is not None:  # queued, last: the refusal is its answer
            self._queue.remove(parsing)
        if self.phase in (IDLE, HEAD):
            self._answer_refusal(error)
        else:
            self._refusal = error

    def _answer_refusal(self, error: HttpError) -> None:
        self._refusal = None
        self._close_after = True
        request = Request("GET", "", [], False, Body(self))
        response = Response(self, request)
        self._on_error(response, error)
        response.flush()
        self._close(linger=True)

    def _upgrade_ignored(self, rest: memoryview) -> tuple[bytes | memoryview, ...]:
        """The parser stopped at a head asking for an upgrade: unless it was CONNECT (a
        tunnel: read no further), that head is parsed again without its Upgrade fields, by a
        new parser, then what followed it (the caller feeds both)."""
        head, self._reparse = self._reparse, None
        if head is None:
            return ()
        self._parser = httptools.HttpRequestParser(self)
        self._head = self._parsing = None
        if self.phase is HEAD:
            self.phase = IDLE
        return (head, rest)

    def _send_continue(self) -> None:
        self.write(_CONTINUE)

    def _gone(self) -> None:
        """The caller is gone: so is the reason to finish its request."""
        self.phase = CLOSED
        self._active = None
        if self._task is not None:
            self._task.cancel()

    # --- closing

    def _close(self, *, linger: bool = False) -> None:
        """Close after what is written has gone. With ``linger``, the caller may still be
        sending: stop sending, then read and drop what comes for up to LINGER_S before
        closing, so that unread bytes do not make the kernel reset the answer away."""
        transport = self._transport
        if transport is None:
            self.phase = CLOSED
            return
        if linger and transport.can_write_eof():
            transport.write_eof()  # after the answer, a FIN: the caller knows it is over
            self.phase = LINGERING
            self._reading_paused = False
            transport.resume_reading()
            self._deadline.set(LINGER_S, self._end_linger)
            return
        self.phase = CLOSED
        transport.close()
        if transport.get_write_buffer_size():
            # The close waits for the answer to be taken: a caller that stops reading gets
            # keepalive_timeout to take it, then the connection is cut.
            self._deadline.set(self._keepalive_timeout_s, self.abort)
        else:
            self._deadline.clear()

    def _input_pending(self) -> bool:
        """Whether the caller may have sent bytes not read yet (a body, a next request)."""
        parsing = self._parsing
        return (
            self._reading_paused or self._parse_stopped or self._head is not None
            or bool(self._queue) or (parsing is not None and not parsing.body.complete)
        )  # fmt: skip

    def _linger_drop(self, size: int) -> None:
        self._lingered_bytes += size
        if self._lingered_bytes > LINGER_MAX_BYTES:
            self._end_linger()

    def _end_linger(self) -> None:
        """Close a lingering connection: cut it if its caller has not taken the answer yet."""
        self.phase = CLOSED
        transport = self._transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def _head_expired(self) -> None:
        if self.phase in (IDLE, HEAD):
            self._on_reject("head_timeout")
            self._close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and self.phase is not CLOSED:
            self._reading_paused = False
            self._transport.resume_reading()


_HEAD_REFUSED = f"the request head is larger than {MAX_HEAD_BYTES} bytes"
_FRAMING_REFUSED = (
    "the chunked body's framing (chunk count, chunk sizes, extensions) is out of proportion "
    "to its size"
)


def _without_upgrade(
    method: bytes, target: bytes, version: str, raw_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A request head as received, less its Upgrade fields (the Connection field's tokens then
    name nothing; no field of either kind is ever forwarded)."""
    lines = [b"%b %b HTTP/%b" % (method, target, version.encode())]
    lines += [name + b": " + value for name, value in raw_headers if name.lower() != b"upgrade"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class RefusedConnection(asyncio.Protocol):
    """Stands in for a connection when ``max_connections`` are open: closes at once."""

    def __init__(self, on_reject: Reject) -> None:
        self._on_reject = on_reject

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._on_reject("connection_limit")
        transport.close()
