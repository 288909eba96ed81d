"""The gateway's routes, what they share, and what opens and closes with them."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.config import Config
from gateway.credentials import CredentialSource, botocore_resolver
from gateway.errors import (
    GatewayError,
    InternalFailure,
    MethodNotAllowed,
    UnknownOperation,
    ValidationError,
    VersionNotSupported,
    error_answer,
    new_request_id,
)
from gateway.failover import Clock
from gateway.http.client import UpstreamPool
from gateway.http.server import HttpError, Request, Response
from gateway.metrics import Metrics
from gateway.openapi import document_bytes
from gateway.operations import load_operations
from gateway.proxy import GatewayState, Proxy
from gateway.validation import validate_framing

if TYPE_CHECKING:  # imported only when TLS or callers are configured (they bring in PyJWT)
    from gateway.tenancy import Reloads
    from gateway.tls import ServerTls

ENDPOINTS_PREFIX = "/endpoints/"


class Gateway:
    """One gateway: its proxy, credentials, metrics and state, and the routes over them."""

    def __init__(
        self,
        config: Config,
        proxy: Proxy,
        credentials: CredentialSource,
        metrics: Metrics,
        state: GatewayState,
        openapi: bytes,
        tls: ServerTls | None = None,
        reloads: Reloads | None = None,
    ) -> None:
        self.config = config
        self.proxy = proxy
        #: The signing listener's TLS (None: plain HTTP), and what reports its reloads.
        self.tls = tls
        self.reloads = reloads
        self._tls_watch: asyncio.Task[None] | None = None
        self.credentials = credentials
        self.metrics = metrics
        self.state = state
        self.log = proxy.log
        #: The OpenAPI description of the routes, made once at start-up.
        self.openapi = openapi
        #: The read-only routes, on the signing listener and on the admin listener alike.
        self.views = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/metrics": self.metrics_view,
            "/openapi.json": self.openapi_view,
        }

    async def start(self) -> None:
        """Begin resolving credentials (the upstream pool opens connections as it needs them),
        fetching token keys and watching the TLS files, when configured."""
        await self.credentials.start()
        if self.proxy.tenancy is not None:
            await self.proxy.tenancy.start()
        if self.tls is not None and self.reloads is not None:
            self._tls_watch = asyncio.get_running_loop().create_task(
                self.reloads.watch_tls(self.tls, self.config.tls_reload_interval_s)
            )

    async def close(self) -> None:
        """Close the upstream pool and stop the credential refresher and the watchers."""
        await self.proxy.upstream.close()
        if self.proxy.failover is not None:
            await self.proxy.failover.close()
        await self.credentials.stop()
        if self._tls_watch is not None:
            self._tls_watch.cancel()
        if self.proxy.tenancy is not None:
            await self.proxy.tenancy.stop()

    def reload(self) -> None:
        """SIGHUP: the policy, the JWKS and the TLS files again; each that does not load keeps
        what was loaded before (one error line each)."""
        if self.proxy.tenancy is not None:
            self.proxy.tenancy.reload()
        if self.tls is not None and self.reloads is not None:
            self.reloads.reload_tls(self.tls)
        self.log.info("reloaded")

    def handle(self, request: Request, response: Response) -> Awaitable[None] | None:
        """The signing listener: the runtime's operations (the proxy's coroutine, awaited by
        the connection: one frame fewer per request), health and metrics (answered at once)."""
        if not self._framing_ok(request, response):
            return None
        if request.target.startswith(ENDPOINTS_PREFIX):
            return self.proxy.handle(request, response)
        self._serve_view(request, response)
        return None

    def handle_admin(self, request: Request, response: Response) -> None:
        """The admin listener: health and metrics only; nothing is ever forwarded from it."""
        if self._framing_ok(request, response):
            self._serve_view(request, response)

    def _framing_ok(self, request: Request, response: Response) -> bool:
        """Whether the target and header bytes are what a SageMaker client sends (else 400),
        and the method one that is not asking for a tunnel (405)."""
        try:
            if request.method == "CONNECT":
                raise MethodNotAllowed(
                    "CONNECT is not supported: the gateway is not a forward proxy",
                    allowed="GET, HEAD, POST",
                )
            validate_framing(request.target, request.raw_headers)
        except GatewayError as error:
            self._refuse(error, response)
            return False
        return True

    def _serve_view(self, request: Request, response: Response) -> None:
        """Answer a health or metrics request, or say that nothing lives at the target."""
        path = request.target.partition("?")[0]
        view = self.views.get(path)
        if view is None:
            error: GatewayError = UnknownOperation(
                f"No operation matches {request.method} {path[:200]}"
            )
        elif request.method not in ("GET", "HEAD"):
            error = MethodNotAllowed(
                f"{path} takes GET, HEAD, not {request.method}", allowed="GET, HEAD"
            )
        else:
            view(response)
            return
        self._refuse(error, response)

    def render_http_error(self, response: Response, error: HttpError) -> None:
        """The SageMaker-shaped answer to what the HTTP layer refused (counted as bad_http),
        or to a handler that failed."""
        if error.status == 500:
            answer: GatewayError = InternalFailure("The gateway failed to handle the request")
        else:
            self.metrics.reject("bad_http")
            printable = "".join(ch if " " <= ch <= "~" else "?" for ch in error.reason)[:200]
            message = f"The request is not valid HTTP/1.1: {printable}"
            answer = (VersionNotSupported if error.status == 505 else ValidationError)(message)
        response.send(*error_answer(answer, new_request_id()))

    def healthz(self, response: Response) -> None:
        """The process is up and serving HTTP: always 200 once the listener is open."""
        _send_json(response, 200, {"status": "ok"})

    def readyz(self, response: Response) -> None:
        """200 when a request could be signed and forwarded now, else 503 with the reason."""
        if self.state.draining:
            _send_json(response, 503, {"status": "unavailable", "reason": "draining"})
        elif self.credentials.current() is None:
            _send_json(response, 503, {"status": "unavailable", "reason": "no credentials"})
        elif self.proxy.tenancy is not None and not self.proxy.tenancy.ready():
            _send_json(response, 503, {"status": "unavailable", "reason": "no token keys"})
        else:
            _send_json(response, 200, {"status": "ready"})

    def metrics_view(self, response: Response) -> None:
        """The Prometheus exposition of this gateway's registry, or of every worker's, summed."""
        if self.metrics.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            body = generate_latest(registry)
        else:
            body = generate_latest(self.metrics.registry)
        response.send(200, [("Content-Type", CONTENT_TYPE_LATEST)], body)

    def openapi_view(self, response: Response) -> None:
        """The OpenAPI 3.1 description of this gateway, generated from botocore's model."""
        response.send(200, [("Content-Type", "application/json")], self.openapi)

    def _refuse(self, error: GatewayError, response: Response) -> None:
        self.metrics.reject(error.reason)
        response.send(*error_answer(error, new_request_id()))


