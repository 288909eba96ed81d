"""The streaming endpoints: a model that answers in parts, at a set pace, and may break midway.

A name is ``stream``, then what ends the stream, then its pace, each part optional but in this
order: ``stream[-<end>][-<N>[-<ms>]][-first-<ms>][-stall-<k>-<ms>]``.

| part of the name     | what it sets                                                        |
|----------------------|---------------------------------------------------------------------|
| ``-<N>``             | N parts (default ``stream_parts``)                                  |
| ``-<N>-<ms>``        | ... one every ms milliseconds (default ``stream_part_interval_ms``) |
| ``-first-<ms>``      | the first part comes ms milliseconds after the call (default: at    |
|                      | once), apart from the pace between parts: a model's time to first   |
|                      | token                                                               |
| ``-stall-<k>-<ms>``  | after part k (1 or more), ms milliseconds instead of the pace before |
|                      | the next part; k = N stalls before the stream's end (or its         |
|                      | failure); a larger k, never                                         |

| ``<end>``            | after the parts                                                     |
|----------------------|---------------------------------------------------------------------|
| (none)               | the stream ends well                                                |
| ``fail``             | a ``ModelStreamError`` (ErrorCode ``StreamBroken``)                 |
| ``timeout``          | a ``ModelStreamError`` (ErrorCode ``ModelInvocationTimeExceeded``)  |
| ``internal-failure`` | an ``InternalStreamFailure``                                        |
| ``cut``              | no message: the connection is reset (TCP RST) mid-stream            |

So ``stream-5-50-first-300`` sends 5 parts 50 ms apart, the first 300 ms after the call;
``stream-fail-2`` two parts, then a ModelStreamError; ``stream-6-20-stall-3-1000`` pauses a
second between its third and fourth parts.

The parts are the request body cut into N contiguous slices as equal as can be (the first
``len(body) % N`` are one byte longer): joined in order they are the body, so a reader can tell
that every part came, in order, unchanged. A body of fewer than N bytes gives some empty parts.

The model's content type (``X-Amzn-SageMaker-Content-Type`` of the stream) is the request's
``X-Amzn-SageMaker-Accept``, else its ``Content-Type``, else ``application/octet-stream``.

Called with InvokeEndpoint, these endpoints answer once the last part is produced (the
first-part delay, the pace and the stall all waited), as the service does for a streaming
container: the parts joined; ``stream-fail`` a 424 ``ModelError`` (the container's stream was
reset), ``stream-timeout`` the 424 ``ModelError`` of a model timeout, ``stream-internal-failure``
a 500 ``InternalFailure`` and ``stream-cut`` a reset connection instead.
See :mod:`gateway.emulator.answers` for how the parts are written.
"""

from __future__ import annotations

import functools
import itertools
import re

from aiohttp import web

