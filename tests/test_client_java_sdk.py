"""The AWS SDK for Java 2.x through the gateway: InvokeEndpoint with the sync client (Apache
HTTP client), InvokeEndpointWithResponseStream with the async client (Netty), and the SDK's
exception classes for the errors the gateway and the service answer.

The program in ``tests/clients/java-sdk`` calls with anonymous credentials (unsigned), no
retries and ``endpointOverride`` set to the gateway, and prints what it saw as JSON lines; these
tests assert on those lines and on what reached the emulator.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from gateway.emulator.behaviours import UNAVAILABLE_MESSAGE
from gateway.emulator.streaming import STREAM_BROKEN, STREAM_BROKEN_MESSAGE
from tests.toolchains import CLIENTS_DIR, MODEL_ERROR_FIELDS, build, require, run_client

#: The suite's 120 s per test also covers the session fixture's build in the first test; a cold
#: Maven build (the SDK and its 45 jars into an empty ~/.m2) takes seconds here, minutes on a slow
#: network, so this module allows for the build; each program run has its own 60 s limit.
pytestmark = pytest.mark.timeout(660)

PROJECT = CLIENTS_DIR / "java-sdk"
#: What the program sends in the invoke-all-headers scenario (Main.invokeAllHeaders), by the
#: header the service model gives each InvokeEndpoint member.
ALL_HEADERS = {
    "Content-Type": "application/x-gateway-test",
    "Accept": "application/x-gateway-test, application/json",
    "X-Amzn-SageMaker-Custom-Attributes": "trace=java-1;tenant=a b",
    "X-Amzn-SageMaker-Target-Variant": "VariantJava",
    "X-Amzn-SageMaker-Target-Container-Hostname": "container-2",
    "X-Amzn-SageMaker-Inference-Id": "java-inference-1",
    "X-Amzn-SageMaker-Enable-Explanations": "`false`",
    "X-Amzn-SageMaker-Inference-Component": "ic-java",
    "X-Amzn-SageMaker-Session-Id": "NEW_SESSION",
    "X-Amzn-SageMaker-Target-Model": "models/java.tar.gz",
}
#: The InvokeEndpoint response headers the invoke-all-headers call must get back (lower case).
API_RESPONSE_HEADERS = {
    "content-type",
    "x-amzn-invoked-production-variant",
    "x-amzn-requestid",
    "x-amzn-sagemaker-custom-attributes",
    "x-amzn-sagemaker-new-session-id",
}
NEW_SESSION_ID = re.compile(r"[0-9a-f-]{36}; Expires=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
STREAM_BODY = b"abcdefghij"
#: stream-5-300: five parts, the first at once and each next one 300 ms after the one before.
STREAM_PARTS, STREAM_INTERVAL_MS = 5, 300


@pytest.fixture(scope="session")
def java_client() -> list[str]:
    """The program, compiled once a session with its dependencies copied to target/deps."""
    require("java", "mvn")
    build(
        ["mvn", "-q", "-B", "compile", "dependency:copy-dependencies"], cwd=PROJECT, timeout_s=600
    )
    classpath = f"{PROJECT / 'target' / 'classes'}:{PROJECT / 'target' / 'deps' / '*'}"
    return ["java", "-cp", classpath, "gatewayclient.Main"]


async def run_scenario(java_client, scenario: str, gateway_url: str) -> list[dict[str, Any]]:
    return await run_client([*java_client, scenario, gateway_url], timeout_s=60)


def only(lines: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """The one line of ``event``, failing with every line when there is not exactly one."""
    found = [line for line in lines if line["event"] == event]
    assert len(found) == 1, lines
    return found[0]


def assert_reached_signed(journal) -> None:
    """Something reached the emulator, and every request carried the gateway's valid signature."""
    assert journal, "no request reached the emulator"
    assert [(e.raw_path, e.signature_ok) for e in journal] == [(e.raw_path, True) for e in journal]


def headers_named(entry, name: str) -> list[str]:
    return [value for header, value in entry.headers if header.lower() == name.lower()]


# ---------------------------------------------------------------------------------------------
# InvokeEndpoint, sync client
# ---------------------------------------------------------------------------------------------


async def test_invoke_endpoint_echoes_every_byte_value(java_client, gateway_url, journal):
    """A 256-byte body holding every byte value comes back to the SDK unchanged, status 200."""
    lines = await run_scenario(java_client, "invoke-all-headers", gateway_url)
    response = only(lines, "response")
    assert response["status"] == 200
    assert base64.b64decode(response["body_b64"]) == bytes(range(256))
    assert base64.b64decode(only(lines, "sent")["body_b64"]) == bytes(range(256))
    assert_reached_signed(journal)


