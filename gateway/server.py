"""Run the gateway app on a socket, and stop it without dropping a request.

The listener is ours rather than aiohttp's ``TCPSite`` so that every connection gets
:class:`gateway.connection.GatewayRequestHandler` (head deadline, connection cap) and so that
the shutdown steps happen in the order a rolling deploy needs.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable

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

#: A worker that keeps dying is not restarted forever: the supervisor then runs on with fewer.
MAX_WORKER_RESTARTS = 10


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
            reuse_port=self.config.workers > 1 or None,  # --workers share the port
            backlog=1024,
        )
        if self._admin is not None:
            await self._admin.setup()
            admin_site = web.TCPSite(
                self._admin,
                self.config.admin_host,
                self.config.admin_port,
                reuse_port=self.config.workers > 1 or None,
            )
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
    """Listen on config.host:config.port and serve until SIGINT or SIGTERM, then drain.

    With ``workers`` > 1 this process only supervises: it starts that many worker processes,
    which share the port (SO_REUSEPORT) and one metrics directory, passes SIGTERM on to them,
    replaces any that dies, and exits 0 once every worker has drained and exited 0.
    """
    configure_logging(config.log_level)
    if config.workers > 1:
        raise SystemExit(_supervise(config))
    serve_one(config)


def serve_one(config: Config) -> None:
    """One serving process (the whole gateway, or one of its workers)."""
    configure_logging(config.log_level)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(config))


def _supervise(config: Config) -> int:
    """Run ``config.workers`` serving processes until SIGTERM/SIGINT; their exit status."""
    log = structlog.get_logger("gateway")
    with tempfile.TemporaryDirectory(prefix="smgw-metrics-") as metrics_dir:
        # prometheus-client reads this when it is imported: set it before any worker starts.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        spawn = multiprocessing.get_context("spawn")
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        workers = [spawn.Process(target=serve_one, args=(config,)) for _ in range(config.workers)]
        for worker in workers:
            worker.start()
        log.info("workers_started", pids=[worker.pid for worker in workers])
        restarts = 0
        while not stopping.wait(0.2):
            for index, worker in enumerate(workers):
                if worker.is_alive() or restarts >= MAX_WORKER_RESTARTS:
                    continue
                _mark_dead(worker.pid)
                log.error("worker_exited", pid=worker.pid, exitcode=worker.exitcode)
                workers[index] = spawn.Process(target=serve_one, args=(config,))
                workers[index].start()
                restarts += 1
        for worker in workers:  # each drains as a single gateway would
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        deadline = config.shutdown_grace_s + config.drain_timeout_s + 10
        for worker in workers:
            worker.join(deadline)
            if worker.is_alive():
                worker.kill()
                worker.join()
        codes = [worker.exitcode for worker in workers]
        log.info("workers_stopped", exit_codes=codes)
        return 0 if all(code == 0 for code in codes) else 1


def _mark_dead(pid: int | None) -> None:
    """Drop a dead worker's live gauges (in-flight) from the summed metrics."""
    if pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


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
    await stop.wait()
    await server.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for the demo and tests)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
