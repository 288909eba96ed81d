"""structlog set up for JSON lines, and the one access-log line per request.

The access line is built from an explicit list of fields: bodies, credentials, signatures and
custom-attribute values are never among them, so they cannot leak by a new ``**kwargs``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
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
        logger_factory=LineWriter(stream or sys.stdout.buffer).factory,
        cache_logger_on_first_use=True,
    )


class LineWriter:
    """structlog's logger for the JSON lines: the debug and info lines of one turn of the event
    loop go out together at its end, in one system call, rather than one each.

    Written here because structlog's BytesLogger flushes every line, and the access line is on
    every request: a write(2) each. Batched, a busy gateway writes a turn's lines at once, and
    a lone request's line goes out at the end of the turn its answer went out in. Warnings and
    errors are written at once, with whatever waits before them: they are the lines a crash
    must not take with it. Outside a running loop (start-up, another thread, a loop that
    closed with a write still queued) a line is written at once; what is pending at exit is
    written then.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        #: The loop (and its thread) a write of the pending lines is queued on, if any.
        self._queued_on: asyncio.AbstractEventLoop | None = None
        self._queued_thread = 0
        atexit.register(self.flush)
        os.register_at_fork(after_in_child=self._forked)

    def factory(self, *_: Any) -> LineWriter:
        """structlog's logger factory: every logger shares this writer."""
        return self

    def msg(self, message: bytes) -> None:
        """Keep ``message`` for the write at the end of this loop turn (at once outside one)."""
        with self._lock:
            self._pending.append(message)
        queued_on = self._queued_on
        if (
            queued_on is not None
            and self._queued_thread == threading.get_ident()
            and queued_on.is_running()
        ):
            return  # the write queued on this loop takes it
        loop = asyncio._get_running_loop()
        if loop is None:
            self.flush()
        else:
            self._queued_on, self._queued_thread = loop, threading.get_ident()
            loop.call_soon(self._queued_write)

    def now(self, message: bytes) -> None:
        """Write ``message`` at once, after the lines waiting before it."""
        with self._lock:
            self._pending.append(message)
        self.flush()

    # structlog calls the method named for the level (and BytesLogger's aliases).
    debug = info = log = msg
    warning = warn = error = err = critical = fatal = exception = failure = now

    def flush(self) -> None:
        """Write the pending lines, if any."""
        with self._lock:
            lines, self._pending = self._pending, []
            if lines:
                lines.append(b"")
                self._stream.write(b"\n".join(lines))
                self._stream.flush()

    def _queued_write(self) -> None:
        self._queued_on = None
        self.flush()

    def _forked(self) -> None:
        """In a forked child: the parent's pending lines are the parent's to write."""
        self._pending, self._lock, self._queued_on = [], threading.Lock(), None


_ISO_SECOND = PerSecond(lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))


def _add_timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """UTC time in ISO 8601 to the microsecond, as structlog's TimeStamper(fmt="iso") writes it."""
    now = time.time()
    second = int(now)
    event["timestamp"] = f"{_ISO_SECOND.at(second)}.{int((now - second) * 1e6):06d}Z"
    return event


class _Pid:
    """This process's id, read once and again in a forked child (os.getpid() is a system call
    each time, and this is on every line)."""

    value = os.getpid()

    @classmethod
    def reread(cls) -> None:
        cls.value = os.getpid()


os.register_at_fork(after_in_child=_Pid.reread)


def _add_pid(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Which process wrote the line (with --workers, several share the port)."""
    event["pid"] = _Pid.value
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