async def test_invoke_endpoint_response_headers_reach_the_sdk(java_client, gateway_url, journal):
    """ContentType, InvokedProductionVariant (the requested variant), CustomAttributes and the
    NewSessionId of a NEW_SESSION call come back as the SDK's response fields."""
    lines = await run_scenario(java_client, "invoke-all-headers", gateway_url)
    response = only(lines, "response")
    assert response["content_type"] == ALL_HEADERS["Content-Type"]
    assert response["invoked_variant"] == ALL_HEADERS["X-Amzn-SageMaker-Target-Variant"]
    assert response["custom_attributes"] == ALL_HEADERS["X-Amzn-SageMaker-Custom-Attributes"]
    assert NEW_SESSION_ID.fullmatch(response["new_session_id"]), response["new_session_id"]
    assert response["closed_session_id"] is None
    assert_reached_signed(journal)


async def test_every_invoke_endpoint_header_arrives_once_as_sent(java_client, gateway_url, journal):
    """Each of the ten InvokeEndpoint headers the SDK exposes reaches the emulator exactly once,
    with the value the SDK sent, on the endpoint's path."""
    lines = await run_scenario(java_client, "invoke-all-headers", gateway_url)
    sent = only(lines, "sent")
    assert sent["content_type"] == ALL_HEADERS["Content-Type"]
    assert sent["target_model"] == ALL_HEADERS["X-Amzn-SageMaker-Target-Model"]
    assert_reached_signed(journal)
    assert len(journal) == 1
    entry = journal[0]
    assert entry.raw_path == "/endpoints/echo/invocations"
    assert entry.body_length == 256
    arrived = {name: headers_named(entry, name) for name in ALL_HEADERS}
    assert arrived == {name: [value] for name, value in ALL_HEADERS.items()}


async def test_only_the_api_headers_and_the_signature_reach_the_emulator(
    java_client, gateway_url, journal
):
    """The SDK's own headers (User-Agent, amz-sdk-invocation-id, amz-sdk-request) are dropped:
    upstream there are the API's headers, Host, Content-Length and the gateway's SigV4 only."""
    await run_scenario(java_client, "invoke-all-headers", gateway_url)
    assert_reached_signed(journal)
    names = {name.lower() for name, _ in journal[0].headers}
    gateway_own = {"host", "content-length", "x-amz-date", "authorization"}
    assert names == {name.lower() for name in ALL_HEADERS} | gateway_own


async def test_the_emulators_private_response_headers_never_reach_the_sdk(
    java_client, gateway_url, journal
):
    """Set-Cookie and X-Emulator-Private, which the emulator adds to every success, are not in
    the response the SDK received; the API's response headers are."""
    lines = await run_scenario(java_client, "invoke-all-headers", gateway_url)
    names = set(only(lines, "response")["header_names"].split(","))
    assert {"set-cookie", "x-emulator-private"} & names == set()
    assert names >= API_RESPONSE_HEADERS, names
    assert_reached_signed(journal)


async def test_a_session_is_opened_joined_and_closed(java_client, gateway_url, journal):
    """NEW_SESSION gives a NewSessionId; its id joins the session (no session header back), and
    the close request answers ClosedSessionId with that id."""
    lines = await run_scenario(java_client, "session", gateway_url)
    steps = {line["step"]: line for line in lines if line["event"] == "response"}
    assert set(steps) == {"open", "join", "close"}, lines
    session_id = steps["join"]["session_id"]
    assert steps["open"]["new_session_id"].startswith(f"{session_id}; Expires=")
    assert (steps["join"]["new_session_id"], steps["join"]["closed_session_id"]) == (None, None)
    assert steps["close"]["closed_session_id"] == session_id
    assert_reached_signed(journal)
    sent_ids = [headers_named(entry, "X-Amzn-SageMaker-Session-Id") for entry in journal]
    assert sent_ids == [["NEW_SESSION"], [session_id], [session_id]]


# ---------------------------------------------------------------------------------------------
# Errors: the SDK's exception classes
# ---------------------------------------------------------------------------------------------


async def test_model_error_raises_model_error_exception_with_its_fields(
    java_client, gateway_url, journal
):
    """The 424 ModelError is the SDK's ModelErrorException, with OriginalStatusCode,
    OriginalMessage and LogStreamArn parsed from the body."""
    lines = await run_scenario(java_client, "model-error", gateway_url)
    error = only(lines, "error")
    assert error["exception"] == "ModelErrorException"
    assert (error["status"], error["error_code"]) == (424, "ModelError")
    assert {field: error[field] for field in MODEL_ERROR_FIELDS} == MODEL_ERROR_FIELDS
    assert_reached_signed(journal)


