"""``--workers N``: N serving processes on one port (SO_REUSEPORT), one supervisor over them.

The supervisor only supervises: it starts the workers, which share the port and one metrics
directory, passes SIGTERM and SIGHUP on to them, replaces any that dies, and exits 0 once
every worker has drained and exited 0.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
from collections.abc import Sequence

import structlog

from gateway.config import Config
from gateway.serving import serve_one

#: A worker that keeps dying is not restarted forever: the supervisor then runs on with fewer.
MAX_WORKER_RESTARTS = 10


def supervise(config: Config) -> int:
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
        signal.signal(signal.SIGHUP, lambda *_: _signal_all(workers, signal.SIGHUP))
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


def _signal_all(workers: Sequence[multiprocessing.process.BaseProcess], signum: int) -> None:
    """Pass ``signum`` (SIGHUP: reload) on to every live worker."""
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signum)


def _mark_dead(pid: int | None) -> None:
    """Drop a dead worker's live gauges (in-flight) from the summed metrics."""
    if pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
