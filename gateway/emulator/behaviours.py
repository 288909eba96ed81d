"""Endpoint behaviours: how a call is answered, chosen by the endpoint's name.

Each behaviour makes one of the service's answers reproducible on demand. The operations column
says which of InvokeEndpoint (I), InvokeEndpointWithResponseStream (S) and InvokeEndpointAsync
(A) the endpoint answers; see :mod:`gateway.emulator.answers` for the form of each answer.

| endpoint name               | ops   | answer                                                |
|-----------------------------|-------|-------------------------------------------------------|
| ``echo``, ``echo-<any>``    | I S A | 200 with the request's body (details below); A: 202   |
| ``variants``                | I S   | like echo; variants ``VariantA``, ``VariantB`` in turn |
| ``slow``, ``slow-<N>``      | I S   | like echo, after ``slow_default_ms`` or N ms          |
| ``stream…``                 | I S   | the body in N parts at a set pace, maybe breaking     |
|                             |       | midway (see :mod:`gateway.emulator.streaming`)        |
| ``async``, ``async-<any>``  | A     | 202 (see :mod:`gateway.emulator.async_inference`)     |
| ``explainer``               | I     | Clarify's explanations (see                           |
|                             |       | :mod:`gateway.emulator.explainer`)                    |
| ``multi-model``             | I     | 200 JSON ``{"target_model": <TargetModel>,``          |
|                             |       | ``"body_sha256": <hex>}``; no TargetModel: 400        |
| ``components``              | I S   | 200 JSON ``{"inference_component": <name>,``          |
|                             |       | ``"body_sha256": <hex>}``; no InferenceComponentName: |
|                             |       | 400 (body ``ErrorCode`` ``INFERENCE_COMPONENT_NAME_`` |
|                             |       | ``MISSING`` and ``Message``, as the service sends it) |
| ``model-error``             | I S   | 424 ``ModelError``: the container answered 500        |
| ``model-timeout``           | I S   | 424 ``ModelError`` after ``model_timeout_s``, status 0 |
| ``throttle``                | I S A | 400 ``ThrottlingException``, body ``{"message": null}`` |
| ``unavailable``             | I S A | 503 ``ServiceUnavailable``                            |
| ``not-ready``               | I S A | 429 ``ModelNotReadyException`` (still loading)        |
| ``reset``                   | I S A | reads the request, then a TCP reset (RST), no answer  |
| ``hang``                    | I S A | no answer, ever                                       |
| any other valid name        | I S A | 400 ``ValidationError`` ``Endpoint <name> of account``|
|                             |       | ``123456789012 not found.`` (the service's words)     |
| an invalid name             | I S A | 400 ``ValidationError`` naming the ``endpointName`` rule |

An endpoint called with an operation it does not answer is a 400 ``ValidationError`` (the
emulator's wording). InvokeEndpointAsync checks its request headers before the endpoint is looked
up (see :func:`gateway.emulator.async_inference.check_async_request`). Every error is answered
before a stream starts, as a normal JSON error, whatever the operation.

echo: ``Content-Type`` (for S: ``X-Amzn-SageMaker-Content-Type``) is the request's (default
``application/octet-stream``); with S the body comes back as one PayloadPart.
``x-Amzn-Invoked-Production-Variant`` is the requested ``X-Amzn-SageMaker-Target-Variant`` or
``AllTraffic``; ``X-Amzn-SageMaker-Custom-Attributes`` comes back when sent. Sessions (NEW_SESSION,
joining, closing with the body ``{"close_session": true}``) are described in
:mod:`gateway.emulator.sessions`; they apply to every 200 of I and S. Two private headers a
gateway must not pass back to its caller are added to every success: ``X-Emulator-Private:
do-not-forward`` and ``Set-Cookie: emulator=1``. echo ignores TargetModel, InferenceComponentName
and EnableExplanations, so a test can send them anywhere and read them in the journal.

variants: the turn-taking counter is per app and only advances on calls without a TargetVariant.

model-error and model-timeout: the body has the service's fields, ``ErrorCode``,
``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn`` and ``Message`` (see
:func:`gateway.emulator.errors.model_error`); the timeout's message is the service's "Your
invocation timed out while waiting for a response from container primary. ..." wording.

multi-model: with no TargetModel the service's "Request <request id> is missing a target model
header." (as users have quoted it, cut short; the end is a guess).

throttle: InvokeEndpoint's throttling really carries no message; SDKs print ``None``/``null``.

Every wait is an ``await`` that ends early when the client goes away (the handler is cancelled) or
when the emulator shuts down (the wait then answers 503 ``ServiceUnavailable``, or, once a stream
has started, ends it with an ``InternalStreamFailure``).

To add a behaviour: write ``async def my_behaviour(call: Invocation) -> web.StreamResponse`` and
register it in ``_BY_NAME`` with the operations it answers (or in :func:`find_endpoint` for a name
pattern).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from gateway.emulator.answers import ModelOutput, deliver
from gateway.emulator.async_inference import accepted
from gateway.emulator.errors import (
    ACCOUNT_ID,
    CLIENT_ERROR_FROM_MODEL,
    SERVICE_UNAVAILABLE,
    THROTTLING,
    VALIDATION_ERROR,
    EmulatorError,
    endpoint_not_found,
    invalid_value,
    model_error,
    model_timeout_error,
    validation_error,
)
from gateway.emulator.explainer import explainer
from gateway.emulator.invocation import (
    INFERENCE_COMPONENT,
    INVOKE_ENDPOINT,
    INVOKE_ENDPOINT_ASYNC,
    INVOKE_ENDPOINT_WITH_RESPONSE_STREAM,
    TARGET_MODEL,
    TARGET_VARIANT,
    Behaviour,
    EmulatorState,
    Invocation,
    pause,
    reset_connection,
)
from gateway.emulator.streaming import find_stream

__all__ = ["EmulatorState", "Invocation", "find_endpoint", "resolve"]

DEFAULT_CONTENT_TYPE = "application/octet-stream"

# From botocore's sagemaker-runtime model (EndpointName).
ENDPOINT_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*"
ENDPOINT_NAME_MAX = 63
_ENDPOINT_NAME = re.compile(ENDPOINT_NAME_PATTERN)
_SLOW = re.compile(r"slow-(\d{1,9})")

MODEL_FAILURE_STATUS = 500
MODEL_FAILURE_MESSAGE = "Emulated model failure: the container answered HTTP 500."
UNAVAILABLE_MESSAGE = "The service is unavailable. Try your call again."
# The API reference's description of ModelNotReadyException.
NOT_READY_MESSAGE = (
    "Either a serverless endpoint variant's resources are still being provisioned, or a "
    "multi-model endpoint is still downloading or loading the target model. Wait and try your "
    "request again."
)
# The service's body for an inference-component endpoint called without a component, as a
# user's client printed it in full.
INFERENCE_COMPONENT_NAME_MISSING = "INFERENCE_COMPONENT_NAME_MISSING"
INFERENCE_COMPONENT_MISSING_MESSAGE = (
    "Inference Component Name header is required for endpoints to which you plan to deploy "
    "inference components. Please include Inference Component Name header or consider using "
    "SageMaker models."
)

SYNCHRONOUS = frozenset({INVOKE_ENDPOINT, INVOKE_ENDPOINT_WITH_RESPONSE_STREAM})
EVERY_OPERATION = SYNCHRONOUS | {INVOKE_ENDPOINT_ASYNC}
INVOKE_ONLY = frozenset({INVOKE_ENDPOINT})
ASYNC_ONLY = frozenset({INVOKE_ENDPOINT_ASYNC})


@dataclass(frozen=True)
class Endpoint:
    """An emulated endpoint: how it answers, and which operations it answers at all."""

    behaviour: Behaviour
    operations: frozenset[str]


def resolve(endpoint: str, operation: str = INVOKE_ENDPOINT) -> Behaviour:
    """The behaviour answering ``operation`` on an endpoint; a ValidationError like the service's
    if the name is invalid or unknown, or the endpoint does not answer that operation."""
    if len(endpoint) > ENDPOINT_NAME_MAX:
        raise invalid_value(
            "endpointName",
            endpoint,
            f"Member must have length less than or equal to {ENDPOINT_NAME_MAX}",
        )
    if not _ENDPOINT_NAME.fullmatch(endpoint):
        raise invalid_value(
            "endpointName",
            endpoint,
            f"Member must satisfy regular expression pattern: {ENDPOINT_NAME_PATTERN}",
        )
    found = find_endpoint(endpoint)
    if found is None:
        raise endpoint_not_found(endpoint)
    if operation not in found.operations:
        raise validation_error(
            f"Endpoint {endpoint} of account {ACCOUNT_ID} does not support {operation}."
        )
    return found.behaviour


def find_endpoint(endpoint: str) -> Endpoint | None:
    """The endpoint registered for a (valid) name, or None."""
    exact = _BY_NAME.get(endpoint)
    if exact is not None:
        return exact
    if endpoint.startswith("echo-"):
        return _BY_NAME["echo"]
    if endpoint.startswith("async-"):
        return _BY_NAME["async"]
    slow_match = _SLOW.fullmatch(endpoint)
    if slow_match:
        return Endpoint(functools.partial(slow, delay_ms=int(slow_match[1])), SYNCHRONOUS)
    streaming = find_stream(endpoint)
    if streaming is not None:
        return Endpoint(streaming, SYNCHRONOUS)
    return None


# ---------------------------------------------------------------------------------------------
# Behaviours
# ---------------------------------------------------------------------------------------------


async def echo(call: Invocation) -> web.StreamResponse:
    """200 with the request's body and content type, on the requested or default variant."""
    return await deliver(call, _echo_output(call, call.requested_variant()))