from gateway.emulator import eventstream
from gateway.emulator.answers import (
    INTERNAL_STREAM_FAILURE_MESSAGE,
    ModelOutput,
    StreamFailure,
    deliver,
)
from gateway.emulator.errors import (
    INTERNAL_FAILURE,
    INTERNAL_FAILURE_FROM_MODEL,
    EmulatorError,
    model_error,
    model_timeout_error,
)
from gateway.emulator.invocation import ACCEPT, Behaviour, Invocation, reset_connection

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: ``stream[-<end>][-<N>[-<ms>]][-first-<ms>][-stall-<k>-<ms>]`` (the module's docstring).
STREAM_NAME = re.compile(
    r"stream(?:-(fail|timeout|internal-failure|cut))?(?:-(\d{1,5})(?:-(\d{1,6}))?)?"
    r"(?:-first-(\d{1,6}))?(?:-stall-([1-9]\d{0,4})-(\d{1,6}))?"
)
STREAM_BROKEN = "StreamBroken"
STREAM_BROKEN_MESSAGE = "The response stream of container primary was reset before it ended."
MODEL_INVOCATION_TIME_EXCEEDED = "ModelInvocationTimeExceeded"
# The emulator's words: no public report quotes the service's message for this code.
MODEL_INVOCATION_TIME_EXCEEDED_MESSAGE = (
    "The model did not finish sending its response within the time SageMaker allows."
)


def _broken_invoke_error(call: Invocation) -> EmulatorError:
    return model_error(
        endpoint=call.endpoint,
        region=call.settings.region,
        original_status=500,
        original_message=STREAM_BROKEN_MESSAGE,
        error_code=INTERNAL_FAILURE_FROM_MODEL,
    )


def _timeout_invoke_error(call: Invocation) -> EmulatorError:
    return model_timeout_error(endpoint=call.endpoint, region=call.settings.region)


def _internal_invoke_error(call: Invocation) -> EmulatorError:
    return EmulatorError(500, INTERNAL_FAILURE, "An internal failure occurred.")


#: How ``stream-<end>`` breaks, by the word in its name.
FAILURES = {
    "fail": StreamFailure(
        eventstream.MODEL_STREAM_ERROR,
        {"Message": STREAM_BROKEN_MESSAGE, "ErrorCode": STREAM_BROKEN},
        _broken_invoke_error,
    ),
    "timeout": StreamFailure(
        eventstream.MODEL_STREAM_ERROR,
        {
            "Message": MODEL_INVOCATION_TIME_EXCEEDED_MESSAGE,
            "ErrorCode": MODEL_INVOCATION_TIME_EXCEEDED,
        },
        _timeout_invoke_error,
    ),
    "internal-failure": StreamFailure(
        eventstream.INTERNAL_STREAM_FAILURE,
        {"Message": INTERNAL_STREAM_FAILURE_MESSAGE},
        _internal_invoke_error,
    ),
    "cut": StreamFailure(None, {}, reset_connection),
}


def find_stream(endpoint: str) -> Behaviour | None:
    """The stream behaviour a ``stream…`` name asks for, or None if the name is not one."""
    match = STREAM_NAME.fullmatch(endpoint)
    if match is None:
        return None
    failure, parts, interval_ms, first_ms, stall_after, stall_ms = match.groups()
    return functools.partial(
        stream,
        failure=FAILURES[failure] if failure else None,
        parts=None if parts is None else int(parts),
        interval_ms=None if interval_ms is None else int(interval_ms),
        first_part_delay_ms=int(first_ms or 0),
        stall_after_parts=int(stall_after or 0),
        stall_ms=int(stall_ms or 0),
    )


async def stream(
    call: Invocation,
    *,
    failure: StreamFailure | None = None,
    parts: int | None = None,
    interval_ms: int | None = None,
    first_part_delay_ms: int = 0,
    stall_after_parts: int = 0,
    stall_ms: int = 0,
) -> web.StreamResponse:
    """The body back in ``parts`` slices, ``interval_ms`` apart, the first after
    ``first_part_delay_ms``, ``stall_ms`` after part ``stall_after_parts``, ending with
    ``failure`` if any."""
    count = call.settings.stream_parts if parts is None else parts
    interval = call.settings.stream_part_interval_ms if interval_ms is None else interval_ms
    content_type = call.header(ACCEPT) or call.header("Content-Type") or DEFAULT_CONTENT_TYPE
    output = ModelOutput(
        content_type=content_type,
        variant=call.requested_variant(),
        parts=slices(call.body, count),
        interval_s=interval / 1000,
        first_part_delay_s=first_part_delay_ms / 1000,
        stall_after_parts=stall_after_parts,
        stall_s=stall_ms / 1000,
        failure=failure,
    )
    return await deliver(call, output)


def slices(body: bytes, count: int) -> list[bytes]:
    """``body`` in ``count`` contiguous slices whose lengths differ by one byte at most."""
    size, longer = divmod(len(body), count) if count else (0, 0)
    bounds = [index * size + min(index, longer) for index in range(count + 1)]
    return [body[start:end] for start, end in itertools.pairwise(bounds)]
