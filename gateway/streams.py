"""A response stream's figures, read off its event-stream frames as they are relayed.

The relay hands every chunk to :meth:`StreamMeter.relayed` after writing it to the caller;
the bytes themselves pass untouched. botocore's own event-stream parser does the framing and
CRC checks: one chunk may hold several messages or part of one, and a message counts when the
chunk that completes it has been relayed. Each PayloadPart costs a few additions and one
histogram observation; nothing is kept of a part once it has been counted.
"""

from __future__ import annotations

import json
import struct

from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from gateway.metrics import (
    COMPLETED,
    INTERNAL_STREAM_FAILURE,
    MALFORMED,
    MODEL_STREAM_ERROR,
    UPSTREAM_CUT,
    Outcome,
    StreamFigures,
    StreamSeries,
)

#: The exception messages the API's ResponseStream defines, and how each ends a stream.
_EXCEPTION_OUTCOMES = {
    "ModelStreamError": MODEL_STREAM_ERROR,
    "InternalStreamFailure": INTERNAL_STREAM_FAILURE,
}
#: What botocore's parser raises on bytes that are not an event stream: its own errors, and,
#: for headers inside a message whose checksums hold, an unknown value type, a truncated
#: value or text that is not UTF-8.
_UNREADABLE = (ParserError, KeyError, ValueError, struct.error)
#: A ModelStreamError's ErrorCode is logged at most this long.
MAX_ERROR_CODE_CHARS = 100


class StreamMeter:
    """Counts one stream's parts as they are relayed, and says how the stream ended."""

    __slots__ = ("_consumed", "_ended_by", "_frames", "_last_part_at", "_outcome", "_received",
                 "_series", "figures")  # fmt: skip

    def __init__(self, outcome: Outcome, series: StreamSeries) -> None:
        self._outcome = outcome
        self._series = series
        self.figures = outcome.stream = StreamFigures()
        #: None once the bytes could not be parsed: they are still relayed, no longer read.
        self._frames: EventStreamBuffer | None = EventStreamBuffer()
        self._received = 0  # bytes fed to the parser
        self._consumed = 0  # bytes of the whole messages parsed out of them
        self._last_part_at = 0.0
        #: The outcome the first exception message (or unreadable bytes) decided, else "":
        #: the first sign of how a stream ended is the one counted.
        self._ended_by = ""

    def relayed(self, chunk: bytes, at: float) -> None:
        """``chunk`` was written to the caller at ``at`` (time.perf_counter())."""
        frames = self._frames
        if frames is None:
            return
        self._received += len(chunk)
        parts = payload_bytes = 0
        try:
            frames.add_data(chunk)
            for message in frames:
                self._consumed += message.prelude.total_length
                headers = message.headers
                message_type = headers.get(":message-type")
                if message_type == "event":
                    if headers.get(":event-type") == "PayloadPart":
                        parts += 1
                        payload_bytes += len(message.payload)
                        self._part(at)
                elif message_type == "exception":
                    self._exception(message)
                elif message_type == "error":
                    self._outcome.error = str(headers.get(":error-code", "StreamError"))
                    self._end(MALFORMED)
        except _UNREADABLE:
            self._frames = None
            self._end(MALFORMED)
        if parts:
            figures = self.figures
            figures.parts += parts
            figures.payload_bytes += payload_bytes
            self._series.parts.inc(parts)
            self._series.payload_bytes.inc(payload_bytes)

    def finish(self, cut_short: str = "") -> None:
        """The stream is over: the upstream ended it, or it was ``cut_short`` (caller left,
        idle timeout, upstream cut). An exception message relayed before still says how."""
        if self._ended_by:
            outcome = self._ended_by
        elif cut_short:
            outcome = cut_short
        else:
            outcome = COMPLETED if self._consumed == self._received else UPSTREAM_CUT
        self.figures.outcome = outcome

    def _part(self, at: float) -> None:
        figures = self.figures
        if figures.first_part_s is None:
            figures.first_part_s = first_part_s = at - self._outcome.arrived_at
            self._series.first_part.observe(first_part_s)
        else:
            gap_s = at - self._last_part_at
            self._series.part_gap.observe(gap_s)
            if figures.largest_gap_s is None or gap_s > figures.largest_gap_s:
                figures.largest_gap_s = gap_s
        self._last_part_at = at

    def _exception(self, message: EventStreamMessage) -> None:
        exception_type = str(message.headers.get(":exception-type", "StreamException"))
        self._outcome.error = exception_type
        ended_by = _EXCEPTION_OUTCOMES.get(exception_type, MALFORMED)
        if ended_by == MODEL_STREAM_ERROR and not self._ended_by:
            self.figures.error_code = _error_code(message.payload)
        self._end(ended_by)

    def _end(self, outcome: str) -> None:
        if not self._ended_by:
            self._ended_by = outcome


def _error_code(payload: bytes) -> str:
    """The ErrorCode member of a ModelStreamError's JSON payload, "" when it has none."""
    try:
        members = json.loads(payload)
    except ValueError:
        return ""
    code = members.get("ErrorCode") if isinstance(members, dict) else None
    return code[:MAX_ERROR_CODE_CHARS] if isinstance(code, str) else ""