async def variants(call: Invocation) -> web.StreamResponse:
    """Like echo; without a TargetVariant, VariantA and VariantB take turns."""
    requested = call.header(TARGET_VARIANT)
    return await deliver(call, _echo_output(call, requested or next(call.state.variants)))


async def slow(call: Invocation, *, delay_ms: int | None = None) -> web.StreamResponse:
    """Like echo, after ``delay_ms`` (default: the settings' ``slow_default_ms``)."""
    wait_ms = call.settings.slow_default_ms if delay_ms is None else delay_ms
    await pause(call, wait_ms / 1000)
    return await echo(call)


async def async_endpoint(call: Invocation) -> web.StreamResponse:
    """202: the request is queued (nothing is ever run)."""
    return accepted(call)


async def multi_model(call: Invocation) -> web.StreamResponse:
    """The model asked for by TargetModel answers with its name; without one, a 400."""
    target_model = call.header(TARGET_MODEL)
    if target_model is None:
        raise validation_error(f"Request {call.request_id} is missing a target model header.")
    return await _json_answer(call, target_model=target_model)


async def components(call: Invocation) -> web.StreamResponse:
    """The inference component asked for answers with its name; without one, the service's 400."""
    component = call.header(INFERENCE_COMPONENT)
    if component is None:
        body = {
            "ErrorCode": INFERENCE_COMPONENT_NAME_MISSING,
            "Message": INFERENCE_COMPONENT_MISSING_MESSAGE,
        }
        raise EmulatorError(400, VALIDATION_ERROR, INFERENCE_COMPONENT_MISSING_MESSAGE, body=body)
    return await _json_answer(call, inference_component=component)


