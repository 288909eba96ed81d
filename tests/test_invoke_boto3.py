"""InvokeEndpoint through the running gateway with real boto3, against the emulator."""

from __future__ import annotations

import asyncio
import re

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ACCESS_KEY, make_runtime_client

ALL_HEADERS = {
    "ContentType": ("Content-Type", "application/json"),
    "Accept": ("Accept", "application/json"),
    "CustomAttributes": ("X-Amzn-SageMaker-Custom-Attributes", "trace=abc-123,c000b4f9"),
    "TargetModel": ("X-Amzn-SageMaker-Target-Model", "model-7.tar.gz"),
    "TargetVariant": ("X-Amzn-SageMaker-Target-Variant", "VariantB"),
    "TargetContainerHostname": ("X-Amzn-SageMaker-Target-Container-Hostname", "container-2"),
    "InferenceId": ("X-Amzn-SageMaker-Inference-Id", "inference id 42"),
    "EnableExplanations": ("X-Amzn-SageMaker-Enable-Explanations", "`true`"),
    "InferenceComponentName": ("X-Amzn-SageMaker-Inference-Component", "ic-llama-1"),
    "SessionId": ("X-Amzn-SageMaker-Session-Id", "NEW_SESSION"),
}
NEW_SESSION_PATTERN = re.compile(
    r"[a-zA-Z0-9](-*[a-zA-Z0-9])*;\sExpires=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
)


def received(entry) -> dict[str, str]:
    """The headers one journal entry arrived with, by lower-case name."""
    return {name.lower(): value for name, value in entry.headers}


async def invoke(client, **params):
    """Call invoke_endpoint off the event loop (boto3 blocks) and read the body."""

    def call():
        response = client.invoke_endpoint(**params)
        response["Body"] = response["Body"].read()
        return response

    return await asyncio.to_thread(call)


async def test_unsigned_boto3_call_is_signed_and_forwarded(runtime_client, journal):
    """An unsigned boto3 call comes back with the model's answer; upstream saw a valid signature."""
    client = runtime_client()
    response = await invoke(
        client, EndpointName="echo", Body=b'{"x": [1, 2, 3]}', ContentType="application/json"
    )
    assert response["Body"] == b'{"x": [1, 2, 3]}'
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert len(journal) == 1
    assert journal[0].signature_ok
    assert f"Credential={ACCESS_KEY}/" in received(journal[0])["authorization"]


async def test_a_client_signature_is_replaced_by_the_gateways(runtime_client, journal):
    """A client that signs with its own (unknown) keys still works: its signature is discarded."""
    client = runtime_client(signed_with=("AKIDCALLERKEY", "caller-secret"))
    response = await invoke(client, EndpointName="echo", Body=b"1,2,3", ContentType="text/csv")
    assert response["Body"] == b"1,2,3"
    headers = received(journal[0])
    assert journal[0].signature_ok
    assert "AKIDCALLERKEY" not in headers["authorization"]
    assert f"Credential={ACCESS_KEY}/" in headers["authorization"]


async def test_every_supported_header_arrives_unchanged_and_answers_come_back(
    runtime_client, journal
):
    """All ten InvokeEndpoint headers reach the upstream byte for byte; the API's answers return."""
    client = runtime_client()
    params = {member: value for member, (_, value) in ALL_HEADERS.items()}
    response = await invoke(client, EndpointName="echo", Body=b"{}", **params)

    headers = received(journal[0])
    for wire_name, value in ALL_HEADERS.values():
        assert headers[wire_name.lower()] == value, wire_name
    assert response["InvokedProductionVariant"] == "VariantB"
    assert response["CustomAttributes"] == "trace=abc-123,c000b4f9"
    assert NEW_SESSION_PATTERN.fullmatch(response["NewSessionId"])


async def test_model_error_reaches_boto3_with_its_fields(runtime_client):
    """A 424 from the model is boto3's ModelError, with OriginalStatusCode, message and log ARN."""
    client = runtime_client()
    with pytest.raises(client.exceptions.ModelError) as caught:
        await invoke(client, EndpointName="model-error", Body=b"{}")
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["Error"]["Code"] == "ModelError"
    assert isinstance(response["OriginalStatusCode"], int)
    assert response["OriginalMessage"]
    assert response["LogStreamArn"].startswith("arn:aws:logs:")


