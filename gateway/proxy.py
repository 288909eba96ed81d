"""The request handler: route, validate, strip, sign, forward, stream back, record.

Each step is a call into a module with one job; this file only orders them and decides what
the caller sees when one of them fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from gateway.config import Config
from gateway.credentials import CredentialSource
from gateway.errors import (
    GatewayError,
    GatewayTimeout,
    MethodNotAllowed,
    ServiceUnavailable,
    UnknownOperation,
    ValidationError,
    error_response,
    new_request_id,
)
from gateway.headers import response_header_names, select_request_headers, select_response_headers
from gateway.log import access_fields
from gateway.metrics import Metrics, Outcome
from gateway.operations import Operation
from gateway.signing import Signer
from gateway.validation import (
    body_limit,
    body_too_large,
    validate_content_length,
    validate_endpoint_name,
)

VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"
TARGET_VARIANT_HEADER = "x-amzn-sagemaker-target-variant"
#: Error bodies are read whole (to recognise a model timeout); this bounds what we hold.
MAX_ERROR_BODY_BYTES = 1 << 20


class Proxy:
    """Forwards the runtime operations for one app: holds what every request shares."""

    def __init__(
        self,
        config: Config,
        operations: Mapping[str, Operation],
        credentials: CredentialSource,
        metrics: Metrics,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.config = config
        self.operations = operations
        self.credentials = credentials
        self.metrics = metrics
        self.log = logger
        self.signer = Signer(config.region, "sagemaker")
        self.session: aiohttp.ClientSession | None = None
        self._host = config.upstream_host
        self._response_headers = {
            suffix: response_header_names(op) for suffix, op in operations.items()
        }
        self._body_limits = {
            suffix: body_limit(op, config.max_body_bytes) for suffix, op in operations.items()
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request under ``/endpoints/``."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        request_id = new_request_id()
        try:
            suffix, endpoint = self._route(request)
        except GatewayError as error:
            self.metrics.reject(error.reason)
            self.log.info("request", request_id=request_id, status=error.status,
                          error=error.error_type, reason=error.reason)  # fmt: skip
            return error_response(error, request_id)

        operation = self.operations[suffix]
        outcome = Outcome(request_id=request_id, operation=operation.name, endpoint=endpoint)
        in_flight = self.metrics.in_flight.labels(endpoint)
        in_flight.inc()
        try:
            return await self._forward(request, suffix, operation, outcome)
        except GatewayError as error:
            outcome.status, outcome.error = error.status, error.error_type
            if outcome.upstream_duration_s is None:
                self.metrics.reject(error.reason)
            return error_response(error, outcome.request_id)
        finally:
            in_flight.dec()
            outcome.duration_s = loop.time() - started
            self.metrics.record(outcome)
            self.log.info("request", **access_fields(outcome))

    def _route(self, request: web.Request) -> tuple[str, str]:
        """The operation suffix and the validated endpoint name, read from the raw target."""
        raw_path, _, raw_query = request.raw_path.partition("?")
        parts = raw_path.split("/")
        if (
            len(parts) != 4
            or parts[0]
            or parts[1] != "endpoints"
            or parts[3] not in self.operations
        ):
            raise UnknownOperation(f"No operation matches {request.method} {raw_path[:200]}")
        operation = self.operations[parts[3]]
        if request.method != "POST":
            raise MethodNotAllowed(
                f"{operation.name} takes POST, not {request.method}", allowed="POST"
            )
        endpoint = validate_endpoint_name(parts[2], operation)
        if raw_query:
            raise ValidationError(
                f"{operation.name} takes no query parameters; the request had '?{raw_query[:100]}'",
                reason="query",
            )
        return parts[3], endpoint

    async def _forward(
        self, request: web.Request, suffix: str, operation: Operation, outcome: Outcome
    ) -> web.StreamResponse:
        headers = select_request_headers(operation, request.headers.items())
        requested_variant = next(
            (value for name, value in headers if name.lower() == TARGET_VARIANT_HEADER), None
        )
        if requested_variant:
            outcome.variant = requested_variant
        limit = self._body_limits[suffix]
        validate_content_length(request.content_length, limit)
        body = await _read_body(request.content, limit)
        outcome.request_bytes = len(body)

        credentials = self.credentials.current()
        if credentials is None:
            raise ServiceUnavailable(
                "The gateway has no AWS credentials to sign with; nothing was forwarded",
                reason="no_credentials",
            )
        headers.append(("Content-Length", str(len(body))))
        path = f"/endpoints/{outcome.endpoint}/{suffix}"
        signed = self.signer.sign(
            credentials, datetime.now(UTC), "POST", self._host, path, headers, body
        )
        url = URL(self.config.upstream_url + path, encoded=True)
        return await self._exchange(request, suffix, url, signed, body, outcome)

    async def _exchange(
        self,
        request: web.Request,
        suffix: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes,
        outcome: Outcome,
    ) -> web.StreamResponse:
        """Send the signed request and relay the answer, all inside upstream_timeout."""
        assert self.session is not None, "the client session opens with the app"
        loop = asyncio.get_running_loop()
        sent = loop.time()
        outcome.upstream_duration_s = 0.0  # from here on, the request counts as forwarded
        response: web.StreamResponse | None = None
        try:
            async with (
                asyncio.timeout(self.config.upstream_timeout_s),
                self.session.post(url, headers=headers, data=body, allow_redirects=False) as up,
            ):
                outcome.status = up.status
                outcome.error = _error_type(up.headers.get("x-amzn-ErrorType", ""))
                outcome.variant = up.headers.get(VARIANT_HEADER) or outcome.variant
                back = select_response_headers(self._response_headers[suffix], up.headers.items())
                if up.status >= 300:
                    payload = await up.content.read(MAX_ERROR_BODY_BYTES)
                    outcome.model_timeout = _is_model_timeout(up.status, outcome.error, payload)
                    outcome.response_bytes = len(payload)
                    return web.Response(status=up.status, body=payload, headers=back)
                response = web.StreamResponse(status=up.status, headers=back)
                if up.content_length is not None:
                    response.content_length = up.content_length
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    outcome.response_bytes += len(chunk)
                    await response.write(chunk)
                await response.write_eof()
                return response
        # ClientError first: aiohttp's connect timeout is both a ClientError and a TimeoutError,
        # and it means "unreachable" (503), not "too slow to answer" (504).
        except aiohttp.ClientError as exc:
            if response is None or not response.prepared:
                raise ServiceUnavailable(
                    f"SageMaker could not be reached: {_describe(exc)}", reason="upstream"
                ) from None
            outcome.error = "UpstreamInterrupted"
            raise  # the status line is gone: aiohttp closes the connection, the caller sees it cut
        except TimeoutError:
            if response is None or not response.prepared:
                raise GatewayTimeout(
                    f"SageMaker did not answer within {self.config.upstream_timeout_s:g} s "
                    "(upstream_timeout)"
                ) from None
            outcome.error = GatewayTimeout.error_type
            raise
        finally:
            outcome.upstream_duration_s = loop.time() - sent


async def _read_body(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body (SigV4 signs its hash), refused as soon as it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.readany():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _error_type(header: str) -> str:
    """The error code from ``x-amzn-ErrorType``, which may carry ``:<url>`` after it."""
    return header.partition(":")[0].strip()


def _is_model_timeout(status: int, error_type: str, payload: bytes) -> bool:
    """Whether a ModelError reports the model's own time limit (OriginalStatusCode 0)."""
    if status != 424 or error_type != "ModelError":
        return False
    try:
        fields = json.loads(payload)
    except ValueError:
        return False
    if not isinstance(fields, dict) or fields.get("OriginalStatusCode") not in (0, "0"):
        return False
    message = " ".join(
        str(fields.get(key, "")) for key in ("Message", "message", "OriginalMessage")
    )
    return "timed out" in message.lower()


def _describe(exc: aiohttp.ClientError) -> str:
    """A short reason for an upstream failure, without request details."""
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "connection timed out (connect_timeout)"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before an answer"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed ({exc.os_error.strerror or type(exc.os_error).__name__})"
    return type(exc).__name__