async def test_an_invalid_endpoint_name_raises_validation_error_naming_it(
    java_client, gateway_url, journal
):
    """`bad_name!` (sent by the SDK as `bad_name%21`) is the SDK's ValidationErrorException,
    status 400, whose message names endpointName; nothing is forwarded."""
    lines = await run_scenario(java_client, "invalid-name", gateway_url)
    error = only(lines, "error")
    assert error["exception"] == "ValidationErrorException"
    assert (error["status"], error["error_code"]) == (400, "ValidationError")
    assert "endpointName" in error["error_message"]
    assert journal == []


async def test_a_too_long_target_variant_raises_validation_error_naming_it(
    java_client, gateway_url, journal
):
    """A 64-character TargetVariant (the model allows 63) is the SDK's ValidationErrorException,
    status 400, whose message names the header; nothing is forwarded."""
    lines = await run_scenario(java_client, "long-variant", gateway_url)
    error = only(lines, "error")
    assert error["exception"] == "ValidationErrorException"
    assert (error["status"], error["error_code"]) == (400, "ValidationError")
    assert "X-Amzn-SageMaker-Target-Variant" in error["error_message"]
    assert "63" in error["error_message"]
    assert journal == []


async def test_unavailable_raises_service_unavailable_exception(java_client, gateway_url, journal):
    """The service's 503 ServiceUnavailable is the SDK's ServiceUnavailableException, with the
    service's message; neither the SDK (no retries) nor the gateway sent it twice."""
    lines = await run_scenario(java_client, "unavailable", gateway_url)
    error = only(lines, "error")
    assert error["exception"] == "ServiceUnavailableException"
    assert (error["status"], error["error_code"]) == (503, "ServiceUnavailable")
    assert error["error_message"] == UNAVAILABLE_MESSAGE
    assert_reached_signed(journal)
    assert len(journal) == 1


# ---------------------------------------------------------------------------------------------
# InvokeEndpointWithResponseStream, async client
# ---------------------------------------------------------------------------------------------


async def test_stream_parts_arrive_complete_and_in_order(java_client, gateway_url, journal):
    """stream-5-300: five PayloadParts reach the SDK's visitor in order; joined they are the
    body sent, and the call completes without an error."""
    lines = await run_scenario(java_client, "stream", gateway_url)
    parts = [line for line in lines if line["event"] == "part"]
    assert [part["index"] for part in parts] == list(range(STREAM_PARTS))
    assert b"".join(base64.b64decode(part["bytes_b64"]) for part in parts) == STREAM_BODY
    assert [line["event"] for line in lines if line["event"] in ("error", "other-event")] == []
    only(lines, "complete")
    assert_reached_signed(journal)
    assert journal[0].raw_path == "/endpoints/stream-5-300/invocations-response-stream"


async def test_stream_parts_arrive_as_they_are_produced(java_client, gateway_url, journal):
    """Each part reaches the SDK when the model produces it, not all at the end: the last
    arrives at least half of the 4 x 300 ms of production after the first, and the arrival
    times never go back."""
    lines = await run_scenario(java_client, "stream", gateway_url)
    arrivals = [line["ms"] for line in lines if line["event"] == "part"]
    assert len(arrivals) == STREAM_PARTS
    assert arrivals == sorted(arrivals)
    assert arrivals[-1] - arrivals[0] >= (STREAM_PARTS - 1) * STREAM_INTERVAL_MS / 2, arrivals
    assert_reached_signed(journal)


async def test_stream_response_headers_reach_the_sdk(java_client, gateway_url, journal):
    """The stream's ContentType (the requested Accept), InvokedProductionVariant and
    CustomAttributes reach the SDK's onResponse before the first part."""
    lines = await run_scenario(java_client, "stream", gateway_url)
    response = only(lines, "response")
    assert response["status"] == 200
    assert response["content_type"] == "text/plain"
    assert response["invoked_variant"] == "AllTraffic"
    assert response["custom_attributes"] == "trace=java-stream"
    first_part = next(line for line in lines if line["event"] == "part")
    assert response["ms"] <= first_part["ms"]
    assert_reached_signed(journal)
    assert headers_named(journal[0], "X-Amzn-SageMaker-Accept") == ["text/plain"]


async def test_a_broken_stream_raises_model_stream_error_exception(
    java_client, gateway_url, journal
):
    """stream-fail-2: both parts arrive, then the ModelStreamError event inside the 200 stream
    fails the call with the SDK's ModelStreamErrorException and its ErrorCode."""
    lines = await run_scenario(java_client, "stream-fail", gateway_url)
    parts = [line for line in lines if line["event"] == "part"]
    assert b"".join(base64.b64decode(part["bytes_b64"]) for part in parts) == STREAM_BODY
    error = only(lines, "error")
    assert error["exception"] == "ModelStreamErrorException"
    assert error["stream_error_code"] == STREAM_BROKEN
    assert STREAM_BROKEN_MESSAGE in error["message"]
    assert [line["event"] for line in lines if line["event"] == "complete"] == []
    assert_reached_signed(journal)