async def test_upstream_503_reaches_boto3_as_service_unavailable(runtime_client):
    """The service's 503 passes through: boto3 raises ServiceUnavailable."""
    client = runtime_client()
    with pytest.raises(client.exceptions.ServiceUnavailable):
        await invoke(client, EndpointName="unavailable", Body=b"{}")


async def test_upstream_throttling_passes_through(runtime_client):
    """The service's ThrottlingException reaches the caller as it was sent."""
    client = runtime_client()
    with pytest.raises(ClientError) as caught:
        await invoke(client, EndpointName="throttle", Body=b"{}")
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_an_upstream_that_never_answers_is_a_504_at_the_deadline(start_gateway):
    """With upstream_timeout 0.5 s, a hanging model gives 504 GatewayTimeout, not a hang."""
    gateway = await start_gateway(upstream_timeout_s=0.5)
    client = make_runtime_client(str(gateway.make_url("")).rstrip("/"))
    with pytest.raises(ClientError) as caught:
        await invoke(client, EndpointName="hang", Body=b"{}")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 504
    assert caught.value.response["Error"]["Code"] == "GatewayTimeout"
    assert "upstream_timeout" in caught.value.response["Error"]["Message"]


async def test_a_connection_reset_before_an_answer_is_a_503(runtime_client):
    """An upstream that drops the connection gives ServiceUnavailable, not a bare 500."""
    client = runtime_client()
    with pytest.raises(client.exceptions.ServiceUnavailable) as caught:
        await invoke(client, EndpointName="reset", Body=b"{}")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


async def test_a_body_of_exactly_the_limit_passes(runtime_client, journal):
    """5,242,880 bytes, the documented InvokeEndpoint limit, is forwarded whole."""
    body = bytes(range(256)) * (5_242_880 // 256)
    assert len(body) == 5_242_880
    client = runtime_client()
    response = await invoke(
        client, EndpointName="echo", Body=body, ContentType="application/octet-stream"
    )
    assert response["Body"] == body
    assert journal[0].body_length == 5_242_880


async def test_a_body_one_byte_over_the_limit_is_413_and_not_forwarded(runtime_client, journal):
    """5,242,881 bytes with Content-Length: 413 ValidationError; the upstream sees nothing."""
    client = runtime_client()
    with pytest.raises(client.exceptions.ValidationError) as caught:
        await invoke(client, EndpointName="echo", Body=b"x" * 5_242_881)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert "5242880" in caught.value.response["Error"]["Message"]
    assert journal == []


@pytest.mark.parametrize(
    ("param", "value", "field"),
    [
        ("CustomAttributes", "a" * 1025, "X-Amzn-SageMaker-Custom-Attributes"),
        ("Accept", "b" * 1025, "Accept"),
        ("ContentType", "c" * 1025, "Content-Type"),
        ("TargetVariant", "v" * 64, "X-Amzn-SageMaker-Target-Variant"),
        ("InferenceId", "i" * 65, "X-Amzn-SageMaker-Inference-Id"),
        ("TargetVariant", "bad_variant", "X-Amzn-SageMaker-Target-Variant"),
        ("SessionId", "s" * 257, "X-Amzn-SageMaker-Session-Id"),
    ],
)
async def test_a_header_breaking_its_rule_is_refused_and_not_forwarded(
    runtime_client, journal, param, value, field
):
    """Each over-long or malformed header is a ValidationError naming the header."""
    client = runtime_client()
    with pytest.raises(client.exceptions.ValidationError) as caught:
        await invoke(client, EndpointName="echo", Body=b"{}", **{param: value})
    assert field in caught.value.response["Error"]["Message"]
    assert journal == []


@pytest.mark.parametrize(
    "name", ["bad_name", "e" * 64, "-lead", "a..b", "..%2Fadmin", "a%2Fb", "a@b", "trail-"]
)
async def test_a_bad_endpoint_name_is_refused_and_not_forwarded(runtime_client, journal, name):
    """Names outside the model's pattern or over 63 characters never reach the upstream."""
    client = runtime_client()
    with pytest.raises(client.exceptions.ValidationError) as caught:
        await invoke(client, EndpointName=name, Body=b"{}")
    assert "endpointName" in caught.value.response["Error"]["Message"]
    assert journal == []


async def test_a_63_character_endpoint_name_is_forwarded(runtime_client, journal):
    """The longest valid name passes the gateway (the emulator then says it does not exist)."""
    client = runtime_client()
    name = "echo-" + "n" * 58
    response = await invoke(client, EndpointName=name, Body=b"ok")
    assert response["Body"] == b"ok"
    assert journal[0].endpoint == name
