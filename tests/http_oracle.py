"""The differential oracle of ``tests/test_http_oracle.py``: h11's reading of a request stream,
what the gateway did with the same bytes, and the properties that must hold between the two.

h11 (python-hyper's HTTP/1.1 state machine) is the reference. It reads the stream as a server
would, a minimal answer after each complete request, until its first ``RemoteProtocolError``.
The gateway gets the same bytes, in the same pieces, on a fresh loopback connection; its
answers are read until it closes (or a short deadline), and the emulator's journal says what
it forwarded. The gateway may be stricter than h11 (refuse what h11 reads), never looser
(forward what h11 refuses) nor different (forward what h11 read otherwise).

The i-th answer on a connection is to the gateway's i-th request; as long as both parsers
agree, that is h11's i-th request too. A journal entry is matched to its answer by SageMaker's
request id (the emulator's ``x-amzn-RequestId``, which the gateway passes back), so each
forwarded request is compared with the h11 request at that answer's position.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11

from gateway.operations import load_operations
from tests.waiting import loop_turns, poll

OPERATIONS = load_operations()
#: The gateway's documented treatment of an API header sent more than once (gateway/headers.py),
#: restated here as the oracle's own rule: list-valued fields are combined in order with ", ",
#: the body's media type is the first value, any other repeated is refused.
COMBINED = frozenset({"accept", "x-amzn-sagemaker-accept"})
FIRST_WINS = frozenset({"content-type", "x-amzn-sagemaker-content-type"})
#: h11 refuses a head larger than this; the gateway's own limit is 32 KiB, and a limit is not a
#: parse difference, so h11 is given the room to read anything the gateway could.
H11_MAX_HEAD_BYTES = 64 * 1024

#: A request owed an answer (h11 read it whole) must be answered, or the connection closed,
#: within this long.
HANG_S = 3.0
#: When the gateway may rightly be waiting for more bytes (h11 is too, or refused the rest),
#: the connection is watched this long for anything more before it is closed.
GRACE_S = 0.2

#: Sent after the last answer when h11 read every byte and is ready for the next request: the
#: gateway must read it as a new request too, and answers it and closes, ending the exchange.
SENTINEL = b"GET /healthz HTTP/1.1\r\nHost: oracle.test\r\nConnection: close\r\n\r\n"
SENTINEL_BODY = b'{"status": "ok"}'


# --- the reference: h11 --------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedRequest:
    """One request as h11 read it: header names lower-cased, values without surrounding OWS."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True)
class Reference:
    """h11's reading of a whole stream."""

    #: The requests h11 read whole, in order, up to its first error or the connection's end.
    requests: tuple[ParsedRequest, ...]
    #: h11's RemoteProtocolError for what came after them; None when there was none.
    error: str | None
    #: How the stream ended for h11: "error"; "close" (a request ended the connection, as
    #: ``Connection: close`` or HTTP/1.0 do, so what follows is never read); "idle" (every byte
    #: read, ready for another request); "partial" (waiting for more of a request).
    ending: str


def robust_start(data: bytes) -> bytes:
    """What RFC 9112 lets a server make of the bytes where a request line is due, and llhttp
    makes of them: line ends before the request line ignored (section 2.2: "SHOULD ignore at
    least one empty line (CRLF) received prior to the request-line"; llhttp skips any CR or LF
    there), and the request line's parts parsed on runs of spaces (section 3: recipients "MAY
    instead parse on whitespace-delimited word boundaries"). h11 allows neither; the oracle
    gives it both, since the gateway forwards its own serialization of the request, so neither
    can change which requests it sees or where they end. A leading space, a tab or a space
    after the version stay as they are (both refuse them)."""
    data = data.lstrip(b"\r\n")
    line_end = data.find(b"\r\n")
    line = data if line_end < 0 else data[:line_end]
    return re.sub(rb"(?<=\S) {2,}(?=\S)", b" ", line) + data[len(line) :]


