"""The emulated SageMaker runtime as an aiohttp application.

A request goes through, in order:

1. ``aws_errors`` (middleware): gives the request its id and turns every error raised below into
   the service's shape; ``x-amzn-RequestId`` is added to every response as it is prepared.
2. ``verify_and_journal`` (middleware): reads the body (413 ValidationError past
   ``max_body_bytes``), checks the SigV4 signature (signing name ``sagemaker``, the configured
   region, Host and X-Amz-Date signed, X-Amz-Date within ``clock_skew_s``, session tokens), and
   appends a :class:`JournalEntry` to ``app[JOURNAL]`` whatever the outcome; a failed check
   answers 403/400 like AWS.
3. The operation's handler, from :data:`OPERATIONS`: the operation's own request checks
   (InvokeEndpointAsync's headers, see :mod:`gateway.emulator.async_inference`), then the
   endpoint's behaviour (see :mod:`gateway.emulator.behaviours`), which answers in the
   operation's form (see :mod:`gateway.emulator.answers`).

``GET /_emulator/requests`` serves the journal as JSON and ``DELETE`` clears it, for tests that run
the emulator in another process; these two are neither signed nor journaled.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

from aiohttp import web

from gateway.emulator import sigv4
from gateway.emulator.async_inference import check_async_request
from gateway.emulator.behaviours import resolve
from gateway.emulator.errors import (
    INTERNAL_FAILURE,
    UNKNOWN_OPERATION,
    VALIDATION_ERROR,
    EmulatorError,
    validation_error,
)
from gateway.emulator.invocation import (
    INVOKE_ENDPOINT,
    INVOKE_ENDPOINT_ASYNC,
    INVOKE_ENDPOINT_WITH_RESPONSE_STREAM,
    EmulatorState,
    Invocation,
)
from gateway.emulator.journal import JournalEntry
from gateway.emulator.settings import EmulatorSettings

log = logging.getLogger(__name__)

SIGNING_NAME = "sagemaker"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
CONTROL_PATH = "/_emulator/requests"

Clock = Callable[[], datetime]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: An operation's own checks of a request, made before the endpoint is looked up.
RequestCheck = Callable[[Invocation], None]

SETTINGS = web.AppKey("emulator_settings", EmulatorSettings)
#: Every request received, oldest first (see :class:`JournalEntry`).
JOURNAL = web.AppKey("emulator_journal", list[JournalEntry])
STATE = web.AppKey("emulator_state", EmulatorState)


@dataclass
class _Context:
    """What the middlewares learn about a request and the handlers need."""

    request_id: str
    body: bytes = b""


def _request_key(name: str, kind: type[Any]) -> Any:
    # Typed request storage arrived in aiohttp 3.14; older releases take a plain string key.
    request_key = getattr(web, "RequestKey", None)
    return request_key(name, kind) if request_key is not None else name


_CONTEXT = _request_key("emulator_context", _Context)


def utc_now() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------


def operation_handler(operation: str, check: RequestCheck | None = None) -> Handler:
    """The handler of one runtime operation: ``check`` the request, then the endpoint answers."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        context: _Context = request[_CONTEXT]
        call = Invocation(
            request=request,
            operation=operation,
            endpoint=request.match_info["name"],
            body=context.body,
            settings=request.app[SETTINGS],
            state=state,
            received_at=state.clock(),
            request_id=context.request_id,
        )
        if check is not None:
            check(call)
        behaviour = resolve(call.endpoint, operation)
        state.pending.add(call.request_id)
        try:
            return await behaviour(call)
        finally:
            state.pending.discard(call.request_id)

    return handler


#: Path suffix after ``/endpoints/{name}/`` -> the operation's handler. Add operations here.
OPERATIONS: Mapping[str, Handler] = {
    "invocations": operation_handler(INVOKE_ENDPOINT),
    "async-invocations": operation_handler(INVOKE_ENDPOINT_ASYNC, check_async_request),
    "invocations-response-stream": operation_handler(INVOKE_ENDPOINT_WITH_RESPONSE_STREAM),
}


async def list_requests(request: web.Request) -> web.Response:
    """The journal as JSON, oldest first."""
    return web.json_response([entry.to_json() for entry in request.app[JOURNAL]])


async def clear_requests(request: web.Request) -> web.Response:
    """Empty the journal."""
    request.app[JOURNAL].clear()
    return web.Response(status=204)


# ---------------------------------------------------------------------------------------------
# Middlewares
# ---------------------------------------------------------------------------------------------


@web.middleware
async def aws_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id; answer every error in the service's shape."""
    request[_CONTEXT] = _Context(request_id=str(uuid.uuid4()))
    try:
        return await handler(request)
    except EmulatorError as error:
        return error.to_response()
    except web.HTTPException as error:  # the router's 404 and 405
        return _from_http_exception(error).to_response()
    except ConnectionResetError:
        raise  # the client left mid-answer (a stream): nothing more can be sent
    except Exception:
        # A bug in the emulator: still answer in the service's shape, and say where it broke.
        log.exception("emulator failure on %s %s", request.method, request.path)
        return EmulatorError(500, INTERNAL_FAILURE, "An internal failure occurred.").to_response()


