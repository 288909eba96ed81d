"""Run the gateway on its sockets, and stop it without dropping a request.

The shutdown steps happen in the order a rolling deploy needs (see :meth:`GatewayServer.stop`).
The HTTP protocol itself is :mod:`gateway.http.server`; ``--workers`` is :mod:`gateway.workers`.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
from collections.abc import Callable
from ssl import SSLContext

import structlog
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from gateway.app import Gateway, make_app
from gateway.config import Config, ConfigError
from gateway.http.server import ConnectionRegistry, Handler, RefusedConnection, ServerConnection
from gateway.log import configure_logging


class GatewayServer:
    """One gateway listening on its signing socket (and its admin socket, when configured)."""

    def __init__(self, app: Gateway, config: Config) -> None:
        self.app = app
        self.config = config
        self.log = structlog.get_logger("gateway")
        self._connections = ConnectionRegistry()
        self._admin_connections = ConnectionRegistry()
        self._listener: asyncio.Server | None = None
        self._admin_listener: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._listener is not None, "start() first"
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The signing listener's sockets."""
        assert self._listener is not None, "start() first"
        return self._listener.sockets

    @property
    def admin_port(self) -> int | None:
        """The admin listener's bound port, when there is one."""
        if self._admin_listener is None:
            return None
        return int(self._admin_listener.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client connections open now on the signing listener."""
        return len(self._connections.connections)

    async def start(self) -> None:
        """Start the gateway's background work and open the listeners."""
        await self.app.start()
        tls = self.app.tls
        self._listener = await self._listen(
            self.config.host,
            self.config.port,
            self._connections,
            self.app.handle,
            ssl=tls.listener_context if tls is not None else None,
        )
        if self.config.admin_port is not None:
            self._admin_listener = await self._listen(
                self.config.admin_host,
                self.config.admin_port,
                self._admin_connections,
                self.app.handle_admin,
            )

    async def _listen(
        self,
        host: str,
        port: int,
        registry: ConnectionRegistry,
        handler: Handler,
        ssl: SSLContext | None = None,
    ) -> asyncio.Server:
        config = self.config
        reject = self.app.metrics.reject

        def new_connection() -> asyncio.Protocol:
            if len(registry.connections) >= config.max_connections:
                return RefusedConnection(reject)
            return ServerConnection(
                registry,
                handler,
                self.app.render_http_error,
                head_timeout_s=config.head_timeout_s,
                keepalive_timeout_s=config.keepalive_timeout_s,
                on_reject=reject,
                log=self.app.log,
            )

        return await asyncio.get_running_loop().create_server(
            new_connection,
            host,
            port,
            reuse_address=True,
            reuse_port=config.workers > 1 or None,  # --workers share the port
            backlog=1024,
            ssl=ssl,
            # A handshake is part of the head's time: the same deadline bounds it.
            ssl_handshake_timeout=config.head_timeout_s if ssl is not None else None,
        )

    async def stop(self, *, grace_s: float | None = None) -> None:
        """Stop as a rolling deploy needs: every request accepted gets its answer."""
        grace_s = self.config.shutdown_grace_s if grace_s is None else grace_s
        # 1. Fail readiness at once so load balancers and the kubelet stop sending.
        self.app.state.draining = True
        self.log.info("draining", grace_s=grace_s, drain_timeout_s=self.config.drain_timeout_s)
        # 2. Keep taking requests while they notice (0 for a native sidecar, stopped last).
        if grace_s > 0:
            await asyncio.sleep(grace_s)
        # 3. Stop accepting connections.
        if self._listener is not None:
            self._listener.close()
        # 4. Close idle keep-alive connections now, and let in-flight requests finish (their
        #    connections close after the answer), up to drain_timeout.
        self._connections.close_idle()
        await self._connections.wait_closed(self.config.drain_timeout_s)
        # 5. Close the upstream pool and the credential refresher, and last the admin
        #    listener, which reported 503 on /readyz all along.
        await self.app.close()
        if self._admin_listener is not None:
            self._admin_listener.close()
            self._admin_connections.close_idle()
            await self._admin_connections.wait_closed(1.0)
        self.log.info("stopped")


def serve(config: Config) -> None:
    """Listen on config.host:config.port and serve until SIGINT or SIGTERM, then drain.

    With ``workers`` > 1 this process only supervises: it starts that many worker processes,
    which share the port (SO_REUSEPORT) and one metrics directory, passes SIGTERM on to them,
    replaces any that dies, and exits 0 once every worker has drained and exited 0.
    """
    configure_logging(config.log_level)
    if config.tls_cert_file or config.authentication or config.policy_file:
        from gateway.tenancy import check_caller_files

        try:  # a TLS, policy or JWKS file that does not load ends start-up like a bad option
            check_caller_files(config)
        except ConfigError as exc:
            print(f"sagemaker-gateway: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    if config.workers > 1:
        from gateway.workers import supervise

        raise SystemExit(supervise(config))
    serve_one(config)


def serve_one(config: Config) -> None:
    """One serving process (the whole gateway, or one of its workers)."""
    configure_logging(config.log_level)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(config))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed (a third less CPU per request here), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(config: Config) -> None:
    # The _created series double every counter's exposition and answer no on-call question.
    disable_created_metrics()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    server = GatewayServer(make_app(config, registry=registry), config)
    # Everything built so far (botocore's service model, the app) lives as long as the process:
    # keep it out of the cyclic collector's full passes, which otherwise show up as latency.
    gc.freeze()
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
    loop.add_signal_handler(signal.SIGHUP, server.app.reload)
    await stop.wait()
    await server.stop()