def h11_reference(data: bytes) -> Reference:
    """Read ``data`` with h11 as a server, answering each complete request as it ends; each
    request is read from :func:`robust_start` of what the one before left."""
    requests: list[ParsedRequest] = []
    rest = data
    while True:
        rest = robust_start(rest)
        if not rest:
            return Reference(tuple(requests), None, "idle")
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=H11_MAX_HEAD_BYTES)
        connection.receive_data(rest)
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as error:
                return Reference(tuple(requests), str(error) or repr(error), "error")
            if event is h11.NEED_DATA:
                return Reference(tuple(requests), None, "partial")
            if isinstance(event, h11.Request):
                head, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed: never, since no end of file is fed
                return Reference(tuple(requests), None, "close")
        assert head is not None
        requests.append(
            ParsedRequest(
                bytes(head.method),
                bytes(head.target),
                bytes(head.http_version),
                tuple((bytes(n), bytes(v)) for n, v in head.headers),
                bytes(body),
            )
        )
        # A 2xx would accept a CONNECT's tunnel; any answer declines an Upgrade.
        status = 405 if head.method == b"CONNECT" else 200
        connection.send(h11.Response(status_code=status, headers=[("Content-Length", "0")]))
        connection.send(h11.EndOfMessage())
        if connection.our_state is h11.MUST_CLOSE:
            return Reference(tuple(requests), None, "close")
        # What h11 has not read yet: the next request's bytes (h11 keeps them in its buffer).
        rest = bytes(connection._receive_buffer)


def expected_api_headers(request: ParsedRequest) -> dict[str, str] | str:
    """The API headers the gateway's rules make of h11's headers for ``request`` (lower-case
    name to value), or why the gateway must not forward it (a single-valued one repeated)."""
    operation = OPERATIONS.get(request.target.rsplit(b"/", 1)[-1].decode("latin-1"))
    if operation is None:
        return "the target names no operation"
    values: dict[str, str] = {}
    for raw_name, raw_value in request.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1").strip(" \t")
        if name not in operation.request_headers:
            continue
        if name not in values:
            values[name] = value
        elif name in COMBINED:
            values[name] = f"{values[name]}, {value}"
        elif name not in FIRST_WINS:
            return f"{name} appears more than once"
    return values


# --- the gateway's side: one exchange on one connection ------------------------------------


@dataclass
class Answer:
    """One final (non-1xx) answer from the gateway."""

    status: int
    headers: list[tuple[str, str]]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    @property
    def closes(self) -> bool:
        return "close" in (self.header("connection") or "").lower()

    def __repr__(self) -> str:
        kind = self.header("x-amzn-errortype")
        return f"<{self.status} {kind or ''} {self.body[:120]!r}>"


class AnswerReader:
    """Parses the gateway's answers as they arrive (the gateway's own framing: Content-Length,
    chunked, or to the close)."""

    def __init__(self, head_requests: Sequence[bool]) -> None:
        #: For each answer position, whether h11 read a HEAD there (its answer has no body).
        self._head_requests = head_requests
        self._buffer = bytearray()
        self.answers: list[Answer] = []
        self.interim = 0
        #: Bytes that are no HTTP/1.1 answer; None while all parsed well.
        self.garbled: bytes | None = None
        self.changed = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self.garbled is None and self._parse_one(eof=False):
            pass
        self.changed.set()

    def feed_eof(self) -> None:
        while self.garbled is None and self._buffer and self._parse_one(eof=True):
            pass
        if self.garbled is None and self._buffer:
            self.garbled = bytes(self._buffer[:300])
        self.changed.set()

    def _parse_one(self, *, eof: bool) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        status_line, *lines = buffer[:end].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
            self.garbled = bytes(buffer[:300])
            return False
        status = int(parts[1])
        headers = []
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                self.garbled = bytes(buffer[:300])
                return False
            headers.append((name.strip().lower(), value.strip()))
        answer = Answer(status, headers, b"")
        start = end + 4
        if 100 <= status < 200:
            del buffer[:start]
            self.interim += 1
            return True
        position = len(self.answers)
        is_head = position < len(self._head_requests) and self._head_requests[position]
        length = answer.header("content-length")
        if is_head or status in (204, 304):
            size = 0
        elif (answer.header("transfer-encoding") or "").lower() == "chunked":
            return self._chunked(answer, start)
        elif length is not None and length.isdigit():
            size = int(length)
        elif eof:  # unframed: the body runs to the close
            size = len(buffer) - start
        else:
            return False
        if len(buffer) < start + size:
            return False
        answer.body = bytes(buffer[start : start + size])
        del buffer[: start + size]
        self.answers.append(answer)
        return True

    def _chunked(self, answer: Answer, start: int) -> bool:
        buffer, at, parts = self._buffer, start, []
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return False
            try:
                size = int(buffer[at:line_end].split(b";")[0], 16)
            except ValueError:
                self.garbled = bytes(buffer[:300])
                return False
            at = line_end + 2
            if size == 0:
                if buffer[at : at + 2] != b"\r\n":
                    return False
                answer.body = b"".join(parts)
                del buffer[: at + 2]
                self.answers.append(answer)
                return True
            if len(buffer) < at + size + 2:
                return False
            parts.append(bytes(buffer[at : at + size]))
            at += size + 2


