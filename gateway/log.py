"""structlog set up for JSON lines, and the one access-log line per request.

The access line is built from an explicit list of fields: bodies, credentials, signatures and
custom-attribute values are never among them, so they cannot leak by a new ``**kwargs``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog

from gateway.http.clock import PerSecond
from gateway.metrics import Outcome

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure_logging(level: str, stream: BinaryIO | None = None) -> None:
    """JSON lines on ``stream`` (standard output), at ``level`` and above.

    One line is written per request, so its cost is in every request's: orjson renders it
    (a tenth of the standard library's time) and the timestamp's date part is formatted once
    a second, which together halve the line's cost (bench/README.md).
    """
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _add_pid,
            _add_timestamp,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.BytesLoggerFactory(stream or sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )


_ISO_SECOND = PerSecond(lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))


def _add_timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """UTC time in ISO 8601 to the microsecond, as structlog's TimeStamper(fmt="iso") writes it."""
    now = time.time()
    second = int(now)
    event["timestamp"] = f"{_ISO_SECOND.at(second)}.{int((now - second) * 1e6):06d}Z"
    return event


def _add_pid(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Which process wrote the line (with --workers, several share the port)."""
    event["pid"] = os.getpid()
    return event


def access_fields(outcome: Outcome) -> dict[str, Any]:
    """The access-log fields for ``outcome``: identifiers, status, timings and sizes only; a
    response stream adds its time to first part, parts, largest gap and how it ended; with a
    policy, the caller."""
    fields = {
        "request_id": outcome.request_id,
        "upstream_request_id": outcome.upstream_request_id,
        "endpoint": outcome.endpoint,
        # The target that answered: the endpoint itself unless a fallback took the request.
        "target": outcome.target or outcome.endpoint,
        "variant": outcome.variant,
        "operation": outcome.operation,
        "status": outcome.status,
        "error": outcome.error,
        "duration_ms": _ms(outcome.duration_s),
        "upstream_ms": _ms(outcome.upstream_duration_s),
        "request_bytes": outcome.request_bytes,
        "response_bytes": outcome.response_bytes,
        "model_timeout": outcome.model_timeout,
    }
    stream = outcome.stream
    if stream is not None:
        fields["first_part_ms"] = _ms(stream.first_part_s)
        fields["parts"] = stream.parts
        fields["largest_gap_ms"] = _ms(stream.largest_gap_s)
        fields["stream_outcome"] = stream.outcome
        fields["stream_error_code"] = stream.error_code
    if outcome.caller:  # with a policy: who called (the identity it proved, else its label)
        fields["caller"] = outcome.caller_identity or outcome.caller
    return fields


def _ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds to the microsecond; None stays None (nothing was measured)."""
    return None if seconds is None else round(seconds * 1e3, 3)
