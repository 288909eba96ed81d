"""The emulated SageMaker runtime over real loopback sockets, signed by botocore's own SigV4Auth.

botocore is a third-party signer: it shares no code with the emulator's verifier, so a request it
signs that the emulator accepts (or refuses) says something about both.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from gateway.emulator import JOURNAL, EmulatorSettings
from gateway.emulator.app import STATE
from gateway.emulator.behaviours import ENDPOINT_NAME_MAX, ENDPOINT_NAME_PATTERN
from tests.emulator_client import (
    ACCESS_KEY,
    MODEL_TIMEOUT_S,
    REGION,
    SESSION_TOKEN,
    SETTINGS,
    TEMPORARY_KEY,
    TEMPORARY_SECRET,
    Answer,
    invoke,
    post,
    service_shape,
    signed_headers,
    url,
    wait_until,
)

SESSION_ID = "X-Amzn-SageMaker-Session-Id"


# ---------------------------------------------------------------------------------------------
# Signature verification
# ---------------------------------------------------------------------------------------------


async def test_a_signed_echo_round_trips_and_is_journaled(server, client):
    """A botocore-signed echo returns the body, content type and attributes, and is journaled."""
    body = bytes(range(256))
    headers = {
        "Content-Type": "application/x-test; charset=binary",
        "X-Amzn-SageMaker-Custom-Attributes": "trace=abc",
        "X-Amzn-SageMaker-Target-Variant": "Blue",
    }
    answer = await invoke(client, server, "echo", body, headers)
    assert (answer.status, answer.body) == (200, body)
    assert answer.headers["Content-Type"] == headers["Content-Type"]
    assert answer.headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=abc"
    assert answer.headers["x-Amzn-Invoked-Production-Variant"] == "Blue"
    [entry] = server.app[JOURNAL]
    assert entry.signature_ok and entry.signature_error is None
    assert (entry.method, entry.endpoint) == ("POST", "echo")
    assert entry.raw_path == "/endpoints/echo/invocations"
    assert (entry.body_length, entry.body_sha256) == (256, hashlib.sha256(body).hexdigest())
    received = {name.lower(): value for name, value in entry.headers}
    assert received["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert received["x-amzn-sagemaker-custom-attributes"] == "trace=abc"


async def test_echo_defaults_to_octet_stream_and_alltraffic(server, client):
    """Without Content-Type or TargetVariant, echo answers octet-stream on AllTraffic."""
    target = url(server, "echo-default")
    headers = signed_headers(target, b"x")
    answer = await post(client, target, b"x", headers=headers, skip_auto_headers=["Content-Type"])
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/octet-stream"
    assert answer.headers["x-Amzn-Invoked-Production-Variant"] == "AllTraffic"


async def test_a_wrong_secret_is_an_invalid_signature(server, client):
    """A request signed with the wrong secret is 403 InvalidSignatureException, and journaled."""
    status, error_type, body = (await invoke(client, server, "echo", secret_key="wrong")).error
    assert (status, error_type) == (403, "InvalidSignatureException")
    assert "signature we calculated does not match" in body["message"]
    [entry] = server.app[JOURNAL]
    assert not entry.signature_ok
    assert entry.signature_error == "InvalidSignatureException"


async def test_an_unknown_access_key_is_an_unrecognized_client(server, client):
    """A key id the emulator does not know is 403 UnrecognizedClientException."""
    answer = await invoke(client, server, "echo", access_key="AKIDNOBODY")
    assert answer.error == (
        403,
        "UnrecognizedClientException",
        {"message": "The security token included in the request is invalid."},
    )


async def test_a_missing_authorization_is_a_missing_authentication_token(server, client):
    """An unsigned request is 403 MissingAuthenticationTokenException, and journaled as such."""
    answer = await post(client, url(server, "echo"))
    assert answer.error == (
        403,
        "MissingAuthenticationTokenException",
        {"message": "Missing Authentication Token"},
    )
    assert server.app[JOURNAL][0].signature_error == "MissingAuthenticationTokenException"


async def test_a_tampered_body_is_rejected(server, client):
    """A body changed after signing is 403 InvalidSignatureException and never echoed."""
    target = url(server, "echo")
    headers = signed_headers(target, b'{"amount": 1}')
    answer = await post(client, target, b'{"amount": 9}', headers=headers)
    assert answer.error[:2] == (403, "InvalidSignatureException")


async def test_a_stale_x_amz_date_is_rejected(start_emulator, client):
    """A signature more than five minutes older than the emulator's clock has expired."""
    server = await start_emulator(clock=lambda: datetime.now(UTC) + timedelta(minutes=6))
    status, error_type, body = (await invoke(client, server, "echo")).error
    assert (status, error_type) == (403, "InvalidSignatureException")
    assert body["message"].startswith("Signature expired: ")


