"""The client side of HTTP/1.1: a pool of keep-alive connections to one origin.

A small protocol-level client in place of aiohttp's ``ClientSession``, which cost more CPU per
request than all of the gateway's own steps together (see bench/README.md). It does only what
forwarding a signed request needs:

- It sends exactly the signed head and the body, in one ``writelines``: no header is added
  (no User-Agent, Accept, Accept-Encoding, Connection), nothing is compressed or decompressed,
  no cookie is kept, no redirect is followed.
- One request at a time per connection; finished connections go back to a LIFO pool (the most
  recently used is reused first, so the others age out) and are closed after ``KEEPALIVE_S``
  idle. At most ``max_connections`` exist at once; a caller waits for one under its own deadline.
- Answers are parsed by httptools (the C llhttp parser behind uvicorn and Node.js): bodies framed
  by Content-Length, chunked (each piece handed on as it arrives, for event streams) or ending
  with the connection; 1xx answers are skipped. A body waits in a :class:`~gateway.http.body.Body`,
  the buffer the server side uses for requests: reading pauses while a slow caller leaves more
  than its high-water mark untaken.
- Each connection's phase is one :class:`Phase` value: idle, awaiting the head (through any 1xx),
  reading the body, or closed.

Errors (all ``UpstreamError``)::

    UpstreamError            the pool is closed
    ├── ConnectFailed        no connection could be opened: nothing was sent (retryable)
    │   ├── ConnectTimedOut  not connected within connect_timeout (retryable)
    │   └── TLSFailed        the TLS handshake failed: nothing was sent, but it will not heal
    ├── Disconnected         closed or reset after the request was (or may have been) sent
    └── ProtocolError        the answer is not HTTP/1.1 we can read

A connection the upstream closes while it sits idle in the pool is dropped as soon as the event
loop sees the close, so it is never handed out. What is left is a race: the upstream may close a
connection at the moment we reuse it, before its FIN reaches us. That request then fails with
``Disconnected`` (a 503 the caller's SDK retries). It is not retried here, because a request
whose bytes left the gateway may have reached the model; SageMaker's idle close is much longer
than ``KEEPALIVE_S``, which keeps the race to the case of an upstream closing for its own reasons.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import os
import socket
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import aiohappyeyeballs
import httptools

from gateway.http.body import Body

#: Idle upstream connections are kept this long for reuse (the runtime's own idle close is longer).
KEEPALIVE_S = 30.0
#: Delay before trying the upstream's next address when it has several (RFC 8305).
HAPPY_EYEBALLS_DELAY_S = 0.25


class UpstreamError(Exception):
    """A request to the upstream failed; the subclasses say how far it got."""


class ConnectFailed(UpstreamError):
    """No connection could be opened, so no byte of the request was sent."""

    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ConnectTimedOut(ConnectFailed):
    """No connection within ``connect_timeout``."""


class TLSFailed(ConnectFailed):
    """The TLS handshake or the certificate check failed; retrying will not help."""


class Disconnected(UpstreamError):
    """The connection closed or was reset after the request was (or may have been) sent."""


class ProtocolError(UpstreamError):
    """The upstream's answer is not HTTP/1.1 this client can read."""


