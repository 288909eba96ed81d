"""`make tail`: where the time of a request goes inside the gateway at one connection, and
what the slowest 1 % of requests have in common.

The gateway runs as in `make bench` (its production defaults, pinned alone to CPU 1; an nginx
backend and wrk on CPU 0), with probes added in its own process: a timestamp when a request
has fully arrived, when it is written upstream, when the answer has been read, and when the
answer is written back; every garbage collection (start, end, generation) and every write of
access lines. At one connection requests follow each other, so the n-th timestamps of each
kind belong to the n-th request. The probes cost a few microseconds a request: compare the
phases with each other, not with `make bench`'s figures.

    python bench/tail.py [--seconds 20] [--body-bytes 100]

Prints each phase's percentiles, then for the slowest 1 % (time inside the gateway) how long
each phase took and how many of them overlapped a collection or an access-log write.
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

POINTS = ("arrived", "sent", "answered", "written")
PHASES = {
    "handler (arrived -> written upstream)": ("arrived", "sent"),
    "upstream (written -> answer read)": ("sent", "answered"),
    "answer (read -> written back)": ("answered", "written"),
    "inside the gateway (arrived -> written back)": ("arrived", "written"),
}


# --- in the gateway's process


def install_probes(events: dict[str, array.array[int]]) -> None:
    """Wrap the four points of a request, the collector and the access-log writer."""
    from gateway.http import client, server
    from gateway.log import LineWriter

    now = time.perf_counter_ns
    current: dict[str, int] = {}

    def after(cls: type, name: str, kind: str) -> None:
        original = getattr(cls, name)

        def probe(self: Any, *args: Any) -> Any:
            result = original(self, *args)
            if kind == "arrived":
                current.clear()
            current[kind] = now()
            if kind == "written" and len(current) == 4:  # a forwarded request (not /healthz)
                # Kept in an array: no object per request for the collector to trace.
                events["requests"].extend([current[phase] for phase in POINTS])
            return result

        setattr(cls, name, probe)

    exchange = client._Connection.exchange

    async def timed_exchange(self: Any, head: bytes, body: bytes) -> Any:
        current["sent"] = now()  # exchange writes the request before its first await
        return await exchange(self, head, body)

    client._Connection.exchange = timed_exchange  # type: ignore[method-assign]
    after(server.ServerConnection, "on_message_complete", "arrived")
    after(client._Connection, "on_message_complete", "answered")
    after(server.Response, "flush", "written")

    flush = LineWriter.flush

    def timed_flush(self: Any) -> None:
        started = now()
        flush(self)
        events["log_writes"].extend((started, now()))

    LineWriter.flush = timed_flush  # type: ignore[method-assign]

    collecting: dict[str, int] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting["at"] = now()
        else:
            started = collecting.pop("at", now())
            events["collections"].extend((started, now(), info["generation"], info["collected"]))

    gc.callbacks.append(on_gc)


def probe_serve(out: Path, serve_args: list[str]) -> None:
    """Run `sagemaker-gateway serve` with probes; write what they saw to ``out`` at exit."""
    events = {kind: array.array("q") for kind in ("requests", "log_writes", "collections")}
    install_probes(events)
    from gateway.cli import main

    try:
        main(["serve", *serve_args])
    finally:
        out.write_text(json.dumps({kind: list(values) for kind, values in events.items()}))


# --- the driver


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": ordered[-1]}


def overlaps(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and e > start for s, e in spans)


def grouped(flat: list[int], size: int) -> list[list[int]]:
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def analyse(flat: dict[str, list[int]]) -> None:
    requests = grouped(flat["requests"], 4)
    collections_ = grouped(flat["collections"], 4)
    log_writes = [tuple(span) for span in grouped(flat["log_writes"], 2)]
    count = len(requests)
    print(f"requests seen by the probes: {count:,}")
    us = {
        name: [(r[POINTS.index(b)] - r[POINTS.index(a)]) / 1e3 for r in requests]
        for name, (a, b) in PHASES.items()
    }
    print("\n| phase | p50 us | p99 us | p99.9 us | max us |\n|---|---|---|---|---|")
    for name, values in us.items():
        p = percentiles(values)
        print(f"| {name} | {p['p50']:.0f} | {p['p99']:.0f} | {p['p99.9']:.0f} | {p['max']:.0f} |")
    inside = us["inside the gateway (arrived -> written back)"]
    slowest = sorted(range(count), key=inside.__getitem__)[-max(1, count // 100) :]
    collections = [(s, e) for s, e, _, _ in collections_]
    spans = [(requests[i][0], requests[i][3]) for i in slowest]
    with_gc = sum(overlaps(collections, s, e) for s, e in spans)
    with_log = sum(overlaps(log_writes, s, e) for s, e in spans)
    print(f"\nslowest 1 % ({len(slowest)} requests), mean us a phase:")
    for name, values in us.items():
        print(f"  {name}: {sum(values[i] for i in slowest) / len(slowest):.0f}")
    print(f"  overlapping a garbage collection: {with_gc} of {len(slowest)}")
    print(f"  overlapping an access-log write: {with_log} of {len(slowest)}")
    by_generation: dict[int, list[float]] = {}
    found: dict[int, int] = {}
    for start, end, generation, collected in collections_:
        by_generation.setdefault(generation, []).append((end - start) / 1e3)
        found[generation] = found.get(generation, 0) + collected
    for generation, pauses in sorted(by_generation.items()):
        p = percentiles(pauses)
        print(
            f"collections of generation {generation}: {len(pauses):,}, "
            f"p50 {p['p50']:.0f} us, max {p['max']:.0f} us, "
            f"{found[generation] / len(pauses):.0f} unreachable objects found each"
        )
    writes = [(e - s) / 1e3 for s, e in log_writes]
    if writes:
        p = percentiles(writes)
        print(f"access-log writes: {len(writes):,}, p50 {p['p50']:.0f} us, max {p['max']:.0f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--body-bytes", type=int, default=100)
    parser.add_argument("--probe-serve", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.probe_serve:
        probe_serve(args.probe_serve, rest)
        return 0

    import run as bench
    from processes import EMULATOR_KEY, free_port

    workdir = Path(tempfile.mkdtemp(prefix="smgw-tail-"))
    (workdir / "body").write_bytes(b"x" * args.body_bytes)
    backend_port, gateway_port = free_port(), free_port()
    (workdir / "backend.conf").write_text(bench.BACKEND_CONF.format(dir=workdir, port=backend_port))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": EMULATOR_KEY[0],
        "AWS_SECRET_ACCESS_KEY": EMULATOR_KEY[1],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    out = workdir / "events.json"
    command = [
        sys.executable, __file__, "--probe-serve", str(out), "--port", str(gateway_port),
        "--region", "us-east-1", "--upstream-url", f"http://127.0.0.1:{backend_port}",
        "--shutdown-grace", "0",
    ]  # fmt: skip
    with bench.process(["nginx", "-c", str(workdir / "backend.conf")], bench.CPU_LOAD):
        bench.wait_until_up(f"http://127.0.0.1:{backend_port}/")
        gateway = subprocess.Popen(
            ["taskset", "-c", bench.CPU_PROXY, *command],
            env=env,
            stdout=open(workdir / "gateway.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            bench.wait_until_up(f"http://127.0.0.1:{gateway_port}/healthz")
            url = f"http://127.0.0.1:{gateway_port}/endpoints/bench/invocations"
            bench.wrk(url, workdir / "body", 1, 2, workdir)  # warm-up
            text = bench.wrk(url, workdir / "body", 1, args.seconds, workdir)
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=60)
    requests, rps, latency = bench.parse_wrk(text)
    print(
        f"wrk, 1 connection, {args.body_bytes} B: {requests:,} requests, "
        f"{rps:,.0f} req/s, p50 {latency['50']:.3f} ms, p99 {latency['99']:.3f} ms "
        "(end to end, warm-up included below)"
    )
    analyse(json.loads(out.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