@dataclass
class Exchange:
    """What the gateway did on one connection with one stream."""

    answers: list[Answer]
    interim: int
    #: The gateway ended the connection (end of file or reset) before the test closed it.
    closed: bool
    #: Requests h11 read whole were neither all answered nor the connection closed in HANG_S.
    hung: bool
    #: What became of the SENTINEL: None when not sent, else "answered" or what went wrong.
    sentinel: str | None
    garbled: bytes | None


async def _yield_to_the_gateway() -> None:
    """Let the gateway's read callback (same event loop) take a piece before the next is
    written, so the pieces arrive as separate reads: two turns of the loop, not a wait."""
    await loop_turns(2)


async def exchange(host: str, port: int, pieces: Sequence[bytes], reference: Reference) -> Exchange:
    """Send ``pieces`` on a new connection, one write each, and read what the gateway answers.

    The exchange ends when the gateway closes; or, once every request h11 read whole is
    answered, after the SENTINEL's answer (h11 idle) or GRACE_S without anything new (h11
    waiting for more, refusing, or done); or after HANG_S with answers still owed ("hung").
    """
    reader, writer = await asyncio.open_connection(host, port)
    answers = AnswerReader([r.method == b"HEAD" for r in reference.requests])
    closed = asyncio.Event()

    async def read() -> None:
        try:
            while data := await reader.read(65536):
                answers.feed(data)
        except (ConnectionResetError, BrokenPipeError):
            pass
        answers.feed_eof()
        closed.set()

    async def wait_until(condition, timeout_s: float) -> bool:
        """Whether ``condition()`` came true (or the gateway closed) within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not (condition() or closed.is_set()):
                    answers.changed.clear()
                    await answers.changed.wait()
        return condition() or closed.is_set()

    reading = asyncio.create_task(read())
    hung = False
    sentinel = None
    try:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for piece in pieces:
                if closed.is_set():
                    break
                writer.write(piece)
                await writer.drain()
                await _yield_to_the_gateway()
        owed = len(reference.requests)
        if not await wait_until(lambda: len(answers.answers) >= owed, HANG_S):
            hung = True
        elif not closed.is_set():
            last = answers.answers[-1] if answers.answers else None
            if (
                reference.ending == "idle"
                and len(answers.answers) == owed
                and not (last is not None and last.closes)
            ):
                count = len(answers.answers)
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    writer.write(SENTINEL)
                    await writer.drain()
                await wait_until(lambda: False, HANG_S)
                sentinel = _sentinel_outcome(answers.answers, count, closed.is_set())
            else:
                while not closed.is_set():
                    seen = len(answers.answers)
                    more = lambda seen=seen: len(answers.answers) > seen  # noqa: E731
                    if not await wait_until(more, GRACE_S):
                        break
    finally:
        writer.close()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await reading
    return Exchange(
        answers.answers, answers.interim, closed.is_set(), hung, sentinel, answers.garbled
    )


def _sentinel_outcome(answers: list[Answer], count: int, closed: bool) -> str:
    """Whether the SENTINEL, sent after ``count`` answers, got the health answer (which is
    then taken off ``answers``)."""
    if len(answers) == count + 1:
        answer = answers[-1]
        if answer.status == 200 and answer.body == SENTINEL_BODY:
            answers.pop()
            return "answered" if closed else "answered, but the connection stayed open"
    extra = answers[count:]
    if not extra:
        return "not answered: the gateway was still reading the stream h11 had read whole"
    return f"answered otherwise than as a new request: {extra!r}"


# --- the oracle ----------------------------------------------------------------------------


@dataclass
class Verdict:
    """Everything known about one stream, and the properties it broke."""

    stream: bytes
    pieces: list[bytes]
    reference: Reference
    exchange: Exchange
    forwarded: list  # JournalEntry
    log_errors: list[str]
    #: "kind -- details" per broken property; the kind names the property and how it broke.
    violations: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [violation.split(" -- ", 1)[0] for violation in self.violations]

    def report(self) -> str:
        ref = self.reference
        lines = [
            f"stream {self.stream!r}",
            f"pieces {[len(p) for p in self.pieces]}",
            f"h11: {len(ref.requests)} request(s), ending {ref.ending}"
            + (f" ({ref.error})" if ref.error else ""),
        ]
        lines += [f"  h11[{i}] {_describe(r)}" for i, r in enumerate(ref.requests)]
        ex = self.exchange
        lines.append(
            f"gateway: answers {ex.answers!r}; closed {ex.closed}; hung {ex.hung}; "
            f"sentinel {ex.sentinel}"
        )
        lines += [f"  forwarded {e.method} {e.raw_path} body_length {e.body_length} "
                  f"headers {list(e.headers)}" for e in self.forwarded]  # fmt: skip
        lines += [f"  log: {line}" for line in self.log_errors]
        lines += [f"VIOLATION {v}" for v in self.violations]
        return "\n".join(lines)


def _describe(request: ParsedRequest) -> str:
    method, version = request.method.decode("latin-1"), request.http_version.decode()
    return (
        f"{method} {request.target!r} HTTP/{version}"
        f" body {len(request.body)} bytes {request.body[:60]!r} headers {list(request.headers)}"
    )


def _h11_refusal(reference: Reference) -> str:
    """What h11 said of the stream after its last request, without the bytes it quoted."""
    if reference.error is None:
        return f"h11 {reference.ending}"
    return "h11: " + reference.error.split(":", 1)[0]


def judge(
    stream: bytes,
    pieces: list[bytes],
    reference: Reference,
    exchange: Exchange,
    forwarded: list,
    log_errors: list[str],
) -> Verdict:
    """Check the oracle's properties for one stream; ``violations`` lists what broke."""
    verdict = Verdict(stream, pieces, reference, exchange, forwarded, log_errors)

    def broke(kind: str, details: str) -> None:
        verdict.violations.append(f"{kind} -- {details}")

    requests = reference.requests
    answers = exchange.answers
    ids = {answer.header("x-amzn-requestid"): i for i, answer in enumerate(answers)}

    # (1) and (2): what was forwarded is what h11 read at that position, and nothing after.
    matched: dict[int, object] = {}
    previous = -1
    for n, entry in enumerate(forwarded):
        position = ids.get(entry.request_id)
        if position is None:
            broke("forwarded, never answered", f"forwarded request {n} ({entry.raw_path})")
            position = len(answers) + n
        else:
            matched[position] = entry
        if position <= previous:
            broke("forwarded out of order", f"forwarded request {n} at answer {position}")
        previous = position
        if position >= len(requests):
            broke(
                f"forwarded what h11 did not read ({_h11_refusal(reference)})",
                f"forwarded request {n} (answer {position}); h11 read {len(requests)} "
                f"request(s), then {reference.error or reference.ending}",
            )
            continue
        _compare(requests[position], entry, broke, f"forwarded request {n} (h11[{position}])")

    # (3): answers are the echo's (for forwarded requests) or SageMaker-shaped errors.
    if exchange.garbled is not None:
        broke("answer not HTTP/1.1", repr(exchange.garbled))
    for i, answer in enumerate(answers):
        error_type = answer.header("x-amzn-errortype")
        entry = matched.get(i)
        if entry is not None:
            echo = entry.endpoint == "echo" or (entry.endpoint or "").startswith("echo-")
            if answer.status == 200:
                if echo and hashlib.sha256(answer.body).hexdigest() != entry.body_sha256:
                    broke("echo of another body", f"answer {i} {answer!r}")
            elif error_type is None or answer.status >= 500:
                # A mutated name may reach another endpoint, whose errors pass through.
                broke("bad answer to a forwarded request", f"answer {i} {answer!r}")
            continue
        if error_type is None:
            broke("answer neither echo nor error", f"answer {i} {answer!r}")
        elif answer.status >= 500 and not (
            answer.status == 505 and error_type == "ValidationError"
        ):
            broke(f"server error {answer.status} {error_type}", f"answer {i} {answer!r}")
        elif not 400 <= answer.status < 600:
            broke("error type on a success", f"answer {i} {answer!r}")
    if exchange.hung:
        broke(
            "hang",
            f"{len(requests)} request(s) read whole by h11, {len(answers)} answered, the "
            f"connection still open after {HANG_S} s",
        )
    elif exchange.closed and len(answers) < len(requests):
        last = answers[-1] if answers else None
        if last is None or last.header("x-amzn-errortype") is None:
            broke(
                "requests dropped silently",
                f"the gateway closed after {len(answers)} answer(s) to {len(requests)} "
                "request(s) h11 read whole, the last answer not a refusal",
            )
    if exchange.sentinel not in (None, "answered"):
        broke("stream not read through", f"the request sent after it was {exchange.sentinel}")
    for line in log_errors:
        broke(f"error logged ({line.split(' ')[0]})", line)
    return verdict


