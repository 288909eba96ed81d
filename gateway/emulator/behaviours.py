"""Endpoint behaviours: how an InvokeEndpoint call is answered, chosen by the endpoint's name.

Each behaviour makes one of the service's answers reproducible on demand:

| endpoint name               | answer                                                       |
|-----------------------------|--------------------------------------------------------------|
| ``echo``, ``echo-<any>``    | 200 with the request's body (details below)                  |
| ``variants``                | like echo; variant ``VariantA``, ``VariantB``, ``VariantA``… |
| ``slow``, ``slow-<N>``      | like echo, after ``slow_default_ms`` or N ms                 |
| ``model-error``             | 424 ``ModelError``: the container answered 500               |
| ``model-timeout``           | 424 ``ModelError`` after ``model_timeout_s``, status 0       |
| ``throttle``                | 400 ``ThrottlingException``, body ``{"message": null}``      |
| ``unavailable``             | 503 ``ServiceUnavailable``                                   |
| ``reset``                   | reads the request, then a TCP reset (RST), no answer         |
| ``hang``                    | no answer, ever                                              |
| any other valid name        | 400 ``ValidationError`` ``Endpoint <name> of account``       |
|                             | ``123456789012 not found.`` (the service's words)            |
| an invalid name             | 400 ``ValidationError`` naming the ``endpointName`` rule     |

echo: ``Content-Type`` is the request's (default ``application/octet-stream``);
``x-Amzn-Invoked-Production-Variant`` is the requested ``X-Amzn-SageMaker-Target-Variant`` or
``AllTraffic``; ``X-Amzn-SageMaker-Custom-Attributes`` comes back when sent. A
``X-Amzn-SageMaker-Session-Id: NEW_SESSION`` gets ``X-Amzn-SageMaker-New-Session-Id: <id>;
Expires=<UTC, 20 minutes ahead>``; an id issued earlier and not expired is an existing session, any
other id a 400 ``ValidationError``. Two private headers a gateway must not pass back to its caller
are added: ``X-Emulator-Private: do-not-forward`` and ``Set-Cookie: emulator=1``.

variants: the turn-taking counter is per app and only advances on calls without a TargetVariant.

model-error and model-timeout: the body has the service's fields, ``ErrorCode``,
``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn`` and ``Message`` (see
:func:`gateway.emulator.errors.model_error`); the timeout's message is the service's "Your
invocation timed out while waiting for a response from container primary. ..." wording.

throttle: InvokeEndpoint's throttling really carries no message; SDKs print ``None``/``null``.

Every wait is an ``await`` that ends early when the client goes away (the handler is cancelled) or
when the emulator shuts down (the wait then answers 503 ``ServiceUnavailable``).

To add a behaviour: write ``async def my_behaviour(call: Invocation) -> web.StreamResponse`` and
register it in ``_BY_NAME`` (or in :func:`find_behaviour` for a name pattern).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway.emulator.errors import (
    SERVICE_UNAVAILABLE,
    THROTTLING,
    EmulatorError,
    endpoint_not_found,
    model_error,
    validation_error,
)
from gateway.emulator.settings import EmulatorSettings

DEFAULT_CONTENT_TYPE = "application/octet-stream"
DEFAULT_VARIANT = "AllTraffic"
ALTERNATING_VARIANTS = ("VariantA", "VariantB")
SESSION_LIFETIME = timedelta(minutes=20)

TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
SESSION_ID = "X-Amzn-SageMaker-Session-Id"
NEW_SESSION_ID = "X-Amzn-SageMaker-New-Session-Id"
INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"
NEW_SESSION = "NEW_SESSION"

# From botocore's sagemaker-runtime model (EndpointName).
ENDPOINT_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*"
ENDPOINT_NAME_MAX = 63
_ENDPOINT_NAME = re.compile(ENDPOINT_NAME_PATTERN)
_SLOW = re.compile(r"slow-(\d{1,9})")

MODEL_FAILURE_STATUS = 500
MODEL_FAILURE_MESSAGE = "Emulated model failure: the container answered HTTP 500."
# ModelError's ErrorCode field is not in the public service model, and no public report quoted
# in full shows its values: these two are best guesses; the other fields follow the model.
CLIENT_ERROR_FROM_MODEL = "CLIENT_ERROR_FROM_MODEL"
INTERNAL_FAILURE_FROM_MODEL = "INTERNAL_FAILURE_FROM_MODEL"
# The service's words when the container does not answer within its 60 seconds, as users have
# reported them (it names the container ``primary``, or ``model`` on older endpoints).
MODEL_TIMEOUT_MESSAGE = (
    "Your invocation timed out while waiting for a response from container primary. "
    "Review the latency metrics for each container in Amazon CloudWatch, resolve the issue, "
    "and try again."
)
UNAVAILABLE_MESSAGE = "The service is unavailable. Try your call again."
SHUTTING_DOWN_MESSAGE = "The emulator is shutting down."


@dataclass
class EmulatorState:
    """What the behaviours of one app share; lives on the app, never in a module global."""

    #: Returns the current time (aware); the signature check and sessions read it.
    clock: Callable[[], datetime]
    variants: Iterator[str] = field(default_factory=lambda: itertools.cycle(ALTERNATING_VARIANTS))
    #: Session id -> expiry, for sessions this emulator issued.
    sessions: dict[str, datetime] = field(default_factory=dict)
    #: Request ids whose behaviour is still running (a hung call stays here until cancelled).
    pending: set[str] = field(default_factory=set)
    #: Set when the app shuts down, so that waits stop instead of holding the shutdown.
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Invocation:
    """One verified InvokeEndpoint call, as a behaviour sees it."""

    request: web.Request
    endpoint: str
    body: bytes
    settings: EmulatorSettings
    state: EmulatorState
    #: When the call was received, by the app's clock.
    received_at: datetime


Behaviour = Callable[[Invocation], Awaitable[web.StreamResponse]]


def resolve(endpoint: str) -> Behaviour:
    """The behaviour for an endpoint name; a ValidationError like the service's if none."""
    if len(endpoint) > ENDPOINT_NAME_MAX:
        raise _invalid_name(
            endpoint, f"Member must have length less than or equal to {ENDPOINT_NAME_MAX}"
        )
    if not _ENDPOINT_NAME.fullmatch(endpoint):
        raise _invalid_name(
            endpoint, f"Member must satisfy regular expression pattern: {ENDPOINT_NAME_PATTERN}"
        )
    behaviour = find_behaviour(endpoint)
    if behaviour is None:
        raise endpoint_not_found(endpoint)
    return behaviour


