"""The request handler: route, validate, strip, sign, forward, stream back, record.

Each step is a call into a module with one job; this file only orders them and decides what
the caller sees when one of them fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from gateway.config import Config
from gateway.credentials import CredentialSource
from gateway.errors import (
    AccessDenied,
    GatewayError,
    GatewayTimeout,
    MethodNotAllowed,
    RequestTimeout,
    ServiceUnavailable,
    Throttled,
    UnknownOperation,
    ValidationError,
    error_answer,
    new_request_id,
)
from gateway.failover import Clock, Failover, Route, Upstream
from gateway.headers import response_header_names, select_request_headers, select_response_headers
from gateway.http.body import BodyBroken, BodyTimedOut, BodyTooLarge
from gateway.http.client import UpstreamError, UpstreamPool, UpstreamResponse
from gateway.http.clock import TaskTimeout
from gateway.http.server import Request, Response
from gateway.log import access_fields
from gateway.metrics import CALLER_LEFT, IDLE_TIMEOUT, UPSTREAM_CUT, Metrics, Outcome
from gateway.operations import Operation
from gateway.retry import RetryBudget, backoff_s, is_connect_failure, is_throttled
from gateway.signing import Signer
from gateway.streams import StreamMeter
from gateway.validation import (
    body_limit,
    body_too_large,
    validate_content_length,
    validate_endpoint_name,
)

if TYPE_CHECKING:  # imported only when callers are configured (it brings in PyJWT)
    from gateway.policy import Caller
    from gateway.tenancy import Tenancy

VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"
VARIANT_HEADER_LOWER = VARIANT_HEADER.lower()
TARGET_VARIANT_HEADER = "x-amzn-sagemaker-target-variant"
COMPONENT_HEADER = "x-amzn-sagemaker-inference-component"
STREAM_SUFFIX = "invocations-response-stream"
#: Names the target that answered, only with failover_header on (SDKs must see no difference).
TARGET_HEADER = "x-smgw-target"
#: Error bodies are read whole (to recognise a model timeout); this bounds what we hold.
MAX_ERROR_BODY_BYTES = 1 << 20


@dataclass
class GatewayState:
    """What changes while the app runs and every request may look at."""

    draining: bool = False
    in_flight: int = 0


class Proxy:
    """Forwards the runtime operations for one app: holds what every request shares."""

    def __init__(
        self,
        config: Config,
        operations: Mapping[str, Operation],
        credentials: CredentialSource,
        upstream: UpstreamPool,
        metrics: Metrics,
        logger: structlog.typing.FilteringBoundLogger,
        state: GatewayState,
        tenancy: Tenancy | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        """``clock`` times the failover circuit breakers (tests move one by hand)."""
        self.config = config
        self.operations = operations
        self.credentials = credentials
        self.upstream = upstream
        self.metrics = metrics
        self.log = logger
        self.state = state
        #: Who may call what (DESIGN section 8); None, and never consulted, when not configured.
        self.tenancy = tenancy
        self.signer = Signer(config.region, "sagemaker")
        self.retry_budget = RetryBudget()
        self._host = config.upstream_host
        self._home = Upstream(self.signer, self._host, upstream)
        #: None without fallbacks: then no request does any failover work.
        self.failover = (
            Failover(config, self._home, metrics, self.retry_budget, clock)
            if config.fallbacks
            else None
        )
        self._response_headers = {
            suffix: response_header_names(op) for suffix, op in operations.items()
        }
        self._body_limits = {
            suffix: body_limit(op, config.max_body_bytes) for suffix, op in operations.items()
        }

    async def handle(self, request: Request, response: Response) -> None:
        """Answer one request under ``/endpoints/``."""
        # Durations by perf_counter: uvloop's loop.time() moves in whole milliseconds.
        started = time.perf_counter()
        request_id = new_request_id()
        caller: Caller | None = None
        try:
            if self.tenancy is not None:  # who is calling comes first, as with AWS
                caller = await self.tenancy.identify(request)
            suffix, endpoint = self._route(request)
        except GatewayError as error:
            self.metrics.reject(error.reason)
            self.log.info("request", request_id=request_id, status=error.status,
                          error=error.error_type, reason=error.reason)  # fmt: skip
            response.send(*error_answer(error, request_id))
            return

        operation = self.operations[suffix]
        outcome = Outcome(
            request_id=request_id, operation=operation.name, endpoint=endpoint, arrived_at=started
        )
        in_flight = self.metrics.in_flight_for(endpoint)
        in_flight.inc()
        self.state.in_flight += 1
        release = None
        cancelled = False
        try:
            if self.state.in_flight > self.config.max_concurrent_requests:
                raise Throttled(
                    f"The gateway is handling {self.config.max_concurrent_requests} requests "
                    "(max_concurrent_requests); retry with backoff"
                )
            if caller is not None:
                assert self.tenancy is not None
                outcome.caller, outcome.caller_identity = caller.label, caller.identity
                release = self.tenancy.admit(caller, endpoint, operation.name)
            await self._forward(request, response, suffix, operation, outcome)
        except GatewayError as error:
            outcome.status, outcome.error = error.status, error.error_type
            if outcome.upstream_duration_s is None:
                self.metrics.reject(error.reason)
            # (A body refused unread closes the connection after this answer.)
            response.send(*error_answer(error, outcome.request_id))
        except asyncio.CancelledError:
            # The caller went away (the connection cancels the handler): nginx's 499, so the
            # request is not counted as a success with no status.
            outcome.status, outcome.error = 499, "ClientClosedRequest"
            cancelled = True
            raise
        finally:
            try:
                if response.finished and not cancelled:
                    # The answer goes out before the bookkeeping below rather than after it:
                    # at one connection the caller has it that much sooner (bench/README.md).
                    # This process serves nothing else before the request is recorded (the
                    # same step of its loop), but a scrape served by another --workers
                    # process, or a thread reading the registry, may not count it yet.
                    response.flush()
            finally:
                if release is not None:
                    release()
                self.state.in_flight -= 1
                in_flight.dec()
                outcome.duration_s = time.perf_counter() - started
                self.metrics.record(outcome)
                self.log.info("request", **access_fields(outcome))

    def _route(self, request: Request) -> tuple[str, str]:
        """The operation suffix and the validated endpoint name, read from the raw target."""
        raw_path, _, raw_query = request.target.partition("?")
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
        allowed = self.config.allowed_endpoints
        if allowed and not any(fnmatch.fnmatchcase(endpoint, pattern) for pattern in allowed):
            raise AccessDenied(f"Endpoint {endpoint} is not among this gateway's allowed_endpoints")
        return parts[3], endpoint

    async def _forward(
        self,
        request: Request,
        response: Response,
        suffix: str,
        operation: Operation,
        outcome: Outcome,
    ) -> None:
        headers = select_request_headers(operation, request.headers)
        for name, value in headers:
            lower = name.lower()
            if lower == TARGET_VARIANT_HEADER:
                outcome.variant = value or outcome.variant
            elif lower == COMPONENT_HEADER:
                outcome.inference_component = value
        limit = self._body_limits[suffix]
        validate_content_length(request.content_length, limit)
        try:
            body = await request.body.read(limit, self.config.body_timeout_s)
        except BodyTooLarge:
            raise body_too_large(limit) from None
        except BodyTimedOut:
            raise RequestTimeout(
                f"The request body did not arrive within {self.config.body_timeout_s:g} s "
                "(body_timeout)"
            ) from None
        except BodyBroken as exc:
            raise ValidationError(
                f"The request is not valid HTTP/1.1: {exc}", reason="bad_http"
            ) from None
        outcome.request_bytes = len(body)
        if self.credentials.current() is None:
            await self.credentials.wait_first_attempt(self.config.connect_timeout_s)
        if self.credentials.current() is None:
            raise ServiceUnavailable(
                "The gateway has no valid AWS credentials to sign with; nothing was forwarded",
                reason="no_credentials",
            )
        headers.append(("Content-Length", str(len(body))))
        await self._exchange(response, suffix, headers, body, outcome)

    async def _exchange(
        self,
        response: Response,
        suffix: str,
        headers: list[tuple[str, str]],
        body: bytes,
        outcome: Outcome,
    ) -> None:
        """Sign and send, retrying where safe, then relay the answer, all within the deadline.

        For a response stream the deadline covers the wait for the answer to start; after
        that, each part must follow the last within ``stream_idle_timeout``.
        """
        path = f"/endpoints/{outcome.endpoint}/{suffix}"
        sent = time.perf_counter()
        outcome.upstream_duration_s = 0.0  # from here on, the request counts as forwarded
        self.retry_budget.record_request()
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        try:
            upstream_by = loop.time() + self.config.upstream_timeout_s
            async with TaskTimeout(loop, task, upstream_by) as deadline:
                chain = self.failover.chain(outcome.endpoint) if self.failover else None
                if chain is None:
                    up = await self._send(self._home, path, headers, body, deadline)
                else:
                    up = await self._fail_over(chain, suffix, headers, body, outcome, deadline)
                with up:
                    outcome.status = up.status
                    outcome.error = _error_type(up.header("x-amzn-errortype") or "")
                    confirmed_variant = up.header(VARIANT_HEADER_LOWER)
                    if confirmed_variant:
                        outcome.variant, outcome.variant_confirmed = confirmed_variant, True
                    outcome.upstream_request_id = up.header("x-amzn-requestid")
                    back = select_response_headers(self._response_headers[suffix], up.headers)
                    if outcome.target and self.config.failover_header:
                        back.append((TARGET_HEADER, outcome.target))
                    if suffix == STREAM_SUFFIX and up.status < 300:
                        response.start(up.status, back, up.content_length)
                        await self._relay_stream(up, response, outcome, deadline)
                        response.finish()
                        return
                    whole = up.body.take_whole()
                    if whole is None and up.status >= 300:
                        # Read whole to recognise a model timeout; a larger one is relayed.
                        with contextlib.suppress(BodyTooLarge):
                            whole = await up.body.read(MAX_ERROR_BODY_BYTES)
                    if whole is not None:  # one write for the head and the body
                        outcome.model_timeout = _is_model_timeout(up.status, outcome.error, whole)
                        outcome.response_bytes = len(whole)
                        response.send(up.status, back, whole)
                        return
                    response.start(up.status, back, up.content_length)
                    while chunk := await up.body.read_chunk():
                        outcome.response_bytes += len(chunk)
                        await response.write(chunk)
                    response.finish()
        # The connect timeout is an UpstreamError, not a TimeoutError: it means "unreachable"
        # (503), not "too slow to answer" (504).
        except UpstreamError as exc:
            if not response.started:
                raise ServiceUnavailable(
                    f"SageMaker could not be reached: {exc}", reason="upstream"
                ) from None
            outcome.error = "UpstreamInterrupted"
            response.abort()  # the status line is gone: the caller sees the answer cut
        except TimeoutError:
            if not response.started:
                raise GatewayTimeout(
                    f"SageMaker did not answer within {self.config.upstream_timeout_s:g} s "
                    "(upstream_timeout)"
                ) from None
            outcome.error = GatewayTimeout.error_type
            response.abort()
        finally:
            outcome.upstream_duration_s = time.perf_counter() - sent

    async def _fail_over(
        self,
        chain: tuple[Route, ...],
        suffix: str,
        headers: list[tuple[str, str]],
        body: bytes,
        outcome: Outcome,
        deadline: TaskTimeout,
    ) -> UpstreamResponse:
        """Send along the endpoint's targets (gateway.failover); note the one that answered."""
        assert self.failover is not None

        def send_one(upstream: Upstream, path: str) -> Awaitable[UpstreamResponse]:
            return self._send(upstream, path, headers, body, deadline)

        route, up = await self.failover.send(chain, outcome.endpoint, suffix, send_one)
        outcome.target = route.label
        self.metrics.answered_by(outcome.endpoint, route.label)
        return up

    async def _send(
        self,
        upstream: Upstream,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        deadline: TaskTimeout,
    ) -> UpstreamResponse:
        """POST the signed request to ``upstream``; retry a failed connect or throttling while
        budget and deadline allow (a retry that could not finish in time is not started)."""
        retries = 0
        while True:
            credentials = self.credentials.current()
            if credentials is None:
                raise ServiceUnavailable(
                    "The gateway's AWS credentials expired; nothing was forwarded",
                    reason="no_credentials",
                )
            signer, host = upstream.signer, upstream.host
            signed = signer.sign(credentials, None, "POST", host, path, headers, body)
            delay_s = None
            try:
                up = await upstream.pool.request("POST", path, signed, body)
            except UpstreamError as exc:
                if is_connect_failure(exc):
                    delay_s = self._retry_delay(retries, deadline)
                if delay_s is None:
                    raise
            else:
                # (Only an error can be throttling: the success path looks at nothing more.)
                if up.status >= 400 and is_throttled(
                    up.status, _error_type(up.header("x-amzn-errortype") or "")
                ):
                    delay_s = self._retry_delay(retries, deadline)
                if delay_s is None:
                    return up
                up.release()
            retries += 1
            await asyncio.sleep(delay_s)

    def _retry_delay(self, retries: int, deadline: TaskTimeout) -> float | None:
        """The backoff before one more retry, or None: none is left (``max_retries``, the
        budget), or it could not finish before the deadline."""
        if retries >= self.config.max_retries:
            return None
        delay_s = backoff_s(retries + 1)
        deadline_at = deadline.when()
        if deadline_at is not None and asyncio.get_running_loop().time() + delay_s >= deadline_at:
            return None
        return delay_s if self.retry_budget.try_spend() else None

    async def _relay_stream(
        self,
        up: UpstreamResponse,
        response: Response,
        outcome: Outcome,
        deadline: TaskTimeout,
    ) -> None:
        """Relay an event stream part by part as it arrives, counting its parts and noting
        how it ends (an exception message inside it, or how it was cut short).

        The first part must come within the deadline of the whole exchange
        (``upstream_timeout``); each later piece within ``stream_idle_timeout`` of the last.
        """
        loop = asyncio.get_running_loop()
        meter = StreamMeter(outcome, self.metrics.stream_series(outcome))
        try:
            while chunk := await up.body.read_chunk():
                deadline.reschedule(loop.time() + self.config.stream_idle_timeout_s)
                relayed_at = time.perf_counter()
                outcome.response_bytes += len(chunk)
                await response.write(chunk)
                meter.relayed(chunk, relayed_at)
        except asyncio.CancelledError:
            # The deadline cancels the task as the caller's leaving does; only it is expired.
            meter.finish(IDLE_TIMEOUT if deadline.expired() else CALLER_LEFT)
            raise
        except UpstreamError:
            meter.finish(UPSTREAM_CUT)
            raise
        meter.finish()


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
