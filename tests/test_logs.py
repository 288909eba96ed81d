"""The access log of DESIGN section 6: one structlog line per request, and never a secret.

Lines are captured with ``structlog.testing.capture_logs`` while real requests go through the
running gateway to the emulator.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from collections.abc import Iterator

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from gateway.log import access_fields, configure_logging
from gateway.metrics import Outcome
from tests.conftest import ACCESS_KEY, SECRET_KEY
from tests.waiting import loop_turns, poll

#: The fields of every access line for a request whose endpoint name was valid.
ACCESS_FIELDS = {
    "request_id", "upstream_request_id", "endpoint", "target", "variant", "operation", "status",
    "error", "duration_ms", "upstream_ms", "request_bytes", "response_bytes", "model_timeout",
}  # fmt: skip
#: What the access line of a response stream adds.
STREAM_FIELDS = {"first_part_ms", "parts", "largest_gap_ms", "stream_outcome", "stream_error_code"}
BAD_ENDPOINT = "Bad_Endpoint_Name_7f3c"

# Distinctive values a caller sends; none may appear in any log line.
BODY = b'{"inputs": "BODY-SECRET-6b1d", "card": "4111-1111-1111-1111"}'
CUSTOM_ATTRIBUTES = "tenant=CUSTOM-ATTR-SECRET-93ac"
OVERSIZED_ATTRIBUTES = "OVERSIZED-ATTR-SECRET-" + "x" * 1010
CALLER_ACCESS_KEY = "AKIDCALLERSECRET0042"
CALLER_SIGNATURE = "c0ffee" * 10 + "abcd"
CALLER_HEADERS = {
    "Authorization": (
        f"AWS4-HMAC-SHA256 Credential={CALLER_ACCESS_KEY}/20240101/us-east-1/sagemaker/"
        f"aws4_request, SignedHeaders=host;x-amz-date, Signature={CALLER_SIGNATURE}"
    ),
    "X-Amz-Security-Token": "CALLER-SESSION-TOKEN-SECRET-5e7f",
    "Cookie": "session=COOKIE-SECRET-0a9b",
    "Proxy-Authorization": "Basic UFJPWFktU0VDUkVULTEyMzQ=",
}


async def post(gateway, endpoint: str, *, body: bytes = b"{}", headers=None):
    """POST through the gateway; (status, response headers, response body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.make_url(f"/endpoints/{endpoint}/invocations"), data=body, headers=headers
        ) as response,
    ):
        return response.status, response.headers, await response.read()


def access_lines(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "request"]


async def test_each_request_writes_one_access_line_with_its_fields(gateway):
    """Four requests, four lines: ids, endpoint, variant, operation, status, error, times, sizes."""
    with capture_logs() as logs:
        ok = await post(gateway, "echo", body=b'{"x": 12345}')
        await post(gateway, "variants")
        timed_out = await post(gateway, "model-timeout")
        refused = await post(
            gateway, "echo", headers={"X-Amzn-SageMaker-Custom-Attributes": "a" * 1025}
        )

    lines = access_lines(logs)
    assert [(line["endpoint"], line["status"]) for line in lines] == [
        ("echo", 200), ("variants", 200), ("model-timeout", 424), ("echo", 400),
    ]  # fmt: skip
    for line in lines:
        assert set(line) == ACCESS_FIELDS | {"event", "log_level"}
        assert line["log_level"] == "info"
        assert line["operation"] == "InvokeEndpoint"
    echo, variants, model_timeout, header = lines
    assert (echo["variant"], echo["error"], echo["model_timeout"]) == ("AllTraffic", "", False)
    assert echo["request_bytes"] == echo["response_bytes"] == len(ok[2]) == 12
    assert 0 <= echo["upstream_ms"] <= echo["duration_ms"]
    assert variants["variant"] == "VariantA"
    assert (model_timeout["error"], model_timeout["model_timeout"]) == ("ModelError", True)
    assert model_timeout["response_bytes"] == len(timed_out[2])
    assert model_timeout["upstream_ms"] >= 300  # the emulator's model timeout, 0.3 s
    assert (header["error"], header["variant"], header["upstream_ms"]) == (
        "ValidationError", "unknown", None,
    )  # fmt: skip
    assert header["request_id"] == refused[1]["x-amzn-RequestId"]
    assert len({line["request_id"] for line in lines}) == 4


