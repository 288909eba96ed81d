"""InvokeEndpointAsync: the checks the service makes on the request, and its 202.

The request's headers are checked against botocore's ``sagemaker-runtime`` model
(InvokeEndpointAsyncInput) before the endpoint is looked up; each failure is a 400
``ValidationError`` in the service's "1 validation error detected" wording:

| member (header ``X-Amzn-SageMaker-<member>``) | rule                                         |
|-----------------------------------------------|----------------------------------------------|
| InputLocation                                 | 1-1024 characters, ``s3://`` or ``https://`` |
|                                               | and a host                                   |
| InferenceId (header ``…-Inference-Id``)       | 1-64, printable ASCII, no leading space      |
| S3OutputPathExtension                         | 1-512 of ``[a-zA-Z0-9!_.*'()/-]``, not       |
|                                               | starting ``s3:`` or ``https:``               |
| Filename                                      | 1-32, a letter or digit first, one dot at    |
|                                               | most                                         |
| RequestTTLSeconds                             | an integer, 60-21600                         |
| InvocationTimeoutSeconds                      | an integer, 1-3600                           |
| Body and InputLocation                        | exactly one of the two                       |
| Body                                          | at most 128,000 bytes (413, like             |
|                                               | InvokeEndpoint's body limit)                 |

The service model documents Body and InputLocation as mutually exclusive, "provide exactly one";
the wording of those two refusals is the emulator's own.

The 202 has the body ``{"InferenceId": "<id>"}`` (the request's id, else a new UUID),
``Content-Type: application/json``, the private headers (see :mod:`.answers`) and:

- ``X-Amzn-SageMaker-OutputLocation``: ``s3://sagemaker-<region>-<account>/async-inference/
  <endpoint>/output[/<S3OutputPathExtension>]/<Filename, else <id>.out>``
- ``X-Amzn-SageMaker-FailureLocation``: ``s3://sagemaker-<region>-<account>/async-inference/
  <endpoint>/failure/<id>-error.out``

(``<id>.out`` and ``<id>-error.out`` are the names the service gives results in the endpoint's
S3OutputPath and S3FailurePath.) Nothing is run: no result ever appears at either location.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from aiohttp import web

from gateway.emulator.errors import ACCOUNT_ID, invalid_value, validation_error
from gateway.emulator.invocation import PRIVATE_HEADERS, Invocation

INPUT_LOCATION = "X-Amzn-SageMaker-InputLocation"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
S3_OUTPUT_PATH_EXTENSION = "X-Amzn-SageMaker-S3OutputPathExtension"
FILENAME = "X-Amzn-SageMaker-Filename"
REQUEST_TTL_SECONDS = "X-Amzn-SageMaker-RequestTTLSeconds"
INVOCATION_TIMEOUT_SECONDS = "X-Amzn-SageMaker-InvocationTimeoutSeconds"
OUTPUT_LOCATION = "X-Amzn-SageMaker-OutputLocation"
FAILURE_LOCATION = "X-Amzn-SageMaker-FailureLocation"

#: The ``max`` of InvokeEndpointAsyncInput's Body in the service model.
ASYNC_MAX_BODY_BYTES = 128_000
_INTEGER = re.compile(r"-?[0-9]{1,18}")


@dataclass(frozen=True)
class TextRule:
    """A string header's constraints: the model's (Java) pattern text and its Python form."""

    member: str
    header: str
    min_length: int
    max_length: int
    pattern_text: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class IntegerRule:
    """An integer header's range."""

    member: str
    header: str
    minimum: int
    maximum: int


