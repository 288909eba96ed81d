"""The whole runtime API through the gateway with boto3 and the AWS CLI: response streams,
async inference, explanations, multi-model, inference components and sessions."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from botocore.exceptions import EventStreamError

from tests.conftest import AWS_CLI, AWS_CLI_V2, REGION, make_runtime_client, run_aws_cli
from tests.rawhttp import build_request, raw_request


def received(entry) -> dict[str, str]:
    return {name.lower(): value for name, value in entry.headers}


async def stream_parts(client, **params) -> list[tuple[float, bytes]]:
    """Call invoke_endpoint_with_response_stream off the loop; (arrival time, bytes) per part."""

    def call():
        started = time.monotonic()
        response = client.invoke_endpoint_with_response_stream(**params)
        parts = []
        for event in response["Body"]:
            if "PayloadPart" in event:
                parts.append((time.monotonic() - started, event["PayloadPart"]["Bytes"]))
        return response, parts

    return await asyncio.to_thread(call)


async def test_a_response_stream_is_relayed_part_by_part(gateway_url, journal):
    """Five parts 0.3 s apart: each reaches boto3 as it is produced, not all at the end."""
    client = make_runtime_client(gateway_url)
    body = b"abcdefghij"
    response, parts = await stream_parts(
        client, EndpointName="stream-5-300", Body=body, ContentType="text/plain",
        Accept="text/plain", CustomAttributes="trace=s1",
    )  # fmt: skip
    assert b"".join(part for _, part in parts) == body
    assert len(parts) == 5
    first_arrival, last_arrival = parts[0][0], parts[-1][0]
    # The last part is produced 4 x 0.3 s after the first; a buffering relay would deliver
    # the first together with the last.
    assert last_arrival - first_arrival > 0.6
    assert response["ContentType"] == "text/plain"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert response["CustomAttributes"] == "trace=s1"
    headers = received(journal[0])
    assert headers["x-amzn-sagemaker-accept"] == "text/plain"
    assert headers["content-type"] == "text/plain"


async def test_a_stream_that_fails_midway_raises_model_stream_error(gateway_url, registry):
    """An error event inside the 200 stream reaches boto3 intact and is counted with its type."""
    client = make_runtime_client(gateway_url)
    with pytest.raises(EventStreamError) as caught:
        await stream_parts(client, EndpointName="stream-fail-2", Body=b"abcd")
    assert caught.value.response["Error"]["Code"] == "ModelStreamError"
    labels = {
        "endpoint": "stream-fail-2", "variant": "AllTraffic",
        "operation": "InvokeEndpointWithResponseStream", "status": "200",
        "error": "ModelStreamError",
    }  # fmt: skip
    assert registry.get_sample_value("sagemaker_gateway_requests_total", labels) == 1


async def test_async_inference_returns_202_with_its_locations(gateway_url, journal):
    """invoke_endpoint_async: 202, InferenceId, OutputLocation and FailureLocation come back;
    the async headers arrive upstream unchanged."""
    client = make_runtime_client(gateway_url)
    params = {
        "EndpointName": "async",
        "InputLocation": "s3://bucket/input/1.json",
        "ContentType": "application/json",
        "Accept": "application/json",
        "CustomAttributes": "trace=a1",
        "InferenceId": "inference-7",
        "RequestTTLSeconds": 600,
        "InvocationTimeoutSeconds": 900,
    }
    response = await asyncio.to_thread(lambda: client.invoke_endpoint_async(**params))
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert response["InferenceId"] == "inference-7"
    assert response["OutputLocation"].startswith("s3://")
    assert response["FailureLocation"].startswith("s3://")
    headers = received(journal[0])
    assert headers["x-amzn-sagemaker-inputlocation"] == "s3://bucket/input/1.json"
    assert headers["x-amzn-sagemaker-content-type"] == "application/json"
    assert headers["x-amzn-sagemaker-accept"] == "application/json"
    assert headers["x-amzn-sagemaker-requestttlseconds"] == "600"
    assert headers["x-amzn-sagemaker-invocationtimeoutseconds"] == "900"
    assert "content-type" not in headers  # the async form replaces the plain one


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Amzn-SageMaker-RequestTTLSeconds", "30"),
        ("X-Amzn-SageMaker-InvocationTimeoutSeconds", "4000"),
        ("X-Amzn-SageMaker-InputLocation", "ftp://bucket/input.json"),
    ],
)
async def test_async_values_outside_the_model_are_refused_before_forwarding(
    gateway, journal, header, value
):
    """As a caller in any language could send them: ValidationError naming the header."""
    headers = [("X-Amzn-SageMaker-InputLocation", "s3://bucket/in.json"), (header, value)]
    if header == "X-Amzn-SageMaker-InputLocation":
        headers = [(header, value)]
    request = build_request("POST", "/endpoints/async/async-invocations", headers)
    answer = await raw_request(gateway.host, gateway.port, request)
    assert answer.status == 400
    assert answer.headers["x-amzn-errortype"] == "ValidationError"
    assert header in answer.json()["message"]
    assert journal == []


async def test_explanations_target_model_component_and_sessions_travel_unchanged(
    gateway_url, journal
):
    """EnableExplanations, TargetModel, InferenceComponentName and SessionId arrive as sent;
    a new session's id and a closed session's id come back to boto3."""
    client = make_runtime_client(gateway_url)

    def call(**params):
        response = client.invoke_endpoint(**params)
        response["Body"] = response["Body"].read()
        return response

    explained = await asyncio.to_thread(
        call, EndpointName="explainer", Body=b"1,2,3,4", ContentType="text/csv",
        Accept="text/csv", EnableExplanations="`true`",
    )  # fmt: skip
    clarify = json.loads(explained["Body"])
    assert {"version", "predictions", "label_headers", "explanations"} <= set(clarify)
    assert "kernel_shap" in clarify["explanations"]
    assert received(journal[-1])["x-amzn-sagemaker-enable-explanations"] == "`true`"

    model = await asyncio.to_thread(
        call, EndpointName="multi-model", Body=b"{}", TargetModel="models/m-3.tar.gz"
    )
    assert json.loads(model["Body"])["target_model"] == "models/m-3.tar.gz"
    assert received(journal[-1])["x-amzn-sagemaker-target-model"] == "models/m-3.tar.gz"

    component = await asyncio.to_thread(
        call, EndpointName="components", Body=b"{}", InferenceComponentName="ic-llama-2"
    )
    assert json.loads(component["Body"])["inference_component"] == "ic-llama-2"
    assert received(journal[-1])["x-amzn-sagemaker-inference-component"] == "ic-llama-2"

    opened = await asyncio.to_thread(call, EndpointName="echo", Body=b"{}", SessionId="NEW_SESSION")
    session_id = opened["NewSessionId"].split(";")[0]
    closed = await asyncio.to_thread(
        call, EndpointName="echo", Body=b'{"close_session": true}', SessionId=session_id
    )
    assert closed["ClosedSessionId"] == session_id
    assert received(journal[-1])["x-amzn-sagemaker-session-id"] == session_id


async def test_aws_cli_streams_and_async_through_the_gateway(
    gateway_url, tmp_path, journal, aws_cli_v2_home
):
    """`aws sagemaker-runtime invoke-endpoint-with-response-stream` (CLI v2) and
    `invoke-endpoint-async` (v1 and v2) work through the gateway unsigned."""
    body = tmp_path / "body"
    body.write_bytes(b"0123456789")
    # Debian's CLI 2.9 learns the operation from today's model but cannot print an event
    # stream (it predates the CLI's customisation for it), so the query leaves the Body out:
    # the call, its signature and the stream's headers are what this shows.
    code, out, err = await run_aws_cli(
        "sagemaker-runtime", "invoke-endpoint-with-response-stream",
        "--endpoint-name", "stream-5-50", "--body", f"fileb://{body}",
        "--accept", "text/plain", "--custom-attributes", "trace=cli2",
        "--query", "{ContentType: ContentType, Variant: InvokedProductionVariant, "
        "Attributes: CustomAttributes}",
        "--endpoint-url", gateway_url, "--region", REGION, "--no-sign-request",
        cli=AWS_CLI_V2, home=aws_cli_v2_home,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {
        "ContentType": "text/plain", "Variant": "AllTraffic", "Attributes": "trace=cli2",
    }  # fmt: skip
    assert journal[-1].raw_path == "/endpoints/stream-5-50/invocations-response-stream"
    assert received(journal[-1])["x-amzn-sagemaker-accept"] == "text/plain"

    for cli, home in ((AWS_CLI, None), (AWS_CLI_V2, aws_cli_v2_home)):
        code, out, err = await run_aws_cli(
            "sagemaker-runtime", "invoke-endpoint-async", "--endpoint-name", "async",
            "--input-location", "s3://bucket/in.json", "--inference-id", "cli-1",
            "--endpoint-url", gateway_url, "--region", REGION, "--no-sign-request",
            cli=cli, home=home,
        )  # fmt: skip
        assert code == 0, err
        answer = json.loads(out)
        assert answer["InferenceId"] == "cli-1"
        assert answer["OutputLocation"].startswith("s3://")


async def test_100_concurrent_streams_relay_at_the_emulators_pace(gateway, journal):
    """100 streams of 5 parts 0.2 s apart at once: every one complete and in order, and no
    stream delivered all at once at its end (parts keep their spacing)."""
    spread: list[float] = []
    body = b"0123456789"

    async def one(session):
        url = gateway.make_url("/endpoints/stream-5-200/invocations-response-stream")
        async with session.post(url, data=body) as response:
            assert response.status == 200
            arrivals, data = [], b""
            async for chunk in response.content.iter_any():
                arrivals.append(time.monotonic())
                data += chunk
            spread.append(arrivals[-1] - arrivals[0])
            return data

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(one(session) for _ in range(100)))
    assert len(journal) == 100
    assert all(len(data) > len(body) for data in results)
    assert min(spread) > 0.4  # 4 gaps of 0.2 s: the parts were not held back and batched
