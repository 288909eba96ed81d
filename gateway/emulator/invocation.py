"""What every behaviour works with: the verified call, the app's shared state, and a wait.

The operation names are the service model's; the header names are the wire names it gives them.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn

from aiohttp import web

from gateway.emulator.errors import SERVICE_UNAVAILABLE, EmulatorError
from gateway.emulator.settings import EmulatorSettings

INVOKE_ENDPOINT = "InvokeEndpoint"
INVOKE_ENDPOINT_ASYNC = "InvokeEndpointAsync"
INVOKE_ENDPOINT_WITH_RESPONSE_STREAM = "InvokeEndpointWithResponseStream"

ACCEPT = "X-Amzn-SageMaker-Accept"
CONTENT_TYPE = "X-Amzn-SageMaker-Content-Type"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
ENABLE_EXPLANATIONS = "X-Amzn-SageMaker-Enable-Explanations"
INFERENCE_COMPONENT = "X-Amzn-SageMaker-Inference-Component"
INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"
SESSION_ID = "X-Amzn-SageMaker-Session-Id"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"

#: What a model container might add; a gateway must not pass these back to its caller.
PRIVATE_HEADERS: Mapping[str, str] = {
    "X-Emulator-Private": "do-not-forward",
    "Set-Cookie": "emulator=1",
}

DEFAULT_VARIANT = "AllTraffic"
ALTERNATING_VARIANTS = ("VariantA", "VariantB")
SHUTTING_DOWN_MESSAGE = "The emulator is shutting down."


@dataclass
class EmulatorState:
    """What the behaviours of one app share; lives on the app, never in a module global."""

    #: Returns the current time (aware); the signature check and sessions read it.
    clock: Callable[[], datetime]
    variants: Iterator[str] = field(default_factory=lambda: itertools.cycle(ALTERNATING_VARIANTS))
    #: Session id -> expiry, for sessions this emulator issued and nobody closed.
    sessions: dict[str, datetime] = field(default_factory=dict)
    #: Request ids whose behaviour is still running (a hung call stays here until cancelled).
    pending: set[str] = field(default_factory=set)
    #: Set when the app shuts down, so that waits stop instead of holding the shutdown.
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Invocation:
    """One verified call of a runtime operation, as a behaviour sees it."""

    request: web.Request
    #: ``InvokeEndpoint``, ``InvokeEndpointAsync`` or ``InvokeEndpointWithResponseStream``.
    operation: str
    endpoint: str
    body: bytes
    settings: EmulatorSettings
    state: EmulatorState
    #: When the call was received, by the app's clock.
    received_at: datetime
    #: The ``x-amzn-RequestId`` the answer carries.
    request_id: str

    def header(self, name: str) -> str | None:
        """A request header's value, or None when it was not sent."""
        return self.request.headers.get(name)

    def requested_variant(self) -> str:
        """The TargetVariant asked for, else the endpoint's only variant, ``AllTraffic``."""
        return self.header(TARGET_VARIANT) or DEFAULT_VARIANT


#: How an endpoint answers a call.
Behaviour = Callable[[Invocation], Awaitable[web.StreamResponse]]


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


def reset_connection(call: Invocation) -> NoReturn:
    """Reset the call's connection (TCP RST, not FIN) and end the handler, answering nothing."""
    transport = call.request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A zero linger time makes the close send RST rather than FIN: a reset, not an EOF.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Nothing can be sent any more: end the handler the way aiohttp ends one whose client left.
    raise asyncio.CancelledError