TEXT_RULES = (
    TextRule(
        "InputLocation",
        INPUT_LOCATION,
        1,
        1024,
        "^(https|s3)://([^/]+)/?(.*)$",
        re.compile(r"(https|s3)://([^/]+)/?(.*)"),
    ),
    TextRule(
        "InferenceId",
        INFERENCE_ID,
        1,
        64,
        r"\A\S[\p{Print}]*\z",
        re.compile(r"\S[\x20-\x7e]*"),
    ),
    TextRule(
        "S3OutputPathExtension",
        S3_OUTPUT_PATH_EXTENSION,
        1,
        512,
        "^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+$",
        re.compile(r"(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+"),
    ),
    TextRule(
        "Filename",
        FILENAME,
        1,
        32,
        r"^(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9-_\.]*$",
        re.compile(r"(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9_.-]*"),
    ),
)
INTEGER_RULES = (
    IntegerRule("RequestTTLSeconds", REQUEST_TTL_SECONDS, 60, 21600),
    IntegerRule("InvocationTimeoutSeconds", INVOCATION_TIMEOUT_SECONDS, 1, 3600),
)


def check_async_request(call: Invocation) -> None:
    """Refuse, as the service does, an InvokeEndpointAsync request that breaks the model's rules."""
    for text_rule in TEXT_RULES:
        _check_text(text_rule, call.header(text_rule.header))
    for integer_rule in INTEGER_RULES:
        _check_integer(integer_rule, call.header(integer_rule.header))
    has_location = call.header(INPUT_LOCATION) is not None
    if has_location and call.body:
        raise validation_error(
            "InputLocation and Body are mutually exclusive: provide exactly one of them."
        )
    if not has_location and not call.body:
        raise validation_error("InputLocation or Body is required: provide exactly one of them.")
    if len(call.body) > ASYNC_MAX_BODY_BYTES:
        raise validation_error(
            "1 validation error detected: Value at 'body' failed to satisfy constraint: "
            f"Member must have length less than or equal to {ASYNC_MAX_BODY_BYTES}",
            status=413,
        )


def _lower_camel(member: str) -> str:
    # The service names members this way in its messages: "requestTTLSeconds", "s3Output...".
    return member[0].lower() + member[1:]


def _check_text(rule: TextRule, value: str | None) -> None:
    if value is None:
        return
    member = _lower_camel(rule.member)
    if len(value) < rule.min_length:
        raise invalid_value(
            member, value, f"Member must have length greater than or equal to {rule.min_length}"
        )
    if len(value) > rule.max_length:
        raise invalid_value(
            member, value, f"Member must have length less than or equal to {rule.max_length}"
        )
    if not rule.pattern.fullmatch(value):
        raise invalid_value(
            member, value, f"Member must satisfy regular expression pattern: {rule.pattern_text}"
        )


def _check_integer(rule: IntegerRule, value: str | None) -> None:
    if value is None:
        return
    member = _lower_camel(rule.member)
    # Not int() alone: it would also take " 60", "+60" and "6_0".
    if not _INTEGER.fullmatch(value):
        raise invalid_value(member, value, "Member must be an integer")
    number = int(value)
    if number < rule.minimum:
        raise invalid_value(
            member, value, f"Member must have value greater than or equal to {rule.minimum}"
        )
    if number > rule.maximum:
        raise invalid_value(
            member, value, f"Member must have value less than or equal to {rule.maximum}"
        )


def accepted(call: Invocation) -> web.Response:
    """The service's 202 for a checked request: its inference id and where results will be."""
    inference_id = call.header(INFERENCE_ID) or str(uuid.uuid4())
    base = f"s3://sagemaker-{call.settings.region}-{ACCOUNT_ID}/async-inference/{call.endpoint}"
    extension = call.header(S3_OUTPUT_PATH_EXTENSION)
    output_dir = f"{base}/output/{extension.strip('/')}" if extension else f"{base}/output"
    filename = call.header(FILENAME) or f"{inference_id}.out"
    headers = {
        OUTPUT_LOCATION: f"{output_dir}/{filename}",
        FAILURE_LOCATION: f"{base}/failure/{inference_id}-error.out",
        **PRIVATE_HEADERS,
    }
    return web.json_response({"InferenceId": inference_id}, status=202, headers=headers)
