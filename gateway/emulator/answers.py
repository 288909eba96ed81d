"""How a model's answer reaches the caller, by operation.

A behaviour says what the model answers (a :class:`ModelOutput`: its parts, their pace, its
content type, the variant, and whether its stream breaks); :func:`deliver` answers in the form of
the operation that was called:

| operation                        | the answer                                                 |
|----------------------------------|------------------------------------------------------------|
| InvokeEndpoint                   | once every part is produced: 200, the parts joined as the  |
|                                  | body, ``Content-Type``: the model's content type (the      |
|                                  | service buffers a streaming container for this operation); |
|                                  | a broken stream is the failure's InvokeEndpoint error      |
| InvokeEndpointWithResponseStream | 200 at once, ``Content-Type: application/vnd.amazon.``     |
|                                  | ``eventstream``, ``X-Amzn-SageMaker-Content-Type``: the    |
|                                  | model's; chunked; each part a PayloadPart message written  |
|                                  | when produced, never buffered; a broken stream ends with   |
|                                  | its exception message (see :mod:`.eventstream`), or with   |
|                                  | the connection reset                                       |
| InvokeEndpointAsync              | 202 (see :func:`gateway.emulator.async_inference.accepted`)|

Both synchronous forms carry ``x-Amzn-Invoked-Production-Variant``, the request's
``X-Amzn-SageMaker-Custom-Attributes`` back when sent, the session headers (see
:mod:`.sessions`), and two private headers a model container might add and a gateway must not
pass back to its caller: ``X-Emulator-Private: do-not-forward`` and ``Set-Cookie: emulator=1``.

Once a stream's 200 is sent, nothing can turn into an HTTP error any more: a failure after that
point (the emulator shutting down mid-stream, or a bug) ends the stream with an
``InternalStreamFailure`` message, as the service reports "an unknown error" inside the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from gateway.emulator import eventstream
from gateway.emulator.async_inference import accepted
from gateway.emulator.errors import EmulatorError
from gateway.emulator.invocation import (
    CONTENT_TYPE,
    CUSTOM_ATTRIBUTES,
    INVOKE_ENDPOINT_ASYNC,
    INVOKE_ENDPOINT_WITH_RESPONSE_STREAM,
    INVOKED_VARIANT,
    PRIVATE_HEADERS,
    Invocation,
    pause,
    reset_connection,
)
from gateway.emulator.sessions import session_headers

log = logging.getLogger(__name__)

INTERNAL_STREAM_FAILURE_MESSAGE = (
    "The stream processing failed because of an unknown error, exception or failure. "
    "Try your request again."
)


@dataclass(frozen=True)
class StreamFailure:
    """How a model's stream breaks: the exception message, and the error InvokeEndpoint gives."""

    #: The exception message's type; None: no message, the connection is reset instead.
    exception_type: str | None
    members: Mapping[str, Any]
    #: The error a buffered (InvokeEndpoint) call answers instead of the parts.
    invoke_error: Callable[[Invocation], EmulatorError]


@dataclass(frozen=True)
class ModelOutput:
    """What the model answers: its parts in order, their pace, and how its stream ends."""

    content_type: str
    variant: str
    parts: Sequence[bytes]
    #: Seconds between one part and the next.
    interval_s: float = 0.0
    #: Seconds before the first part (a stream's 200 and headers come at once).
    first_part_delay_s: float = 0.0
    #: After this many parts (1 or more), ``stall_s`` instead of ``interval_s`` before the
    #: next part (or, after the last part, before the stream's end); 0: no stall.
    stall_after_parts: int = 0
    stall_s: float = 0.0
    #: Sent after the parts when the stream breaks; None for a stream that ends well.
    failure: StreamFailure | None = None
    #: Headers of the answer beyond the common ones (e.g. a closed session's id).
    headers: Mapping[str, str] = field(default_factory=dict)

    def wait_before(self, index: int) -> float:
        """Seconds between part ``index - 1`` and part ``index`` (0: since the call; the number
        of parts: the stream's end, or its failure)."""
        if index and index == self.stall_after_parts:
            return self.stall_s
        if index == 0:
            return self.first_part_delay_s
        return self.interval_s if index < len(self.parts) else 0.0


async def deliver(call: Invocation, output: ModelOutput) -> web.StreamResponse:
    """Answer ``call`` with ``output`` in the form of the operation called."""
    if call.operation == INVOKE_ENDPOINT_ASYNC:
        return accepted(call)
    output = replace(output, headers={**output.headers, **session_headers(call)})
    if call.operation == INVOKE_ENDPOINT_WITH_RESPONSE_STREAM:
        return await _stream(call, output)
    return await _buffered(call, output)


def common_headers(call: Invocation, output: ModelOutput) -> dict[str, str]:
    """The variant, the custom attributes sent, the output's own and the private headers."""
    headers = {INVOKED_VARIANT: output.variant, **output.headers, **PRIVATE_HEADERS}
    custom_attributes = call.header(CUSTOM_ATTRIBUTES)
    if custom_attributes is not None:
        headers[CUSTOM_ATTRIBUTES] = custom_attributes
    return headers


async def _buffered(call: Invocation, output: ModelOutput) -> web.Response:
    await pause(call, sum(output.wait_before(index) for index in range(len(output.parts) + 1)))
    if output.failure is not None:
        raise output.failure.invoke_error(call)
    headers = {"Content-Type": output.content_type, **common_headers(call, output)}
    return web.Response(body=b"".join(output.parts), headers=headers)


async def _stream(call: Invocation, output: ModelOutput) -> web.StreamResponse:
    headers = {
        "Content-Type": eventstream.EVENT_STREAM_CONTENT_TYPE,
        CONTENT_TYPE: output.content_type,
        **common_headers(call, output),
    }
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(call.request)
    try:
        for index, part in enumerate(output.parts):
            if wait_s := output.wait_before(index):
                await pause(call, wait_s)
            # Each write goes to the socket now: a part is never held back for the next one.
            await response.write(eventstream.payload_part(part))
        if wait_s := output.wait_before(len(output.parts)):
            await pause(call, wait_s)
        failure = output.failure
        if failure is not None:
            if failure.exception_type is None:
                reset_connection(call)
            await response.write(
                eventstream.exception_message(failure.exception_type, failure.members)
            )
    except ConnectionResetError:
        raise  # the client left: there is nobody to tell
    except Exception as error:
        if not isinstance(error, EmulatorError):
            log.exception("emulator failure mid-stream on %s", call.request.path)
        members = {"Message": INTERNAL_STREAM_FAILURE_MESSAGE}
        await response.write(
            eventstream.exception_message(eventstream.INTERNAL_STREAM_FAILURE, members)
        )
    await response.write_eof()
    return response