async def test_a_temporary_key_needs_its_session_token(server, client):
    """A temporary key is accepted with its session token and refused without it."""
    temporary = {"access_key": TEMPORARY_KEY, "secret_key": TEMPORARY_SECRET}
    with_token = await invoke(client, server, "echo", token=SESSION_TOKEN, **temporary)
    without = await invoke(client, server, "echo", **temporary)
    assert with_token.status == 200
    assert without.error[:2] == (403, "UnrecognizedClientException")


async def test_every_response_carries_a_request_id(server, client):
    """Successes and failures alike carry their own x-amzn-RequestId, the journal's id."""
    ok = await invoke(client, server, "echo")
    refused = await post(client, url(server, "echo"))
    ids = {ok.headers["x-amzn-RequestId"], refused.headers["x-amzn-RequestId"]}
    assert len(ids) == 2
    assert {entry.request_id for entry in server.app[JOURNAL]} == ids


async def test_a_body_over_the_limit_is_413_and_journaled_unread(server, client):
    """A body over max_body_bytes is 413 ValidationError; the journal records it, unread."""
    body = b"x" * (SETTINGS.max_body_bytes + 1)
    answer = await invoke(client, server, "echo", body)
    assert answer.error[:2] == (413, "ValidationError")
    [entry] = server.app[JOURNAL]
    assert (entry.body_length, entry.body_sha256, entry.signature_ok) == (len(body), None, False)


# ---------------------------------------------------------------------------------------------
# Endpoint behaviours
# ---------------------------------------------------------------------------------------------


async def test_variants_alternate_a_b_a_b(server, client):
    """Without a TargetVariant, the variants endpoint answers VariantA, VariantB, A, B."""
    seen = []
    for _ in range(4):
        answer = await invoke(client, server, "variants")
        seen.append(answer.headers["x-Amzn-Invoked-Production-Variant"])
    assert seen == ["VariantA", "VariantB", "VariantA", "VariantB"]


async def test_model_error_has_the_services_fields(server, client):
    """model-error is a 424 ModelError with ErrorCode, status, message, log ARN and Message."""
    status, error_type, body = (await invoke(client, server, "model-error")).error
    assert (status, error_type) == (424, "ModelError")
    assert body["ErrorCode"] == "CLIENT_ERROR_FROM_MODEL"
    assert body["OriginalStatusCode"] == 500
    assert body["OriginalMessage"]
    assert body["LogStreamArn"] == (
        f"arn:aws:logs:{REGION}:123456789012:log-group:/aws/sagemaker/Endpoints/model-error"
    )
    assert body["Message"].startswith('Received server error (500) from primary with message "')
    assert body["Message"].endswith("in account 123456789012 for more information.")


async def test_model_timeout_waits_then_reports_the_timeout(server, client):
    """model-timeout answers only after model_timeout_s, with status 0 and the timeout wording."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await invoke(client, server, "model-timeout")
    waited_s = loop.time() - started
    status, error_type, body = answer.error
    assert (status, error_type) == (424, "ModelError")
    assert waited_s >= MODEL_TIMEOUT_S
    assert body["OriginalStatusCode"] == 0
    assert body["Message"].startswith(
        'Received server error (0) from primary with message "Your invocation timed out while '
        "waiting for a response from container primary."
    )


async def test_slow_waits_its_milliseconds_then_echoes(server, client):
    """slow-<N> answers like echo after at least N milliseconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await invoke(client, server, "slow-120", b"late")
    assert loop.time() - started >= 0.12
    assert (answer.status, answer.body) == (200, b"late")


UNAVAILABLE = "The service is unavailable. Try your call again."
NOT_FOUND = "Endpoint no-such-model of account 123456789012 not found."


@pytest.mark.parametrize(
    ("endpoint", "status", "error_type", "message"),
    [
        ("throttle", 400, "ThrottlingException", None),
        ("unavailable", 503, "ServiceUnavailable", UNAVAILABLE),
        ("no-such-model", 400, "ValidationError", NOT_FOUND),
    ],
)
async def test_error_endpoints_answer_like_the_service(
    server, client, endpoint, status, error_type, message
):
    """throttle, unavailable and an unknown name answer with the service's status and type."""
    answer = await invoke(client, server, endpoint)
    assert answer.error == (status, error_type, {"message": message})