async def model_failure(call: Invocation) -> web.StreamResponse:
    """424 ModelError: the model container answered 500."""
    raise model_error(
        endpoint=call.endpoint,
        region=call.settings.region,
        original_status=MODEL_FAILURE_STATUS,
        original_message=MODEL_FAILURE_MESSAGE,
        error_code=CLIENT_ERROR_FROM_MODEL,
    )


async def model_timeout(call: Invocation) -> web.StreamResponse:
    """424 ModelError after ``model_timeout_s``: the container never answered."""
    await pause(call, call.settings.model_timeout_s)
    raise model_timeout_error(endpoint=call.endpoint, region=call.settings.region)


async def throttle(call: Invocation) -> web.StreamResponse:
    """400 ThrottlingException; the service sends it with a null message."""
    raise EmulatorError(400, THROTTLING, None)


async def unavailable(call: Invocation) -> web.StreamResponse:
    """503 ServiceUnavailable."""
    raise EmulatorError(503, SERVICE_UNAVAILABLE, UNAVAILABLE_MESSAGE)


async def not_ready(call: Invocation) -> web.StreamResponse:
    """429 ModelNotReadyException: the model is still being provisioned or loaded."""
    raise EmulatorError(429, "ModelNotReadyException", NOT_READY_MESSAGE)


async def reset(call: Invocation) -> web.StreamResponse:
    """Reset the connection without answering; the client sees a reset or a disconnect."""
    reset_connection(call)


async def hang(call: Invocation) -> web.StreamResponse:
    """Never answer; ends only when the client leaves (cancelled) or the emulator stops."""
    await pause(call, None)
    raise AssertionError("pause(None) returns only by raising")  # pragma: no cover


_BY_NAME: Mapping[str, Endpoint] = {
    "echo": Endpoint(echo, EVERY_OPERATION),
    "variants": Endpoint(variants, SYNCHRONOUS),
    "slow": Endpoint(slow, SYNCHRONOUS),
    "async": Endpoint(async_endpoint, ASYNC_ONLY),
    "explainer": Endpoint(explainer, INVOKE_ONLY),
    "multi-model": Endpoint(multi_model, INVOKE_ONLY),
    "components": Endpoint(components, SYNCHRONOUS),
    "model-error": Endpoint(model_failure, SYNCHRONOUS),
    "model-timeout": Endpoint(model_timeout, SYNCHRONOUS),
    "throttle": Endpoint(throttle, EVERY_OPERATION),
    "unavailable": Endpoint(unavailable, EVERY_OPERATION),
    "not-ready": Endpoint(not_ready, EVERY_OPERATION),
    "reset": Endpoint(reset, EVERY_OPERATION),
    "hang": Endpoint(hang, EVERY_OPERATION),
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _echo_output(call: Invocation, variant: str) -> ModelOutput:
    content_type = call.header("Content-Type") or DEFAULT_CONTENT_TYPE
    return ModelOutput(content_type=content_type, variant=variant, parts=[call.body])


async def _json_answer(call: Invocation, **fields: str) -> web.StreamResponse:
    # What a routed-to model answers: who it is, and a digest proving the body reached it whole.
    answer = {**fields, "body_sha256": hashlib.sha256(call.body).hexdigest()}
    body = json.dumps(answer).encode()
    return await deliver(call, ModelOutput("application/json", call.requested_variant(), [body]))