def _invalid_name(endpoint: str, constraint: str) -> EmulatorError:
    return validation_error(
        f"1 validation error detected: Value '{endpoint}' at 'endpointName' "
        f"failed to satisfy constraint: {constraint}"
    )


def find_behaviour(endpoint: str) -> Behaviour | None:
    """The behaviour registered for a (valid) endpoint name, or None."""
    exact = _BY_NAME.get(endpoint)
    if exact is not None:
        return exact
    if endpoint.startswith("echo-"):
        return echo
    slow_match = _SLOW.fullmatch(endpoint)
    if slow_match:
        return functools.partial(slow, delay_ms=int(slow_match[1]))
    return None


# ---------------------------------------------------------------------------------------------
# Behaviours
# ---------------------------------------------------------------------------------------------


async def echo(call: Invocation) -> web.StreamResponse:
    """200 with the request's body and content type, on the requested or default variant."""
    return _model_answer(call, call.request.headers.get(TARGET_VARIANT) or DEFAULT_VARIANT)


async def variants(call: Invocation) -> web.StreamResponse:
    """Like echo; without a TargetVariant, VariantA and VariantB take turns."""
    requested = call.request.headers.get(TARGET_VARIANT)
    return _model_answer(call, requested or next(call.state.variants))


async def slow(call: Invocation, *, delay_ms: int | None = None) -> web.StreamResponse:
    """Like echo, after ``delay_ms`` (default: the settings' ``slow_default_ms``)."""
    wait_ms = call.settings.slow_default_ms if delay_ms is None else delay_ms
    await pause(call, wait_ms / 1000)
    return await echo(call)


