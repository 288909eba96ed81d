"""Every failure the gateway itself can produce, and its one mapping to a SageMaker-shaped answer.

A caller's SDK decides which exception to raise from the status, the ``x-amzn-ErrorType``
header and the JSON ``message``; shaping our own errors like the service's means boto3 raises
``ValidationError``, ``ServiceUnavailable`` and so on with no gateway-specific handling.

    GatewayError              status  x-amzn-ErrorType            when
    ├── ValidationError         400   ValidationError             bad name, header, query, framing
    │   ├── PayloadTooLarge     413   ValidationError             body over max_body_bytes
    │   └── VersionNotSupported 505   ValidationError             HTTP version other than 1.0, 1.1
    ├── AccessDenied            403   AccessDeniedException       endpoint not allowed by config
    │   └── CallerForbidden     403   AccessDeniedException       ... or by the caller's policy
    ├── MissingToken            403   MissingAuthenticationToken- authentication configured, the
    │                                 Exception                   caller sent no token or cert
    ├── UnrecognizedClient      403   UnrecognizedClientException its token or certificate is
    │                                                             not valid
    ├── RequestTimeout          408   RequestTimeout              body not received in body_timeout
    ├── UnknownOperation        404   UnknownOperationException   no such route
    ├── MethodNotAllowed        405   UnknownOperationException   route exists, other method
    ├── Throttled               429   ThrottlingException         gateway at its concurrency cap
    │   └── CallerThrottled     429   ThrottlingException         caller over its rate or cap
    ├── ServiceUnavailable      503   ServiceUnavailable          upstream unreachable or reset,
    │                                                             no credentials, draining
    ├── GatewayTimeout          504   GatewayTimeout              upstream_timeout passed
    └── InternalFailure         500   InternalFailure             a bug in the gateway

Errors that come from SageMaker itself (ModelError 424 with its fields, ThrottlingException,
...) are not GatewayErrors: they pass through to the caller unchanged.
"""

from __future__ import annotations

import json
import os
from typing import ClassVar

REQUEST_ID_HEADER = "x-amzn-RequestId"
ERROR_TYPE_HEADER = "x-amzn-ErrorType"


class GatewayError(Exception):
    """A failure the gateway answers itself, before or instead of the upstream's answer."""

    status: int = 500
    #: A ClassVar: read through the class too (a compiled module may read only those so).
    error_type: ClassVar[str] = "InternalFailure"
    #: Label for ``rejected_requests_total{reason}``; set on errors raised before forwarding.
    reason: str = "internal"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class ValidationError(GatewayError):
    """The request breaks one of the API's rules; the message names the field and the rule."""

    status = 400
    error_type = "ValidationError"
    reason = "validation"


class PayloadTooLarge(ValidationError):
    """The body is larger than ``max_body_bytes``."""

    status = 413
    reason = "body_too_large"


class VersionNotSupported(ValidationError):
    """The request line names an HTTP version other than 1.0 and 1.1."""

    status = 505
    reason = "bad_http"


class AccessDenied(GatewayError):
    """The endpoint is not on the configured allowlist."""

    status = 403
    error_type = "AccessDeniedException"
    reason = "endpoint_not_allowed"


class CallerForbidden(AccessDenied):
    """The caller's policy does not allow this endpoint or operation."""

    reason = "forbidden"


class MissingToken(GatewayError):
    """Authentication is configured and the request carries neither a token nor a certificate."""

    status = 403
    error_type = "MissingAuthenticationTokenException"
    reason = "unauthenticated"


class UnrecognizedClient(GatewayError):
    """The caller's bearer token or client certificate does not prove who it is."""

    status = 403
    error_type = "UnrecognizedClientException"
    reason = "unauthenticated"


class RequestTimeout(GatewayError):
    """The client did not send its whole body within ``body_timeout_s``."""

    status = 408
    error_type = "RequestTimeout"
    reason = "body_timeout"


class UnknownOperation(GatewayError):
    """No operation lives at this path."""

    status = 404
    error_type = "UnknownOperationException"
    reason = "unknown_operation"


class MethodNotAllowed(GatewayError):
    """The path exists but not for this method."""

    status = 405
    error_type = "UnknownOperationException"
    reason = "method_not_allowed"

    def __init__(self, message: str, *, allowed: str) -> None:
        super().__init__(message)
        self.allowed = allowed


class Throttled(GatewayError):
    """The gateway is at its configured concurrency limit."""

    status = 429
    error_type = "ThrottlingException"
    reason = "concurrency_limit"


class CallerThrottled(Throttled):
    """The caller is over its policy's rate or at its cap on concurrent requests."""

    reason = "rate_limited"


class ServiceUnavailable(GatewayError):
    """The upstream cannot be reached, reset the connection, or no credentials can be had."""

    status = 503
    error_type = "ServiceUnavailable"
    reason = "unavailable"


class GatewayTimeout(GatewayError):
    """The upstream did not answer within ``upstream_timeout_s``."""

    status = 504
    error_type = "GatewayTimeout"
    reason = "timeout"


class InternalFailure(GatewayError):
    """A bug in the gateway: the caller gets a clean 500, the log gets the traceback."""


def error_answer(error: GatewayError, request_id: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The SageMaker-shaped answer for ``error``: status, ErrorType header, JSON message."""
    headers = [
        ("Content-Type", "application/json"),
        (ERROR_TYPE_HEADER, error.error_type),
        (REQUEST_ID_HEADER, request_id),
    ]
    if isinstance(error, MethodNotAllowed):
        headers.append(("Allow", error.allowed))
    return error.status, headers, json.dumps({"message": error.message}).encode()


class _RandomBytes:
    """os.urandom's bytes, read 4 KiB at a time: one getrandom(2) for 256 request ids rather
    than one each. A forked child starts with none (it must not repeat its parent's ids).
    Only the event loop's thread makes request ids, so no lock guards the pool."""

    CHUNK_BYTES = 4096
    pool = b""
    used = 0

    @classmethod
    def take16(cls) -> bytes:
        if cls.used + 16 > len(cls.pool):
            cls.pool, cls.used = os.urandom(cls.CHUNK_BYTES), 0
        cls.used += 16
        return cls.pool[cls.used - 16 : cls.used]

    @classmethod
    def forget(cls) -> None:
        cls.pool, cls.used = b"", 0


os.register_at_fork(after_in_child=_RandomBytes.forget)


def new_request_id() -> str:
    """A fresh request id, in the service's format: a random (version 4) UUID.

    Formatted here from 16 random bytes rather than by ``str(uuid.uuid4())``, which costs
    more than twice as much and runs for every request.
    """
    digits = _RandomBytes.take16().hex()
    variant = "89ab"[int(digits[16], 16) & 3]  # the RFC 4122 variant: binary 10xx
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"