class UpstreamResponse:
    """One answer: its status and headers at once, its :attr:`body` as it arrives.

    Use it as an async context manager (or call :meth:`release`): an answer not read to its
    end leaves its connection in an unknown state, so the connection is closed, never reused.
    """

    __slots__ = ("_by_name", "_connection", "body", "content_length", "ends_at_close", "headers",
                 "status")  # fmt: skip

    def __init__(self, connection: _Connection) -> None:
        self.status = 0
        #: The headers in the order received, names as sent (values decoded as aiohttp does).
        self.headers: list[tuple[str, str]] = []
        #: The Content-Length header's value, None when the body is chunked or ends at close.
        self.content_length: int | None = None
        #: The body is framed by the connection's close (neither a length nor chunked).
        self.ends_at_close = False
        #: The connection, while this answer has it (not once the answer has ended).
        self._connection: _Connection | None = connection
        self.body = Body(self)
        self._by_name: dict[str, str] = {}

    def header(self, lower_name: str) -> str | None:
        """The first value of the header called ``lower_name`` (lower-case), or None."""
        return self._by_name.get(lower_name)

    def release(self) -> None:
        """Done with this answer: its connection is reused if the body was read to its end,
        otherwise closed."""
        connection, self._connection = self._connection, None
        self.body.detach()  # it points back at this answer: no cycle is left behind
        if connection is not None:  # the answer has not ended
            connection.abort()

    def body_full(self) -> None:
        if self._connection is not None:
            self._connection.body_full()

    def body_taken(self) -> None:
        # Once the answer has ended its connection may carry another: leave it alone.
        if self._connection is not None:
            self._connection.body_taken()

    def __enter__(self) -> UpstreamResponse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _set_head(self, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        headers = self.headers
        by_name = self._by_name
        for raw_name, raw_value in raw_headers:
            name = raw_name.decode("utf-8", "surrogateescape")
            value = raw_value.decode("utf-8", "surrogateescape")
            headers.append((name, value))
            by_name.setdefault(name.lower(), value)
        length = by_name.get("content-length")
        # The parser has already refused a malformed length; a digits check keeps int() safe.
        if length is not None and length.isdigit():
            self.content_length = int(length)
        chunked = by_name.get("transfer-encoding", "").lower().endswith("chunked")
        self.ends_at_close = length is None and not chunked and status not in (204, 304)


class Phase(enum.Enum):
    """Where an upstream connection is in its exchange."""

    #: No request under way: in the pool, or just opened.
    IDLE = enum.auto()
    #: The request is sent; waiting for the answer's head.
    AWAITING_HEAD = enum.auto()
    #: A 1xx head came (100 Continue, 103 Early Hints): the real answer follows.
    INFORMATIONAL = enum.auto()
    #: The head was handed over; the body is arriving.
    READING_BODY = enum.auto()
    #: The answer ended this read: the connection goes back to the pool or closes.
    ANSWERED = enum.auto()
    #: Closed, or broken (bytes nobody asked for, a second answer): never reused.
    CLOSED = enum.auto()


# The phases as module names: in Python 3.11 a global costs a tenth of an enum member's
# attribute lookup, and the protocol compares its phase a few dozen times a request.
IDLE = Phase.IDLE
AWAITING_HEAD = Phase.AWAITING_HEAD
INFORMATIONAL = Phase.INFORMATIONAL
READING_BODY = Phase.READING_BODY
ANSWERED = Phase.ANSWERED
CLOSED = Phase.CLOSED


class _Connection(asyncio.Protocol):
    """One upstream connection: sends a request, feeds the answer to the parser."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        # Looked up once: in 3.11 every get_running_loop() is a getpid() system call.
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.phase = IDLE
        # httptools looks its callbacks up on this object once, here.
        self._parser = httptools.HttpResponseParser(self)
        self._response: UpstreamResponse | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        #: The answer just ended allows the connection to carry another request.
        self._reusable = False
        self._reading_paused = False

    # --- used by the pool and the response

    def usable(self) -> bool:
        """Open and idle, as far as the event loop has seen."""
        return (
            self.phase is IDLE and self.transport is not None
            and not self.transport.is_closing()
        )  # fmt: skip

    async def exchange(self, head: bytes, body: bytes) -> UpstreamResponse:
        """Send one request and wait for its answer's head."""
        assert self.transport is not None and self.phase is IDLE
        response = self._response = UpstreamResponse(self)
        self._head_waiter = waiter = self._loop.create_future()
        self.phase = AWAITING_HEAD
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        try:
            await waiter
        except BaseException:
            self._exchange_abandoned(response, waiter)
            raise
        # No clearing of _head_waiter here: by now the connection may carry the next request.
        return response

    def _exchange_abandoned(self, response: UpstreamResponse, waiter: asyncio.Future[None]) -> None:
        """``exchange`` was cancelled (deadline, caller gone) or failed while waiting: the
        answer may still come, so this connection can never carry another request. Unless it
        came whole already and the connection went back to the pool: then it may carry
        someone else's now. A method, not inline after the ``await``: mypy keeps the types of
        ``_head_waiter`` and ``_response`` narrowed by the assignments before the ``await``,
        although callbacks change both meanwhile, and the compiled module (mypyc) would trust
        them."""
        if self._head_waiter is waiter:
            self._head_waiter = None
        if self._response is response:
            self.abort()

    def abort(self) -> None:
        """Close now, dropping anything unsent (an answer is in an unknown state)."""
        self.phase = CLOSED
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close an idle connection."""
        self.phase = CLOSED
        if self.transport is not None:
            self.transport.close()

    # --- used by the body (its Source)

    def body_full(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def body_taken(self) -> None:
        if self._reading_paused and self.transport is not None and self.phase is not CLOSED:
            self._reading_paused = False
            self.transport.resume_reading()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but have its methods.
        # The head and body go in one write, but a body larger than the socket buffer is sent
        # in pieces; Nagle would hold its tail back waiting for an ACK. asyncio and uvloop set
        # TCP_NODELAY on every TCP transport, so there is nothing to do for it here.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.phase is IDLE or self.phase is CLOSED:
            # Bytes nobody asked for: an idle connection is no longer in a known state.
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the upstream switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"the answer is not valid HTTP/1.1 ({exc})"))
            return
        if self.phase is ANSWERED:
            # An answer that came before the whole body was sent leaves the rest of the body
            # queued ahead of any next request: only a connection with nothing queued is reused.
            transport = self.transport
            if self._reusable and transport is not None and not transport.get_write_buffer_size():
                self.phase = IDLE
                self.body_taken()
                self._pool.release(self)
            else:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        phase, self.phase = self.phase, CLOSED
        response = self._response
        if response is not None:
            if exc is None and phase is READING_BODY and response.ends_at_close:
                self._response = None  # the body was framed by the close: it is complete
                response._connection = None
                response.body.finish()
            else:
                what = "reset" if exc is not None else "closed"
                when = "an answer" if phase is not READING_BODY else "the answer ended"
                self._fail(Disconnected(f"the connection was {what} before {when}"))
        self._pool.forget(self)

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self.phase is ANSWERED:  # a second answer to one request: never reused
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        raw_headers, self._raw_headers = self._raw_headers, []
        response = self._response
        if response is None or self.phase is not AWAITING_HEAD:
            return
        status = self._parser.get_status_code()
        if status < 200:
            self.phase = INFORMATIONAL  # 100 Continue, 103 Early Hints: the answer follows
            return
        response._set_head(status, raw_headers)
        self.phase = READING_BODY
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.phase is READING_BODY and self._response is not None:
            self._response.body.feed(body)

    def on_message_complete(self) -> None:
        if self.phase is INFORMATIONAL:
            self.phase = AWAITING_HEAD
            return
        response = self._response
        if response is None or self.phase is not READING_BODY:
            return
        self._response = None
        self._reusable = self._parser.should_keep_alive()
        self.phase = ANSWERED
        response._connection = None
        response.body.finish()

    def _fail(self, error: UpstreamError) -> None:
        """The exchange under way cannot finish: tell whoever waits, and close."""
        response, self._response = self._response, None
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif response is not None:
            response.body.fail(error)
        self.abort()


class UpstreamPool:
    """Keep-alive connections to one upstream origin, at most ``max_connections`` at once."""

    def __init__(
        self,
        upstream_url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        keepalive_s: float = KEEPALIVE_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(upstream_url)
        self._host = parts.hostname or ""
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        #: Open connections (in use or idle), plus slots reserved for connects under way.
        self._slots_used = 0
        #: The open connections, each holding one of the slots.
        self._connections: set[_Connection] = set()
        #: Idle connections and since when (loop time), oldest first: reuse takes the newest,
        #: the idle sweep the oldest.
        self._idle: dict[_Connection, float] = {}
        #: Callers waiting for a connection: each gets one handed over, or None (a slot freed:
        #: open a new one).
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        """How many connections are open now, idle or carrying a request."""
        return len(self._connections)

    @property
    def idle_connections(self) -> int:
        """How many open connections wait in the pool for a request."""
        return len(self._idle)

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send ``method target`` with exactly ``headers`` and ``body``; return the answer once
        its head has arrived. The caller bounds the whole call with its own deadline."""
        head = encode_head(method, target, headers)
        connection = self._take_idle() or await self._acquire()
        return await connection.exchange(head, body)

    async def close(self) -> None:
        """Close every connection, idle or in use; waiting and later requests fail."""
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self._idle.clear()
        for connection in list(self._connections):
            connection.abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamError("the upstream connection pool is closed"))
        await asyncio.sleep(0)  # let the transports report connection_lost

    # --- called by connections

    def release(self, connection: _Connection) -> None:
        """``connection`` finished an exchange and may carry another."""
        if self._closed:
            connection.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        loop = connection._loop
        self._idle[connection] = now = loop.time()
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_at(now + self._keepalive_s, self._sweep)

    def forget(self, connection: _Connection) -> None:
        """``connection`` is closed: drop it, and give its slot to a waiting caller."""
        self._idle.pop(connection, None)
        if connection in self._connections:
            self._connections.discard(connection)
            self._free_slot()

    # --- internals

    def _take_idle(self) -> _Connection | None:
        """The connection idle the shortest time, if one is usable (no coroutine: the path of
        nearly every request)."""
        idle = self._idle
        while idle:
            connection, _ = idle.popitem()
            if connection.usable():
                return connection
            connection.abort()
        return None

    async def _acquire(self) -> _Connection:
        while True:
            connection = self._take_idle()
            if connection is not None:
                return connection
            if self._closed:
                raise UpstreamError("the upstream connection pool is closed")
            if self._slots_used < self._max_connections:
                self._slots_used += 1
                return await self._open()
            handed = await self._wait()
            if handed is None:
                return await self._open()
            if handed.usable():
                return handed
            # It closed while being handed over; its slot went to someone else: go round again.

    async def _wait(self) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed something just as we were cancelled: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._free_slot()
                else:
                    self.release(handed)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    async def _open(self) -> _Connection:
        """Open a connection in a slot already reserved for it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                # Resolved and raced here rather than by create_connection, whose own happy
                # eyeballs uvloop does not offer (aiohappyeyeballs is aiohttp's choice too).
                addresses = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
                sock = await aiohappyeyeballs.start_connection(
                    addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S, loop=loop
                )
                try:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self, loop),
                        sock=sock,
                        ssl=self._ssl,
                        server_hostname=self._host if self._tls else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except BaseException as exc:
            self._free_slot()
            if isinstance(exc, TimeoutError):
                raise ConnectTimedOut("connection timed out (connect_timeout)") from None
            if isinstance(exc, ssl.SSLError | ssl.CertificateError):
                raise TLSFailed(f"TLS handshake failed ({exc})", exc) from None
            if isinstance(exc, OSError):
                raise ConnectFailed(f"connection failed ({_reason(exc)})", exc) from None
            raise
        if self._closed or connection.phase is CLOSED:
            # Not yet counted, so its connection_lost frees nothing: the slot is freed here.
            connection.abort()
            self._free_slot()
            if self._closed:
                raise UpstreamError("the upstream connection pool is closed")
            raise ConnectFailed("the connection closed as soon as it opened")
        self._connections.add(connection)
        return connection

    def _free_slot(self) -> None:
        self._slots_used -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._slots_used += 1  # reserved for the waiter, which opens a connection
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle for longer than keepalive_s."""
        self._sweep_handle = None
        loop = asyncio.get_running_loop()
        idle = self._idle
        expired_at = loop.time() - self._keepalive_s
        for connection, since in list(idle.items()):
            if since > expired_at:
                self._sweep_handle = loop.call_at(since + self._keepalive_s, self._sweep)
                break
            del idle[connection]
            connection.close()


def _reason(error: OSError) -> str:
    """What went wrong, without the address asyncio puts in its connect errors."""
    if error.errno and error.errno > 0 and not isinstance(error, socket.gaierror):
        return os.strerror(error.errno)
    return error.strerror or type(error).__name__


def encode_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The request line and header block, exactly these headers in this order.

    Raises ValueError for a name or value with a line break (the gateway validates every
    value before, so this never fires on what it forwards).
    """
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines.extend([f"{name}: {value}\r\n" for name, value in headers])
    lines.append("\r\n")
    head = "".join(lines).encode()
    # A CR or LF inside a name or value would split it into headers we never signed.
    line_count = len(headers) + 2
    if head.count(b"\n") != line_count or head.count(b"\r") != line_count:
        raise ValueError("a request header contains a line break")
    return head