def _compare(request: ParsedRequest, entry, broke, what: str) -> None:
    """The journal entry against h11's request: method, target, body, API headers."""
    if entry.method != request.method.decode("latin-1"):
        broke("read differently: method", f"{what}: {entry.method}, h11 {request.method!r}")
    if entry.raw_path != request.target.decode("latin-1"):
        broke("read differently: target", f"{what}: {entry.raw_path}, h11 {request.target!r}")
    digest = hashlib.sha256(request.body).hexdigest()
    if (entry.body_length, entry.body_sha256) != (len(request.body), digest):
        broke(
            "read differently: body",
            f"{what}: {entry.body_length} bytes, h11 {len(request.body)} {request.body[:80]!r}",
        )
    expected = expected_api_headers(request)
    if isinstance(expected, str):
        broke("forwarded what the header rules refuse", f"{what}: {expected}")
        return
    operation = OPERATIONS.get(entry.raw_path.rsplit("/", 1)[-1])
    if operation is None:
        return  # a forwarded target no operation has: the target comparison has said so
    sent = [(name.lower(), value) for name, value in entry.headers
            if name.lower() in operation.request_headers]  # fmt: skip
    if len(sent) != len({name for name, _ in sent}):
        broke("read differently: an API header twice", f"{what}: {sent}")
    if dict(sent) != expected:
        broke("read differently: API headers", f"{what}: {dict(sent)}, h11 gives {expected}")