async def test_the_answer_is_on_the_wire_before_its_access_line_is_made(gateway):
    """When the access line of a request is made, its caller can already read the whole
    answer: the gateway writes it before its own bookkeeping (metrics, the line), not after.
    Checked from a raw socket while the line is being made, with the event loop held there,
    so the answer can only have arrived if it was written before."""
    payload = b'{"ping": 42}'
    request = (b"POST /endpoints/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
               % (len(payload), payload))  # fmt: skip
    caller = socket.create_connection((gateway.host, gateway.port), timeout=2)
    readable_then: list[bytes] = []

    def at_the_access_line(_: object, __: str, event: dict) -> dict:
        if event["event"] == "request":
            try:  # what has arrived, waiting up to 2 s (the loop cannot write meanwhile)
                readable_then.append(caller.recv(65536))
            except TimeoutError:
                readable_then.append(b"")
        return event

    try:
        with capture_logs() as logs:
            structlog.get_config()["processors"].insert(0, at_the_access_line)
            caller.sendall(request)
            await poll(lambda: len(access_lines(logs)) == 1)
    finally:
        caller.close()
    assert readable_then and readable_then[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert readable_then[0].endswith(b"\r\n\r\n" + payload)


async def test_a_streams_line_adds_its_first_part_parts_largest_gap_and_outcome(gateway):
    """A stream of 3 parts 50 ms apart, the first after 200 ms, then a ModelStreamError: its
    line has the time to first part, 3 parts, the largest gap and how it ended."""
    url = gateway.make_url("/endpoints/stream-fail-3-50-first-200/invocations-response-stream")
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as session, session.post(url, data=b"abc") as answer:
            await answer.read()
    (line,) = access_lines(logs)
    assert set(line) == ACCESS_FIELDS | STREAM_FIELDS | {"event", "log_level"}
    assert (line["parts"], line["stream_outcome"], line["stream_error_code"]) == (
        3, "model_stream_error", "StreamBroken",
    )  # fmt: skip
    assert 200 <= line["first_part_ms"] <= line["duration_ms"]
    assert 25 <= line["largest_gap_ms"] <= line["duration_ms"] - line["first_part_ms"]
    assert line["error"] == "ModelStreamError"


async def test_a_forwarded_calls_line_carries_the_request_id_its_caller_saw(gateway):
    """The x-amzn-RequestId a caller got back (SageMaker's) is in that call's access line."""
    with capture_logs() as logs:
        _, headers, _ = await post(gateway, "echo")
    (line,) = access_lines(logs)
    assert line["upstream_request_id"] == headers["x-amzn-RequestId"]


async def test_a_request_refused_before_routing_writes_one_line_without_the_name(gateway):
    """A bad endpoint name: one line with the request id the caller got, and not the name."""
    with capture_logs() as logs:
        status, headers, _ = await post(gateway, BAD_ENDPOINT)
    (line,) = access_lines(logs)
    assert status == 400
    assert line["request_id"] == headers["x-amzn-RequestId"]
    assert (line["status"], line["error"], line["reason"]) == (
        400,
        "ValidationError",
        "endpoint_name",
    )
    assert BAD_ENDPOINT not in repr(logs)


async def test_no_body_credential_signature_or_custom_attribute_is_ever_logged(gateway, journal):
    """Distinctive bodies, keys, signatures, tokens, cookies and attributes appear in no line."""
    with capture_logs() as logs:
        await post(
            gateway,
            "echo",
            body=BODY,
            headers={**CALLER_HEADERS, "X-Amzn-SageMaker-Custom-Attributes": CUSTOM_ATTRIBUTES},
        )
        await post(gateway, "model-error", body=BODY, headers=CALLER_HEADERS)
        await post(
            gateway,
            "echo",
            body=BODY,
            headers={"X-Amzn-SageMaker-Custom-Attributes": OVERSIZED_ATTRIBUTES},
        )
        await post(gateway, BAD_ENDPOINT, body=BODY, headers=CALLER_HEADERS)

    assert len(access_lines(logs)) == 4
    gateway_signatures = [
        value.rpartition("Signature=")[2]
        for entry in journal
        for name, value in entry.headers
        if name.lower() == "authorization"
    ]
    assert len(gateway_signatures) == 2  # the two forwarded calls
    secrets = [
        "BODY-SECRET-6b1d",
        "4111-1111-1111-1111",
        "CUSTOM-ATTR-SECRET-93ac",
        "OVERSIZED-ATTR-SECRET",
        CALLER_ACCESS_KEY,
        CALLER_SIGNATURE,
        "CALLER-SESSION-TOKEN-SECRET-5e7f",
        "COOKIE-SECRET-0a9b",
        "UFJPWFktU0VDUkVULTEyMzQ=",
        ACCESS_KEY,
        SECRET_KEY,
        "Emulated model failure",  # the ModelError's body, as SageMaker sent it
        *gateway_signatures,
    ]
    for entry in logs:
        text = repr(entry)
        leaked = [secret for secret in secrets if secret in text]
        assert leaked == [], f"{leaked} in {text}"


class CountedWrites(io.BytesIO):
    """A stream that counts the writes made to it."""

    writes = 0

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        self.writes += 1
        return super().write(data)


@pytest.fixture
def json_stdout() -> Iterator[CountedWrites]:
    """configure_logging("info") writing to a buffer; the previous configuration put back after."""
    saved = structlog.get_config()
    buffer = CountedWrites()
    configure_logging("info", buffer)
    yield buffer
    structlog.configure(**saved)


def test_configured_logging_writes_an_access_line_as_one_json_object(json_stdout):
    """With configure_logging, an access line is one JSON object with a level and a UTC time."""
    outcome = Outcome(
        request_id="r-1", operation="InvokeEndpoint", endpoint="echo", variant="VariantA",
        status=424, error="ModelError", duration_s=0.0123456, upstream_duration_s=0.01,
        request_bytes=10, response_bytes=812, model_timeout=True,
    )  # fmt: skip
    logger = structlog.get_logger("gateway.test")
    logger.debug("request", **access_fields(outcome))  # below the level: not written
    logger.info("request", **access_fields(outcome))

    (line,) = json_stdout.getvalue().splitlines()
    access = json.loads(line)
    assert set(access) == ACCESS_FIELDS | {"event", "level", "timestamp", "pid"}
    assert access["timestamp"].endswith("Z")
    assert access.pop("pid") == os.getpid()
    del access["timestamp"]
    assert access == {
        "event": "request", "level": "info", "request_id": "r-1", "upstream_request_id": None,
        "endpoint": "echo", "target": "echo",
        "variant": "VariantA", "operation": "InvokeEndpoint", "status": 424,
        "error": "ModelError", "duration_ms": 12.346, "upstream_ms": 10.0, "request_bytes": 10,
        "response_bytes": 812, "model_timeout": True,
    }  # fmt: skip


async def test_the_lines_of_one_loop_turn_are_written_together_after_it(json_stdout):
    """Inside the event loop, lines wait for the end of the turn (after the answer's bytes),
    then go out in one write; outside it, a line is written at once."""
    logger = structlog.get_logger("gateway.test")
    logger.info("request", request_id="r-1")
    logger.info("request", request_id="r-2")
    assert json_stdout.getvalue() == b""
    await loop_turns(1)
    assert json_stdout.writes == 1
    assert _field_of_each_line(json_stdout, "request_id") == ["r-1", "r-2"]
    await asyncio.to_thread(logger.info, "request", request_id="r-3")  # no loop there
    assert json_stdout.writes == 2
    assert _field_of_each_line(json_stdout, "request_id")[-1] == "r-3"


async def test_warnings_are_written_at_once_with_what_waited_before_them(json_stdout):
    """A warning or an error is not held for the end of the turn: a crash must not take it."""
    logger = structlog.get_logger("gateway.test")
    logger.info("request", request_id="r-1")
    logger.error("unhandled_error", path="/x")
    assert _field_of_each_line(json_stdout, "event") == ["request", "unhandled_error"]
    assert json_stdout.writes == 1


def test_a_loop_that_closed_with_a_write_queued_leaves_no_line_behind(json_stdout):
    """asyncio's loop drops what was queued when it closes: the next line, in or out of a
    loop, writes what waited too, rather than waiting for a write that will never run."""
    logger = structlog.get_logger("gateway.test")
    loop = asyncio.new_event_loop()

    async def last_turn() -> None:
        logger.info("request", request_id="r-1")
        loop.stop()  # the loop stops before the queued write's turn comes

    turn = loop.create_task(last_turn())
    loop.run_forever()
    loop.close()
    assert turn.done() and json_stdout.getvalue() == b""
    logger.info("request", request_id="r-2")  # outside any loop: written at once
    assert _field_of_each_line(json_stdout, "request_id") == ["r-1", "r-2"]


def _field_of_each_line(stream: io.BytesIO, field: str) -> list[object]:
    return [json.loads(line)[field] for line in stream.getvalue().splitlines()]
