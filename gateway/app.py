"""The aiohttp application: routes, the error middleware, and what opens and closes with it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.config import Config
from gateway.connection import head_deadline_middleware
from gateway.credentials import CredentialSource, botocore_resolver
from gateway.errors import (
    GatewayError,
    InternalFailure,
    MethodNotAllowed,
    UnknownOperation,
    error_response,
    new_request_id,
)
from gateway.metrics import Metrics
from gateway.operations import load_operations
from gateway.proxy import GatewayState, Proxy
from gateway.upstream import make_upstream_pool
from gateway.validation import validate_framing

PROXY = web.AppKey("proxy", Proxy)
CREDENTIALS = web.AppKey("credentials", CredentialSource)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", GatewayState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(
    config: Config,
    *,
    registry: CollectorRegistry,
    credentials: CredentialSource | None = None,
    logger: structlog.typing.FilteringBoundLogger | None = None,
) -> web.Application:
    """The gateway for ``config``, its metrics on ``registry``.

    ``credentials`` defaults to botocore's chain, refreshed in the background while the app runs.
    """
    logger = logger or structlog.get_logger("gateway")
    credentials = credentials or CredentialSource(
        botocore_resolver(), check_interval_s=config.credential_check_interval_s
    )
    metrics = Metrics(
        registry,
        component_label=config.inference_component_label,
        multiprocess=multiprocess_dir() is not None,
        max_endpoint_labels=config.max_endpoint_labels,
    )
    state = GatewayState()
    proxy = Proxy(config, load_operations(), credentials, metrics, logger, state)

    # No client_max_size: the proxy reads bodies itself, to the operation's own limit.
    app = web.Application(middlewares=[head_deadline_middleware, error_middleware(logger)])
    app[PROXY] = proxy
    app[CREDENTIALS] = credentials
    app[METRICS] = metrics
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_route("*", "/endpoints/{tail:.*}", proxy.handle)
    app.cleanup_ctx.append(_credentials_ctx)
    app.cleanup_ctx.append(_upstream_pool_ctx)
    return app


def multiprocess_dir() -> str | None:
    """Where --workers processes keep their metric values (prometheus-client's convention)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def make_admin_app(app: web.Application) -> web.Application:
    """Health and metrics of ``app`` alone, for a listener that may face the pod network while
    the signing listener stays on loopback (probes and Prometheus reach it; callers cannot)."""
    admin = web.Application(middlewares=[error_middleware(app[PROXY].log)])
    admin[PROXY] = app[PROXY]
    admin[CREDENTIALS] = app[CREDENTIALS]
    admin[METRICS] = app[METRICS]
    admin[STATE] = app[STATE]
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics_view)
    return admin


def error_middleware(logger: structlog.typing.FilteringBoundLogger) -> Middleware:
    """Shape every error the app produces outside the proxy like the service's own."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            validate_framing(request.raw_path, request.raw_headers)
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            error: GatewayError = MethodNotAllowed(
                f"{request.path} takes {', '.join(sorted(exc.allowed_methods))}, "
                f"not {request.method}",
                allowed=", ".join(sorted(exc.allowed_methods)),
            )
        except web.HTTPNotFound:
            error = UnknownOperation(f"No operation matches {request.method} {request.path[:200]}")
        except GatewayError as exc:
            error = exc
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("unhandled_error", path=request.path[:200])
            return error_response(
                InternalFailure("The gateway failed to handle the request"), new_request_id()
            )
        request.app[METRICS].reject(error.reason)
        return error_response(error, new_request_id())

    return middleware


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving HTTP: always 200 once the listener is open."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when a request could be signed and forwarded now, else 503 with the reason."""
    if request.app[STATE].draining:
        return web.json_response({"status": "unavailable", "reason": "draining"}, status=503)
    if request.app[CREDENTIALS].current() is None:
        return web.json_response({"status": "unavailable", "reason": "no credentials"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics_view(request: web.Request) -> web.Response:
    """The Prometheus exposition of this app's registry, or of every worker's, summed."""
    if request.app[METRICS].multiprocess:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _credentials_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[CREDENTIALS].start()
    yield
    await app[CREDENTIALS].stop()


async def _upstream_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    proxy = app[PROXY]
    proxy.upstream = pool = make_upstream_pool(proxy.config)
    yield
    await pool.close()