async def test_an_invalid_endpoint_name_is_a_validation_error(server, client):
    """A name outside the model's pattern is refused naming the endpointName constraint."""
    status, error_type, body = (await invoke(client, server, "bad--")).error
    assert (status, error_type) == (400, "ValidationError")
    assert "'endpointName'" in body["message"]


async def test_reset_drops_the_connection_without_an_answer(server, client):
    """reset reads the request, then the client sees a reset or a server disconnect."""
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await invoke(client, server, "reset")
    assert server.app[JOURNAL][0].signature_ok


async def test_hang_never_answers_and_ends_when_the_client_leaves(server, client):
    """hang gives no answer before the client's timeout; leaving cancels the pending call."""
    target = url(server, "hang")
    headers = signed_headers(target, b"{}")
    with pytest.raises(TimeoutError):
        await post(client, target, headers=headers, timeout=aiohttp.ClientTimeout(total=0.2))
    assert server.app[JOURNAL][0].signature_ok
    await wait_until(lambda: not server.app[STATE].pending, "the hung call is cancelled")


async def test_private_headers_come_back_from_echo(server, client):
    """echo adds X-Emulator-Private and Set-Cookie, which a gateway must not pass on."""
    answer = await invoke(client, server, "echo")
    assert answer.headers["X-Emulator-Private"] == "do-not-forward"
    assert answer.headers["Set-Cookie"] == "emulator=1"


def test_the_service_rules_the_emulator_copies_are_the_models():
    """Endpoint-name rule and default body limit equal botocore's sagemaker-runtime model."""
    name = service_shape("EndpointName").metadata
    assert (name["pattern"], name["max"]) == (ENDPOINT_NAME_PATTERN, ENDPOINT_NAME_MAX)
    assert EmulatorSettings().max_body_bytes == service_shape("BodyBlob").metadata["max"]


async def test_new_session_returns_an_id_matching_the_service_model(server, client):
    """NEW_SESSION answers a New-Session-Id that matches the service model's pattern."""
    shape = service_shape("NewSessionResponseHeader")
    answer = await invoke(client, server, "echo", headers={SESSION_ID: "NEW_SESSION"})
    value = answer.headers["X-Amzn-SageMaker-New-Session-Id"]
    assert re.fullmatch(shape.metadata["pattern"], value)
    expires = datetime.strptime(value.split("Expires=")[1], "%Y-%m-%dT%H:%M:%SZ")
    ahead = expires.replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(minutes=19) < ahead <= timedelta(minutes=20)


async def test_an_issued_session_id_is_accepted_and_an_unknown_one_refused(server, client):
    """A session id the emulator issued is an existing session; any other is a ValidationError."""
    opened = await invoke(client, server, "echo", headers={SESSION_ID: "NEW_SESSION"})
    session_id = opened.headers["X-Amzn-SageMaker-New-Session-Id"].split(";")[0]
    again = await invoke(client, server, "echo", headers={SESSION_ID: session_id})
    unknown = await invoke(client, server, "echo", headers={SESSION_ID: "not-issued"})
    assert again.status == 200
    assert "X-Amzn-SageMaker-New-Session-Id" not in again.headers
    assert unknown.error[:2] == (400, "ValidationError")


async def test_an_unknown_path_is_an_unknown_operation(server, client):
    """A signed request for a path that is no operation is 404 UnknownOperationException."""
    target = str(server.make_url("/endpoints/echo/predict"))
    async with client.get(target, headers=signed_headers(target, b"", method="GET")) as response:
        answer = await Answer.read(response)
    assert answer.error[:2] == (404, "UnknownOperationException")
    assert server.app[JOURNAL][0].signature_ok


# ---------------------------------------------------------------------------------------------
# The journal over HTTP
# ---------------------------------------------------------------------------------------------


async def test_the_journal_is_served_as_json_and_cleared_by_delete(server, client):
    """GET /_emulator/requests lists what was received; DELETE empties it."""
    await invoke(client, server, "echo", b"abc")
    journal_url = str(server.make_url("/_emulator/requests"))
    async with client.get(journal_url) as response:
        [entry] = await response.json()
    assert entry["endpoint"] == "echo"
    assert entry["signature_ok"] is True
    assert entry["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert ["Content-Length", "3"] in entry["headers"]
    async with client.delete(journal_url) as response:
        assert response.status == 204
    async with client.get(journal_url) as response:
        assert await response.json() == []
