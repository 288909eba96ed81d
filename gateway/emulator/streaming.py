"""The streaming endpoints: a model that answers in parts, at a set pace, and may break midway.

| endpoint name                            | the model's answer                                    |
|------------------------------------------|-------------------------------------------------------|
| ``stream``, ``stream-<N>``,              | N parts (default ``stream_parts``), one every ms      |
| ``stream-<N>-<ms>``                      | milliseconds (default ``stream_part_interval_ms``)    |
| ``stream-fail[-<N>[-<ms>]]``             | the same parts, then the stream breaks with a         |
|                                          | ``ModelStreamError`` (ErrorCode ``StreamBroken``)     |
| ``stream-internal-failure[-<N>[-<ms>]]`` | the same parts, then an ``InternalStreamFailure``     |

The parts are the request body cut into N contiguous slices as equal as can be (the first
``len(body) % N`` are one byte longer): joined in order they are the body, so a reader can tell
that every part came, in order, unchanged. A body of fewer than N bytes gives some empty parts.
The first part comes at once, each next one ms after the one before.

The model's content type (``X-Amzn-SageMaker-Content-Type`` of the stream) is the request's
``X-Amzn-SageMaker-Accept``, else its ``Content-Type``, else ``application/octet-stream``.

Called with InvokeEndpoint, these endpoints answer once the last part is produced, as the
service does for a streaming container: the parts joined; ``stream-fail`` a 424 ``ModelError``
and ``stream-internal-failure`` a 500 ``InternalFailure`` instead.
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
)
from gateway.emulator.invocation import ACCEPT, Behaviour, Invocation

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: ``stream``, then ``-fail`` or ``-internal-failure``, then ``-<parts>`` and ``-<milliseconds>``.
STREAM_NAME = re.compile(r"stream(?:-(fail|internal-failure))?(?:-(\d{1,5})(?:-(\d{1,6}))?)?")
STREAM_BROKEN = "StreamBroken"
STREAM_BROKEN_MESSAGE = "The response stream of container primary was reset before it ended."


def _broken_invoke_error(call: Invocation) -> EmulatorError:
    return model_error(
        endpoint=call.endpoint,
        region=call.settings.region,
        original_status=500,
        original_message=STREAM_BROKEN_MESSAGE,
        error_code=INTERNAL_FAILURE_FROM_MODEL,
    )


def _internal_invoke_error(call: Invocation) -> EmulatorError:
    return EmulatorError(500, INTERNAL_FAILURE, "An internal failure occurred.")


#: How ``stream-fail`` and ``stream-internal-failure`` break, by the word in their name.
FAILURES = {
    "fail": StreamFailure(
        eventstream.MODEL_STREAM_ERROR,
        {"Message": STREAM_BROKEN_MESSAGE, "ErrorCode": STREAM_BROKEN},
        _broken_invoke_error,
    ),
    "internal-failure": StreamFailure(
        eventstream.INTERNAL_STREAM_FAILURE,
        {"Message": INTERNAL_STREAM_FAILURE_MESSAGE},
        _internal_invoke_error,
    ),
}


def find_stream(endpoint: str) -> Behaviour | None:
    """The stream behaviour a ``stream…`` name asks for, or None if the name is not one."""
    match = STREAM_NAME.fullmatch(endpoint)
    if match is None:
        return None
    failure, parts, interval_ms = match.groups()
    return functools.partial(
        stream,
        failure=FAILURES[failure] if failure else None,
        parts=None if parts is None else int(parts),
        interval_ms=None if interval_ms is None else int(interval_ms),
    )


async def stream(
    call: Invocation,
    *,
    failure: StreamFailure | None = None,
    parts: int | None = None,
    interval_ms: int | None = None,
) -> web.StreamResponse:
    """The body back in ``parts`` slices, ``interval_ms`` apart, ending with ``failure`` if any."""
    count = call.settings.stream_parts if parts is None else parts
    interval = call.settings.stream_part_interval_ms if interval_ms is None else interval_ms
    content_type = call.header(ACCEPT) or call.header("Content-Type") or DEFAULT_CONTENT_TYPE
    output = ModelOutput(
        content_type=content_type,
        variant=call.requested_variant(),
        parts=slices(call.body, count),
        interval_s=interval / 1000,
        failure=failure,
    )
    return await deliver(call, output)


def slices(body: bytes, count: int) -> list[bytes]:
    """``body`` in ``count`` contiguous slices whose lengths differ by one byte at most."""
    size, longer = divmod(len(body), count) if count else (0, 0)
    bounds = [index * size + min(index, longer) for index in range(count + 1)]
    return [body[start:end] for start, end in itertools.pairwise(bounds)]
