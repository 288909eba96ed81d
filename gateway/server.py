"""Run the gateway app on a socket until a signal stops it."""

from __future__ import annotations

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from gateway.app import make_app
from gateway.config import Config
from gateway.log import configure_logging


def serve(config: Config) -> None:
    """Listen on config.host:config.port and serve until SIGINT or SIGTERM."""
    configure_logging(config.log_level)
    log = structlog.get_logger("gateway")
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    app = make_app(config, registry=registry, logger=log)
    log.info(
        "listening",
        host=config.host,
        port=config.port,
        region=config.region,
        upstream=config.upstream_url,
    )
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        access_log=None,  # our own access line carries the fields that matter, and no secrets
        print=None,
        handler_cancellation=True,  # a caller that goes away cancels its upstream request
        shutdown_timeout=10.0,
    )
