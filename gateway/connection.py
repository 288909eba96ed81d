"""Client connections: a deadline on each request head, a cap on open connections, and
SageMaker-shaped answers to requests that are not valid HTTP.

aiohttp's connection handler has no deadline of its own on reading a request's line and
headers: a client dribbling a head one byte at a time would hold its connection (and a slot
of ``max_connections``) for as long as it liked. ``GatewayRequestHandler`` starts a timer at
the first byte of each head and closes the connection when the head is not complete in time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.errors import ERROR_TYPE_HEADER, REQUEST_ID_HEADER, new_request_id

Reject = Callable[[str], None]
Handler = Callable[[web.Request], Any]

_ERROR_TYPES = {400: "ValidationError", 413: "ValidationError", 431: "ValidationError"}


class GatewayRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, with a head deadline and SageMaker-shaped errors."""

    __slots__ = ("_awaiting_head", "_head_timeout_s", "_head_timer", "_on_reject")

    def __init__(
        self, manager: web.Server, *, head_timeout_s: float, on_reject: Reject, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._on_reject = on_reject

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A connection that never sends a byte is the same threat as one that sends slowly.
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head and self._head_timer is None:
            self._arm_head_timer()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def head_received(self) -> None:
        """A request's head was parsed: its deadline no longer applies."""
        self._awaiting_head = False
        self._cancel_head_timer()

    def request_finished(self) -> None:
        """The handler returned: the next bytes on this connection start a new head."""
        self._awaiting_head = True

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not parse the way the service answers bad requests."""
        if request.writer.output_size > 0:  # a response is under way: only closing is left
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            error_type, text = "InternalFailure", "The gateway failed to handle the request"
        else:
            self._on_reject("bad_http")
            error_type = _ERROR_TYPES.get(status, "ValidationError")
            text = f"The request is not valid HTTP/1.1: {_printable(message or str(exc))}"
        response = web.Response(
            status=status,
            body=json.dumps({"message": text}).encode(),
            content_type="application/json",
            headers={ERROR_TYPE_HEADER: error_type, REQUEST_ID_HEADER: new_request_id()},
        )
        response.force_close()
        return response

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._head_timeout_s, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._awaiting_head:
            self._on_reject("head_timeout")
            self.force_close()


class RefusedConnection(asyncio.Protocol):
    """Stands in for a handler when ``max_connections`` are open: closes at once."""

    def __init__(self, on_reject: Reject) -> None:
        self._on_reject = on_reject

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._on_reject("connection_limit")
        transport.close()


@web.middleware
async def head_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the connection when its head deadline stops and starts applying."""
    protocol = request.protocol
    if not isinstance(protocol, GatewayRequestHandler):  # an aiohttp test server, say
        response: web.StreamResponse = await handler(request)
        return response
    protocol.head_received()
    try:
        response = await handler(request)
        return response
    finally:
        protocol.request_finished()


def _printable(text: str, limit: int = 200) -> str:
    """The parser's reason (its first line), reduced to printable ASCII and a bounded length."""
    # aiohttp appends the offending bytes (": b'...'"); the caller has them, the reason is enough.
    first_line = text.strip().split("\n", 1)[0].split(": b'", 1)[0].rstrip(":")
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in first_line)
    return cleaned[:limit]