def log_problems(structlog_entries: Sequence[dict], records: Sequence[logging.LogRecord]) -> list:
    """Error lines and tracebacks among the gateway's structlog entries and the standard
    library's records (asyncio's "Task exception was never retrieved", ...)."""
    problems = [
        f"{entry.get('event')} ({entry.get('log_level')}) {entry.get('error', '')}"
        for entry in structlog_entries
        if entry.get("log_level") in ("error", "critical", "exception") or "exc_info" in entry
    ]
    problems += [
        f"{record.name} ({record.levelname}) {record.getMessage()[:300]}"
        for record in records
        if record.levelno >= logging.ERROR or record.exc_info
    ]
    return problems


async def run_stream(gateway, journal: list, pieces: Sequence[bytes], logs: list, records: list):
    """Send one stream to the running ``gateway`` and judge it against h11's reading.

    ``logs`` and ``records`` are the structlog entries and logging records being captured;
    only those added during this stream count, as do only the journal entries added by it
    (the stream is over once the gateway has no connection and no request left).
    """
    pieces = [bytes(piece) for piece in pieces if piece]
    stream = b"".join(pieces)
    first_entry, first_log, first_record = len(journal), len(logs), len(records)
    reference = h11_reference(stream)
    result = await exchange(gateway.host, gateway.port, pieces, reference)
    server, state = gateway.server, gateway.app.state
    await poll(lambda: server.open_connections == 0 and state.in_flight == 0, deadline_s=10)
    return judge(
        stream,
        pieces,
        reference,
        result,
        journal[first_entry:],
        log_problems(logs[first_log:], records[first_record:]),
    )
