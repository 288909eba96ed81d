"""The ``explainer`` endpoint: SageMaker Clarify's online-explainability answer.

The emulated model scores a record as the sum of its features, so its exact Kernel SHAP
attributions (zero baseline) are the features themselves: the tests can check every number.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.emulator_client import emulator_runtime_client, invoke

CSV = {"Content-Type": "text/csv", "Accept": "text/csv"}
ENABLE = "X-Amzn-SageMaker-Enable-Explanations"


def explanation(features):
    return [
        {"feature_header": f"feature_{index}", "attributions": [{"attribution": [value]}]}
        for index, value in enumerate(features)
    ]


async def explain(client, server, body, headers):
    answer = await invoke(client, server, "explainer", body, headers)
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    return answer.json()


async def test_the_answer_has_clarifys_schema(server, client):
    """version, predictions (content type and data), label_headers and kernel_shap per record."""
    answer = await explain(client, server, b"1,2,3,4\n5,6,7,8\n", CSV)
    assert answer == {
        "version": "1.0",
        "predictions": {"content_type": "text/csv", "data": "10.0\n26.0\n"},
        "label_headers": ["score"],
        "explanations": {
            "kernel_shap": [explanation([1.0, 2.0, 3.0, 4.0]), explanation([5.0, 6.0, 7.0, 8.0])]
        },
    }


async def test_explanations_turned_off_leave_an_empty_object(server, client):
    """EnableExplanations '`false`' explains no record: explanations is {}, predictions stay."""
    answer = await explain(client, server, b"1,2,3,4\n", {**CSV, ENABLE: "`false`"})
    assert answer["explanations"] == {}
    assert answer["predictions"]["data"] == "10.0\n"


async def test_the_expression_is_evaluated_per_record_on_the_models_output(server, client):
    """'[0]>`15`' explains only the record scored above 15; the other's explanation is null."""
    answer = await explain(client, server, b"1,2,3,4\n5,6,7,8\n", {**CSV, ENABLE: "[0]>`15`"})
    assert answer["explanations"]["kernel_shap"] == [None, explanation([5.0, 6.0, 7.0, 8.0])]


async def test_json_lines_records_and_output(server, client):
    """JSON Lines in and out: each record an array, each output an object with its score."""
    headers = {"Content-Type": "application/jsonlines", ENABLE: "score>`5`"}
    answer = await explain(client, server, b"[1, 2]\n[3, 4]\n", headers)
    assert answer["predictions"] == {
        "content_type": "application/jsonlines",
        "data": '{"score": 3.0}\n{"score": 7.0}\n',
    }
    assert answer["explanations"]["kernel_shap"] == [None, explanation([3.0, 4.0])]


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({**CSV, ENABLE: "[0]>"}, b"1,2\n", "not a valid JMESPath expression"),
        ({**CSV, ENABLE: "[0]"}, b"1,2\n", "must evaluate to a Boolean"),
        ({"Content-Type": "application/json"}, b"[1]", "ContentType application/json"),
        ({"Content-Type": "text/csv", "Accept": "image/png"}, b"1\n", "Accept image/png"),
        (CSV, b"1,two\n", "Record 1 is not a list of numbers"),
        (CSV, b"\n", "no record"),
    ],
)
async def test_requests_the_explainer_cannot_take_are_validation_errors(
    server, client, headers, body, expected
):
    """Bad expressions, formats other than CSV/JSON Lines and non-numeric records: 400."""
    status, error_type, error = (await invoke(client, server, "explainer", body, headers)).error
    assert (status, error_type) == (400, "ValidationError")
    assert expected in error["message"]


async def test_boto3_invoke_endpoint_with_enable_explanations(server):
    """boto3's EnableExplanations reaches the explainer as its header and is honoured."""
    runtime = emulator_runtime_client(server)

    def call() -> dict:
        response = runtime.invoke_endpoint(
            EndpointName="explainer",
            EnableExplanations="`true`",
            ContentType="text/csv",
            Accept="text/csv",
            Body="1,2,3,4",
        )
        return {"ContentType": response["ContentType"], "Body": response["Body"].read()}

    response = await asyncio.to_thread(call)
    assert response["ContentType"] == "application/json"
    answer = json.loads(response["Body"])
    assert answer["explanations"]["kernel_shap"] == [explanation([1.0, 2.0, 3.0, 4.0])]