def _send_json(response: Response, status: int, fields: dict[str, str]) -> None:
    response.send(status, [("Content-Type", "application/json")], json.dumps(fields).encode())


def make_app(
    config: Config,
    *,
    registry: CollectorRegistry,
    credentials: CredentialSource | None = None,
    logger: structlog.typing.FilteringBoundLogger | None = None,
    clock: Clock = time.monotonic,
) -> Gateway:
    """The gateway for ``config``, its metrics on ``registry``; ``clock`` times the failover
    circuit breakers, the callers' token buckets and the age of fetched token keys.

    ``credentials`` defaults to botocore's chain, refreshed in the background while it runs.
    Raises ConfigError when a TLS, policy or JWKS file does not load.
    """
    logger = logger or structlog.get_logger("gateway")
    credentials = credentials or CredentialSource(
        botocore_resolver(), check_interval_s=config.credential_check_interval_s
    )
    tenancy_on = config.authentication or bool(config.policy_file)
    metrics = Metrics(
        registry,
        component_label=config.inference_component_label,
        multiprocess=multiprocess_dir() is not None,
        max_endpoint_labels=config.max_endpoint_labels,
        caller_label=tenancy_on,
    )
    tls = reloads = tenancy = None
    if config.tls_cert_file or tenancy_on:
        from gateway.tenancy import Reloads, Tenancy, server_tls

        tls = server_tls(config)
        reloads = Reloads(registry, logger)
        if tls is not None:
            reloads.report("tls", None)
        if tenancy_on:
            tenancy = Tenancy(config, reloads, clock)
    state = GatewayState()
    upstream = UpstreamPool(
        config.upstream_url,
        max_connections=config.upstream_pool_size,
        connect_timeout_s=config.connect_timeout_s,
    )
    operations = load_operations()
    proxy = Proxy(
        config, operations, credentials, upstream, metrics, logger, state, tenancy, clock=clock
    )
    document = document_bytes(config, operations)
    return Gateway(config, proxy, credentials, metrics, state, document, tls, reloads)


def multiprocess_dir() -> str | None:
    """Where --workers processes keep their metric values (prometheus-client's convention)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
