"""Run the gateway app on a socket, and stop it without dropping a request.

The listener is ours rather than aiohttp's ``TCPSite`` so that every connection gets
:class:`gateway.connection.GatewayRequestHandler` (head deadline, connection cap) and so that
the shutdown steps happen in the order a rolling deploy needs.
"""

from __future__ import annotations

import asyncio
import signal
import socket

import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from gateway.app import METRICS, STATE, make_admin_app, make_app
from gateway.config import Config
from gateway.connection import GatewayRequestHandler, RefusedConnection
from gateway.log import configure_logging


class GatewayServer:
    """One gateway app listening on one socket."""

    def __init__(self, app: web.Application, config: Config) -> None:
        self.app = app
        self.config = config
        self.log = structlog.get_logger("gateway")
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self._listener: asyncio.Server | None = None
        self._admin: web.AppRunner | None = None
        if config.admin_port is not None:
            # Serves three GET routes; aiohttp's idle deadline doubles as its head deadline.
            self._admin = web.AppRunner(
                make_admin_app(app), access_log=None, keepalive_timeout=config.head_timeout_s
            )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._listener is not None, "start() first"
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        server = self._runner.server
        return 0 if server is None else len(server.connections)

    async def start(self) -> None:
        """Run the app's start-up and open the listener."""
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._new_connection,
            self.config.host,
            self.config.port,
            reuse_address=True,
            backlog=1024,
        )
        if self._admin is not None:
            await self._admin.setup()
            admin_site = web.TCPSite(self._admin, self.config.admin_host, self.config.admin_port)
            await admin_site.start()

    @property
    def admin_port(self) -> int | None:
        """The admin listener's bound port, when there is one."""
        if self._admin is None:
            return None
        return int(self._admin.addresses[0][1])

    def _new_connection(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        reject = self.app[METRICS].reject
        if self.open_connections >= self.config.max_connections:
            return RefusedConnection(reject)
        return GatewayRequestHandler(
            server,
            loop=asyncio.get_running_loop(),
            head_timeout_s=self.config.head_timeout_s,
            on_reject=reject,
            keepalive_timeout=self.config.keepalive_timeout_s,
            access_log=None,  # our own access line carries what matters, and no secrets
        )

    async def stop(self, *, grace_s: float | None = None) -> None:
        """Stop as a rolling deploy needs: every request accepted gets its answer."""
        grace_s = self.config.shutdown_grace_s if grace_s is None else grace_s
        # 1. Fail readiness at once so load balancers and the kubelet stop sending.
        self.app[STATE].draining = True
        self.log.info("draining", grace_s=grace_s, drain_timeout_s=self.config.drain_timeout_s)
        # 2. Keep taking requests while they notice (0 for a native sidecar, stopped last).
        if grace_s > 0:
            await asyncio.sleep(grace_s)
        # 3. Stop accepting connections.
        if self._listener is not None:
            self._listener.close()
        # 4. Close idle keep-alive connections now, and let in-flight requests finish (their
        #    connections close after the answer), up to drain_timeout.
        server = self._runner.server
        if server is not None:
            server.pre_shutdown()
            await server.shutdown(self.config.drain_timeout_s)
        # 5. Close the upstream pool and the credential refresher (the app's cleanup), and
        #    last the admin listener, which reported 503 on /readyz all along.
        await self._runner.cleanup()
        if self._admin is not None:
            await self._admin.cleanup()
        self.log.info("stopped")


def serve(config: Config) -> None:
    """Listen on config.host:config.port and serve until SIGINT or SIGTERM, then drain."""
    configure_logging(config.log_level)
    asyncio.run(_serve(config))


async def _serve(config: Config) -> None:
    # The _created series double every counter's exposition and answer no on-call question.
    disable_created_metrics()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    server = GatewayServer(make_app(config, registry=registry), config)
    try:
        await server.start()
    except OSError as exc:
        server.log.error("cannot_listen", host=config.host, port=config.port, error=str(exc))
        raise SystemExit(1) from None
    server.log.info(
        "listening",
        host=config.host,
        port=server.port,
        region=config.region,
        upstream=config.upstream_url,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for the demo and tests)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