async def model_failure(call: Invocation) -> web.StreamResponse:
    """424 ModelError: the model container answered 500."""
    raise model_error(
        endpoint=call.endpoint,
        region=call.settings.region,
        original_status=MODEL_FAILURE_STATUS,
        original_message=MODEL_FAILURE_MESSAGE,
        error_code=CLIENT_ERROR_FROM_MODEL,
    )


async def model_timeout(call: Invocation) -> web.StreamResponse:
    """424 ModelError after ``model_timeout_s``: the container never answered."""
    await pause(call, call.settings.model_timeout_s)
    raise model_error(
        endpoint=call.endpoint,
        region=call.settings.region,
        original_status=0,
        original_message=MODEL_TIMEOUT_MESSAGE,
        error_code=INTERNAL_FAILURE_FROM_MODEL,
    )


async def throttle(call: Invocation) -> web.StreamResponse:
    """400 ThrottlingException; the service sends it with a null message."""
    raise EmulatorError(400, THROTTLING, None)


async def unavailable(call: Invocation) -> web.StreamResponse:
    """503 ServiceUnavailable."""
    raise EmulatorError(503, SERVICE_UNAVAILABLE, UNAVAILABLE_MESSAGE)


async def reset(call: Invocation) -> web.StreamResponse:
    """Reset the connection without answering; the client sees a reset or a disconnect."""
    transport = call.request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A zero linger time makes the close send RST rather than FIN: a reset, not an EOF.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Nothing can be sent any more: end the handler the way aiohttp ends one whose client left.
    raise asyncio.CancelledError


async def hang(call: Invocation) -> web.StreamResponse:
    """Never answer; ends only when the client leaves (cancelled) or the emulator stops."""
    await pause(call, None)
    raise AssertionError("pause(None) returns only by raising")  # pragma: no cover


_BY_NAME: Mapping[str, Behaviour] = {
    "echo": echo,
    "variants": variants,
    "slow": slow,
    "model-error": model_failure,
    "model-timeout": model_timeout,
    "throttle": throttle,
    "unavailable": unavailable,
    "reset": reset,
    "hang": hang,
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


async def pause(call: Invocation, seconds: float | None) -> None:
    """Wait ``seconds`` (None: forever); cancelled with the handler when the client goes away.

    If the emulator shuts down first, the wait ends with a 503, so that a hung call does not hold
    the shutdown for the server's whole grace period.
    """
    try:
        async with asyncio.timeout(seconds):
            await call.state.shutting_down.wait()
    except TimeoutError:
        return
    raise EmulatorError(503, SERVICE_UNAVAILABLE, SHUTTING_DOWN_MESSAGE)


def _model_answer(call: Invocation, variant: str) -> web.Response:
    headers = {
        "Content-Type": call.request.headers.get("Content-Type") or DEFAULT_CONTENT_TYPE,
        INVOKED_VARIANT: variant,
        **_session_headers(call),
        # What a model container might add; a gateway must not pass these back to its caller.
        "X-Emulator-Private": "do-not-forward",
        "Set-Cookie": "emulator=1",
    }
    custom_attributes = call.request.headers.get(CUSTOM_ATTRIBUTES)
    if custom_attributes is not None:
        headers[CUSTOM_ATTRIBUTES] = custom_attributes
    return web.Response(body=call.body, headers=headers)


def _session_headers(call: Invocation) -> dict[str, str]:
    requested = call.request.headers.get(SESSION_ID)
    if requested is None:
        return {}
    sessions = call.state.sessions
    now = call.received_at
    for expired in [key for key, expires in sessions.items() if expires <= now]:
        del sessions[expired]
    if requested == NEW_SESSION:
        session_id = str(uuid.uuid4())
        expires = now + SESSION_LIFETIME
        sessions[session_id] = expires
        return {
            NEW_SESSION_ID: f"{session_id}; Expires={expires.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
        }
    if requested not in sessions:
        raise validation_error(f"Session {requested} was not found or has expired.")
    return {}