def _from_http_exception(error: web.HTTPException) -> EmulatorError:
    if error.status in (404, 405):
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return EmulatorError(error.status, UNKNOWN_OPERATION, error.reason, headers=headers)
    return EmulatorError(error.status, VALIDATION_ERROR, error.reason)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # A response prepared outside the middlewares (a very early failure) still gets an id.
    context: _Context | None = request.get(_CONTEXT)
    response.headers["x-amzn-RequestId"] = context.request_id if context else str(uuid.uuid4())


@web.middleware
async def verify_and_journal(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read the body, check the signature, journal the request; only then run the handler."""
    if request.path == CONTROL_PATH:
        return await handler(request)
    app = request.app
    settings, journal = app[SETTINGS], app[JOURNAL]
    context: _Context = request[_CONTEXT]
    headers = _decode_headers(request.raw_headers)

    def record(
        body_length: int, body_sha256: str | None, signature_error: str | None = None
    ) -> None:
        # No body hash means the body was never read, so the signature was never checked.
        journal.append(
            JournalEntry(
                request_id=context.request_id,
                method=request.method,
                raw_path=request.raw_path,
                headers=headers,
                body_length=body_length,
                body_sha256=body_sha256,
                endpoint=request.match_info.get("name"),
                signature_ok=body_sha256 is not None and signature_error is None,
                signature_error=signature_error,
            )
        )

    try:
        body = await _read_body(request, settings.max_body_bytes)
    except _BodyTooLarge as too_large:
        record(too_large.length, None)
        raise validation_error(
            "1 validation error detected: Value at 'body' failed to satisfy constraint: "
            f"Member must have length less than or equal to {settings.max_body_bytes}",
            status=413,
        ) from None
    failure = _signature_failure(request, headers, body, settings, app[STATE].clock())
    record(len(body), sha256(body).hexdigest(), failure.code if failure else None)
    if failure is not None:
        log.info("signature refused: %s %s: %s", request.method, request.path, failure.code)
        raise EmulatorError(failure.status, failure.code, failure.message)
    context.body = body
    return await handler(request)


def _decode_headers(raw_headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[str, str], ...]:
    # surrogateescape keeps non-UTF-8 bytes as they came, so the signature covers the wire bytes.
    return tuple(
        (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        for name, value in raw_headers
    )


class _BodyTooLarge(Exception):
    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, refusing a declared or counted length over ``max_bytes``."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise _BodyTooLarge(declared)
    chunks: list[bytes] = []
    length = 0
    async for chunk in request.content.iter_any():
        length += len(chunk)
        if length > max_bytes:  # a chunked body has no Content-Length to check first
            raise _BodyTooLarge(length)
        chunks.append(chunk)
    return b"".join(chunks)


def _signature_failure(
    request: web.Request,
    headers: tuple[tuple[str, str], ...],
    body: bytes,
    settings: EmulatorSettings,
    now: datetime,
) -> sigv4.SignatureError | None:
    raw_path, _, raw_query = request.raw_path.partition("?")
    try:
        sigv4.verify(
            request.method,
            raw_path,
            raw_query,
            headers,
            body,
            secrets=settings.secrets(),
            region=settings.region,
            service=SIGNING_NAME,
            now=now,
            session_tokens=settings.session_tokens(),
            max_skew_s=settings.clock_skew_s,
        )
    except sigv4.SignatureError as error:
        return error
    return None


# ---------------------------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------------------------


async def _release_waiters(app: web.Application) -> None:
    # Runs before the server waits for in-flight handlers: a hung call must not hold shutdown.
    app[STATE].shutting_down.set()


def make_emulator_app(
    settings: EmulatorSettings | None = None, *, clock: Clock = utc_now
) -> web.Application:
    """The emulator as an aiohttp application; ``clock`` is what "now" means to it.

    Run it with handler cancellation on (``aiohttp_server`` and :func:`run_emulator` do), so
    that a client going away cancels a pending ``slow``/``model-timeout``/``hang`` call.
    """
    app = web.Application(middlewares=[aws_errors, verify_and_journal])
    app[SETTINGS] = settings or EmulatorSettings()
    app[JOURNAL] = []
    app[STATE] = EmulatorState(clock=clock)
    for suffix, handler in OPERATIONS.items():
        app.router.add_post(f"/endpoints/{{name}}/{suffix}", handler)
    app.router.add_get(CONTROL_PATH, list_requests)
    app.router.add_delete(CONTROL_PATH, clear_requests)
    app.on_response_prepare.append(_add_request_id)
    app.on_shutdown.append(_release_waiters)
    return app


def run_emulator(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: EmulatorSettings | None = None
) -> None:
    """Serve the emulator until interrupted (the ``sagemaker-gateway emulator`` command)."""
    web.run_app(make_emulator_app(settings), host=host, port=port, handler_cancellation=True)


@asynccontextmanager
async def running_emulator(
    settings: EmulatorSettings | None = None, *, host: str = DEFAULT_HOST, port: int = 0
) -> AsyncIterator[str]:
    """Run the emulator in this event loop (port 0: a free one); yield its base URL."""
    runner = web.AppRunner(make_emulator_app(settings), handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()
