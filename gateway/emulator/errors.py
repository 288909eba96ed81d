"""Errors shaped like the SageMaker runtime's: status, ``x-amzn-ErrorType``, JSON body.

Every error the emulator answers with is an :class:`EmulatorError` raised somewhere below the
middleware and turned into a response in exactly one place (:meth:`EmulatorError.to_response`).
The ``x-amzn-RequestId`` header is added to every response, errors or not, by the app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

#: The account every emulated endpoint belongs to (AWS's documentation example account).
ACCOUNT_ID = "123456789012"

VALIDATION_ERROR = "ValidationError"
MODEL_ERROR = "ModelError"
THROTTLING = "ThrottlingException"
SERVICE_UNAVAILABLE = "ServiceUnavailable"
UNKNOWN_OPERATION = "UnknownOperationException"
INTERNAL_FAILURE = "InternalFailure"

# ModelError's ErrorCode field is not in the public service model, and no public report quoted
# in full shows its values: these two are best guesses; the other fields follow the model.
CLIENT_ERROR_FROM_MODEL = "CLIENT_ERROR_FROM_MODEL"
INTERNAL_FAILURE_FROM_MODEL = "INTERNAL_FAILURE_FROM_MODEL"

# The service's words when the container does not answer within its 60 seconds, as users have
# reported them (it names the container ``primary``, or ``model`` on older endpoints).
MODEL_TIMEOUT_MESSAGE = (
    "Your invocation timed out while waiting for a response from container primary. "
    "Review the latency metrics for each container in Amazon CloudWatch, resolve the issue, "
    "and try again."
)


class EmulatorError(Exception):
    """An AWS-shaped error answer: status, ErrorType and body (``{"message": ...}`` by default)."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str | None,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.body: Mapping[str, Any] = body if body is not None else {"message": message}
        self.headers: Mapping[str, str] = headers or {}

    def to_response(self) -> web.Response:
        """The error as the service sends it."""
        return web.json_response(
            dict(self.body),
            status=self.status,
            headers={"x-amzn-ErrorType": self.error_type, **self.headers},
        )


def validation_error(message: str, *, status: int = 400) -> EmulatorError:
    """A ``ValidationError`` (400, or 413 for an oversized body)."""
    return EmulatorError(status, VALIDATION_ERROR, message)


def invalid_value(member: str, value: str | None, constraint: str) -> EmulatorError:
    """The service's ValidationError for one member that breaks one constraint of its model.

    ``member`` is the API member in lowerCamelCase, as the service names it (``endpointName``);
    a missing value reads ``Value null``.
    """
    shown = "null" if value is None else f"'{value}'"
    return validation_error(
        f"1 validation error detected: Value {shown} at '{member}' "
        f"failed to satisfy constraint: {constraint}"
    )


def endpoint_not_found(name: str) -> EmulatorError:
    """What the service answers for an endpoint the account does not have."""
    return validation_error(f"Endpoint {name} of account {ACCOUNT_ID} not found.")


def model_error(
    *,
    endpoint: str,
    region: str,
    original_status: int,
    original_message: str,
    error_code: str,
) -> EmulatorError:
    """424 ModelError: the model container failed; its status and body ride along.

    The ``Message`` follows the service's wording, e.g. ``Received server error (500) from primary
    with message "...". See https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=...
    #logEventViewer:group=/aws/sagemaker/Endpoints/<name> in account <id> for more information.``
    (a 4xx from the container reads "client error"; a timeout is "server error (0)").
    """
    log_group = f"/aws/sagemaker/Endpoints/{endpoint}"
    console = (
        f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
        f"#logEventViewer:group={log_group}"
    )
    kind = "client" if 400 <= original_status < 500 else "server"
    message = (
        f"Received {kind} error ({original_status}) from primary "
        f'with message "{original_message}". '
        f"See {console} in account {ACCOUNT_ID} for more information."
    )
    body = {
        "ErrorCode": error_code,
        "LogStreamArn": f"arn:aws:logs:{region}:{ACCOUNT_ID}:log-group:{log_group}",
        "Message": message,
        "OriginalMessage": original_message,
        "OriginalStatusCode": original_status,
    }
    return EmulatorError(424, MODEL_ERROR, message, body=body)


def model_timeout_error(*, endpoint: str, region: str) -> EmulatorError:
    """424 ModelError for the model's time limit: the container never answered (status 0)."""
    return model_error(
        endpoint=endpoint,
        region=region,
        original_status=0,
        original_message=MODEL_TIMEOUT_MESSAGE,
        error_code=INTERNAL_FAILURE_FROM_MODEL,
    )
