"""`make bench`: the gateway side by side with nginx proxy_pass (the floor), in one run.

Layout, as in the issue that set the targets: wrk (1 thread) and an nginx backend answering a
small fixed JSON pinned to CPU 0; the proxy under test alone on CPU 1; 32 keep-alive
connections. Every number is also given as a ratio to the floor measured in the same run,
because absolute figures drift on a shared machine. Loopback only; every run is bounded.

Results: a table on stdout, bench/results/bench.json, and bench/results/latency.png.

``BENCH_COMPARE='NAME=COMMAND'`` (several separated by ``;``) measures other proxies in the same
run, each pinned alone to CPU 1 like the gateway: COMMAND is run through the shell with ``{port}``
(where to listen) and ``{upstream}`` (the backend's URL) filled in, and the AWS variables of the
gateway's environment. The script never builds or downloads anything for them (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import EMULATOR_KEY, free_port, proc_status, wait_until_up

RESULTS = Path(__file__).resolve().parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BODY_SIZES = {"100B": 100, "100KB": 100_000, "5MB": 5_242_880}
CPU_LOAD, CPU_PROXY = "0", "1"
GATEWAY = "sagemaker-gateway"

BACKEND_CONF = """
worker_processes 1; daemon off; pid {dir}/backend.pid; error_log {dir}/backend.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_max_body_size 8m; client_body_buffer_size 8m; keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      add_header x-Amzn-Invoked-Production-Variant AllTraffic;
      default_type application/json;
      return 200 '{{"predictions": [0.12, 0.88]}}';
    }}
  }}
}}
"""
FLOOR_CONF = """
worker_processes 1; daemon off; pid {dir}/floor.pid; error_log {dir}/floor.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_max_body_size 8m; client_body_buffer_size 8m; keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_request_buffering on; proxy_buffering off;
    }}
  }}
}}
"""
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb"); wrk.body = f:read("*all"); f:close()
"""


@dataclass
class Run:
    system: str
    body: str
    connections: int
    round: int
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    rss_mb: float | None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """``pid`` and its child processes (nginx's master and worker)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        found += [int(kid) for kid in kids]
    return found


def parse_wrk(text: str) -> tuple[int, float, dict[str, float]]:
    """Requests, requests/s and latency percentiles (ms) from `wrk --latency` output."""
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    percentiles = {}
    for label, value, unit in re.findall(r"\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\b", text):
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
        percentiles[label] = float(value) * scale
    if text.count("Non-2xx") or "Socket errors" in text:
        print(text, file=sys.stderr)
    return requests, rps, percentiles


def wrk(url: str, body_file: Path, connections: int, seconds: int, workdir: Path) -> str:
    script = workdir / f"post-{body_file.name}.lua"
    script.write_text(WRK_SCRIPT.format(body=body_file))
    command = [
        "taskset", "-c", CPU_LOAD, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        "--timeout", "10s", "--latency", "-s", str(script), url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout


def measure(
    system: str, url: str, pids: list[int], rss_pid: int | None, body: str, connections: int,
    seconds: int, workdir: Path, round_: int,
) -> Run:  # fmt: skip
    body_file = workdir / f"body-{body}"
    cpu_before = cpu_seconds(pids)
    text = wrk(url, body_file, connections, seconds, workdir)
    cpu_used = cpu_seconds(pids) - cpu_before
    requests, rps, pct = parse_wrk(text)
    rss = proc_status(rss_pid)["VmHWM"] / 1024 if rss_pid else None
    return Run(
        system, body, connections, round_, requests, rps, pct.get("50", 0), pct.get("90", 0),
        pct.get("99", 0), cpu_used / requests * 1e6 if requests else None, rss,
    )  # fmt: skip


def wait_until_listening(port: int, deadline_s: float = 30.0) -> None:
    """Wait for something to accept connections on ``port`` (a proxy may answer / with 404)."""
    import socket

    end = time.monotonic() + deadline_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"nothing listens on port {port} after {deadline_s} s") from None
            time.sleep(0.05)


@contextmanager
def process(
    command: list[str], cpu: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[int]:
    """Run ``command`` pinned to ``cpu``; its output to ``log`` (as a container runtime keeps
    a log file), else discarded."""
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", cpu, *command], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def first_part_delay_ms(direct_url: str, gateway_url: str, samples: int) -> dict:
    """Median time to the first streamed part, direct to the emulator and through the gateway."""
    import aiohttp
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    path = "/endpoints/stream-2-200/invocations-response-stream"

    def signed(url: str) -> dict[str, str]:
        request = AWSRequest(method="POST", url=url + path, data=b"ab")
        SigV4Auth(Credentials(*EMULATOR_KEY), "sagemaker", "us-east-1").add_auth(request)
        return dict(request.headers)

    async def first_part(session, url: str, headers: dict[str, str]) -> float:
        started = time.perf_counter()
        async with session.post(url + path, data=b"ab", headers=headers) as response:
            await response.content.readany()
            elapsed = time.perf_counter() - started
            await response.read()
        return elapsed * 1000

    results = {}
    async with aiohttp.ClientSession() as session:
        for name, url in (("direct", direct_url), ("gateway", gateway_url)):
            times = []
            for _ in range(samples):
                headers = signed(url) if name == "direct" else {}
                times.append(await first_part(session, url, headers))
            times.sort()
            results[name] = times[len(times) // 2]
    results["added"] = results["gateway"] - results["direct"]
    return results


def chart(runs: list[Run], path: Path) -> bool:
    """Latency percentiles per system and body size, as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    at32 = [run for run in runs if run.connections == 32]
    systems = sorted({run.system for run in at32})
    fig, axes = plt.subplots(1, len(BODY_SIZES), figsize=(13, 4))
    for axis, body in zip(axes, BODY_SIZES, strict=True):
        for offset, system in enumerate(systems):
            run = next((r for r in at32 if r.system == system and r.body == body), None)
            if run is None:
                continue
            values = [run.p50_ms, run.p90_ms, run.p99_ms]
            positions = [i + offset * 0.25 for i in range(3)]
            axis.bar(positions, values, width=0.25, label=system)
        axis.set_xticks([i + 0.25 for i in range(3)], ["p50", "p90", "p99"])
        axis.set_title(f"{body} body, 32 connections")
        axis.set_ylabel("ms")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def compared(spec: str, port_of: dict[str, int], upstream: str) -> list[tuple[str, list[str]]]:
    """The proxies named in ``BENCH_COMPARE``: (name, command) each, with a free port each."""
    systems = []
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        name, sep, command = entry.partition("=")
        if not sep or not command.strip():
            raise SystemExit(f"BENCH_COMPARE entry {entry!r} is not NAME=COMMAND")
        port_of[name] = free_port()
        filled = command.replace("{port}", str(port_of[name])).replace("{upstream}", upstream)
        systems.append((name.strip(), ["sh", "-c", f"exec {filled}"]))
    return systems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=positive, default=5, help="seconds per throughput run")
    parser.add_argument(
        "--latency-seconds", type=positive, default=1, help="seconds per 1- and 4-connection slice"
    )
    parser.add_argument(
        "--latency-slices",
        type=positive,
        default=15,
        help="interleaved 1- and 4-connection slices; their p99s are compared slice by slice",
    )
    parser.add_argument(
        "--rounds", type=positive, default=3, help="interleaved rounds; the table gives medians"
    )
    parser.add_argument("--workers", type=int, default=1, help="gateway --workers")
    parser.add_argument(
        "--gateway-tree",
        type=Path,
        help="run the gateway from this copy of the tree (make bench: compiled, as the image has)",
    )
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run bench/install.sh (make bench does)")
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="smgw-bench-"))
    for name, size in BODY_SIZES.items():
        (workdir / f"body-{name}").write_bytes(b"x" * size)
    backend_port, floor_port, gateway_port, emulator_port = (free_port() for _ in range(4))
    (workdir / "backend.conf").write_text(BACKEND_CONF.format(dir=workdir, port=backend_port))
    (workdir / "floor.conf").write_text(
        FLOOR_CONF.format(dir=workdir, port=floor_port, backend=backend_port)
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": EMULATOR_KEY[0],
        "AWS_SECRET_ACCESS_KEY": EMULATOR_KEY[1],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    python = sys.executable
    # make bench: a copy of the tree with the hot modules compiled, as the image ships them;
    # without --gateway-tree, this tree's pure Python.
    tree = args.gateway_tree
    launch = ["env", "-C", str(tree), f"PYTHONPATH={tree}", python] if tree else [python]
    gateway_command = [
        *launch, "-m", "gateway", "serve", "--port", str(gateway_port), "--region", "us-east-1",
        "--upstream-url", f"http://127.0.0.1:{backend_port}", "--shutdown-grace", "0",
        *(["--workers", str(args.workers)] if args.workers > 1 else []),
    ]  # fmt: skip
    runs: list[Run] = []
    path = "/endpoints/bench/invocations"
    ports: dict[str, int] = {}
    others = compared(
        os.environ.get("BENCH_COMPARE", ""), ports, f"http://127.0.0.1:{backend_port}"
    )
    with (
        process(["nginx", "-c", str(workdir / "backend.conf")], CPU_LOAD) as backend,
        process(["nginx", "-c", str(workdir / "floor.conf")], CPU_PROXY) as floor,
        process(gateway_command, CPU_PROXY, env, workdir / "gateway.log") as gateway,
        ExitStack() as stack,
    ):
        for port in (backend_port, floor_port):
            wait_until_up(f"http://127.0.0.1:{port}/")
        wait_until_up(f"http://127.0.0.1:{gateway_port}/healthz")
        systems = {
            "nginx proxy_pass (floor)": (f"http://127.0.0.1:{floor_port}{path}", floor),
            "sagemaker-gateway": (f"http://127.0.0.1:{gateway_port}{path}", gateway),
        }
        for name, command in others:
            log = workdir / f"{name.replace('/', '_')}.log"
            pid = stack.enter_context(process(command, CPU_PROXY, env, log))
            url = f"http://127.0.0.1:{ports[name]}"
            wait_until_listening(ports[name])
            systems[name] = (f"{url}{path}", pid)
        systems["direct"] = (f"http://127.0.0.1:{backend_port}{path}", backend)
        for url, _ in systems.values():
            wrk(url, workdir / "body-100B", 32, 2, workdir)  # warm-up: pools and caches
        # Interleaved: each measurement is taken of every system in turn, round after round
        # (in_turn: who goes first, and who follows whom, change from round to round), so
        # that the machine's drift between one system and the next is short, and a round's
        # ratios compare like with like. Latency at 1 and 4 connections first: after the 5 MB
        # runs a process is still returning memory and finishing the last large bodies,
        # which would show as p99.
        # The tail at 1 and 4 connections is taken in many one-second slices rather than a
        # few long runs. On this shared machine a burst of other work lifts the p99 of
        # whatever runs in that second or two (nginx's own by milliseconds). Subtracting the
        # direct p99 of the same slice takes out the drift from slice to slice, not a burst
        # (each system has its own second); the median over slices passes over the few
        # slices bursts spoil, for every system alike, and estimates the p99 of a typical
        # second. The report prints the worst slice beside it.
        specs = [
            ("100B", connections, args.latency_seconds, args.latency_slices)
            for connections in (1, 4)
        ]
        specs += [
            (body, 32, args.seconds if body != "5MB" else max(3, args.seconds // 2), args.rounds)
            for body in BODY_SIZES
        ]
        for body, connections, seconds, rounds in specs:
            names = [n for n in systems if connections != 32 or n != "direct"]
            for round_ in range(rounds):
                for name in in_turn(names, round_):
                    url, pid = systems[name]
                    pids = children(pid)
                    rss_pid = pids[-1] if connections == 32 else None
                    run = measure(name, url, pids, rss_pid, body, connections, seconds,
                                  workdir, round_)  # fmt: skip
                    runs.append(run)
                    print(json.dumps(asdict(run)), flush=True)
    with (
        process(
            [python, "-m", "gateway", "emulator", "--port", str(emulator_port)], CPU_LOAD, env
        ) as _emulator,  # fmt: skip
        process(
            [
                *launch,
                "-m",
                "gateway",
                "serve",
                "--port",
                str(gateway_port),
                "--region",
                "us-east-1",
                "--upstream-url",
                f"http://127.0.0.1:{emulator_port}",
            ],
            CPU_PROXY,
            env,
        ) as _gateway,  # fmt: skip
    ):
        wait_until_up(f"http://127.0.0.1:{gateway_port}/healthz")
        wait_until_up(f"http://127.0.0.1:{emulator_port}/_emulator/requests")
        stream = asyncio.run(
            first_part_delay_ms(
                f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{gateway_port}", 30
            )
        )
    # The access log was on and written to a file all along: one line per request served.
    with open(workdir / "gateway.log", "rb") as log:
        access_lines = sum(1 for line in log if b'"event":"request"' in line)
    shutil.rmtree(workdir, ignore_errors=True)
    summary = report(runs, stream)
    print(f"gateway access log: {access_lines:,} lines written to a file during the runs")
    (RESULTS / "bench.json").write_text(
        json.dumps(
            {
                "runs": [asdict(r) for r in runs],
                "first_part_ms": stream,
                "gateway_access_lines": access_lines,
            },
            indent=2,
        )
    )
    if chart(summary, RESULTS / "latency.png"):
        print(f"chart: {RESULTS / 'latency.png'}")
    return 0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def positive(text: str) -> int:
    """An argument that must be a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


def in_turn(names: list[str], round_: int) -> list[str]:
    """The order of the systems in round ``round_``: rotated by one each round, and reversed
    every other round, so that no system always follows the same one."""
    turn = round_ % len(names)
    order = names[turn:] + names[:turn]
    return order[::-1] if round_ % 2 else order


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of ``wins`` against ``losses`` if either side were as likely to be
    ahead in each slice (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """The 25th, 50th and 75th percentiles of ``values`` (all three the value when alone)."""
    if len(values) < 2:
        return (values[0],) * 3 if values else (0.0, 0.0, 0.0)
    low, middle, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, middle, high


def summarized(runs: list[Run]) -> list[Run]:
    """One Run per system, body and connections: the median of its rounds, field by field."""
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        if not run.requests:  # wrk finished none: no percentiles, nothing to take a median of
            continue
        groups.setdefault((run.system, run.body, run.connections), []).append(run)
    summary = []
    for (system, body, connections), group in groups.items():
        cpu = [r.cpu_us_per_request for r in group if r.cpu_us_per_request is not None]
        rss = [r.rss_mb for r in group if r.rss_mb is not None]
        summary.append(Run(
            system, body, connections, -1, sum(r.requests for r in group),
            median([r.rps for r in group]), median([r.p50_ms for r in group]),
            median([r.p90_ms for r in group]), median([r.p99_ms for r in group]),
            median(cpu) if cpu else None, max(rss) if rss else None,
        ))  # fmt: skip
    return summary


def p99_added(runs: list[Run], system: str, connections: int) -> dict[int, float]:
    """By round (slice): the system's p99 less the direct p99 measured in the same one; a run
    in which wrk finished no request is left out, and so is its round's for everyone."""
    direct = {
        r.round: r.p99_ms
        for r in runs
        if r.system == "direct" and r.connections == connections and r.requests
    }
    return {
        r.round: r.p99_ms - direct[r.round]
        for r in runs
        if r.system == system and r.connections == connections and r.requests
        and r.round in direct
    }  # fmt: skip


def report(runs: list[Run], stream: dict) -> list[Run]:
    """The tables (medians of the rounds): per body size at 32 connections, ratios to the
    floor; added latency; then the gateway against each other proxy, round by round."""
    rounds = max(r.round for r in runs if r.connections == 32) + 1
    slices = max(r.round for r in runs if r.connections == 1) + 1
    summary = summarized(runs)
    floor = {r.body: r for r in summary if r.system.startswith("nginx") and r.connections == 32}
    print(f"\nMedians of {rounds} interleaved rounds.")
    print("\n| system | body | req/s | x floor | p50 ms | p99 ms | CPU us/req | x floor | RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in summary:
        if run.connections != 32:
            continue
        base = floor[run.body]
        cpu = run.cpu_us_per_request or 0
        print(
            f"| {run.system} | {run.body} | {run.rps:,.0f} | {run.rps / base.rps:.2f} | "
            f"{run.p50_ms:.2f} | {run.p99_ms:.2f} | {cpu:.0f} | "
            f"{cpu / (base.cpu_us_per_request or 1):.1f} | {run.rss_mb or 0:.0f} |"
        )
    print(f"\nLatency at 1 and 4 connections, 100 B: medians over {slices} interleaved slices "
          "of each slice's figure. The p99 added is each slice's p99 less the direct p99 of "
          "the same slice; its quartiles over the slices and its worst slice follow.")  # fmt: skip
    print("\n| system | connections | p50 ms | p99 ms | p99 added over direct, ms "
          "(quartiles; worst slice) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for run in summary:
        if run.connections in (1, 4):
            added = list(p99_added(runs, run.system, run.connections).values())
            if not added:
                continue
            low, _, high = quartiles(added)
            spread = f"{low:+.3f} to {high:+.3f}; {max(added):+.3f}"
            print(f"| {run.system} | {run.connections} | {run.p50_ms:.3f} | {run.p99_ms:.3f} | "
                  f"{median(added):+.3f} ({spread}) |")  # fmt: skip
    named = dict.fromkeys(r.system for r in runs)
    others = [n for n in named if n not in (GATEWAY, "direct") and not n.startswith("nginx")]
    for other in others:
        print(f"\nsagemaker-gateway against {other}, round by round:")
        for body in ("100B", "100KB"):
            ratios = []
            for round_ in range(rounds):
                pair = {r.system: r for r in runs if r.body == body and r.connections == 32
                        and r.round == round_ and r.system in (GATEWAY, other)}  # fmt: skip
                if len(pair) == 2 and pair[other].rps:
                    ratios.append(pair[GATEWAY].rps / pair[other].rps)
                    cpu_ratio = (pair[GATEWAY].cpu_us_per_request or 0) / (
                        pair[other].cpu_us_per_request or 1
                    )
                    print(f"  {body}, 32 connections, round {round_ + 1}: req/s "
                          f"{ratios[-1]:.2f}x, CPU per request {cpu_ratio:.2f}x")  # fmt: skip
            if ratios:
                print(f"  {body}: median req/s ratio {median(ratios):.2f}x")
        mine, theirs = (p99_added(runs, name, 1) for name in (GATEWAY, other))
        both = sorted(mine.keys() & theirs.keys())
        if both:
            wins = sum(mine[k] < theirs[k] for k in both)
            ties = sum(mine[k] == theirs[k] for k in both)
            losses = len(both) - wins - ties
            print(f"  1 connection, p99 added: {median([mine[k] for k in both]):+.3f} ms against "
                  f"{median([theirs[k] for k in both]):+.3f} ms (medians of {len(both)} slices); "
                  f"the gateway's is shorter in {wins}, equal in {ties}, longer in {losses} "
                  f"(sign test p = {sign_test(wins, losses):.3f})")  # fmt: skip
    print(
        f"\nfirst streamed part (median of 30): direct {stream['direct']:.2f} ms, "
        f"through the gateway {stream['gateway']:.2f} ms, added {stream['added']:+.2f} ms"
    )
    return summary


if __name__ == "__main__":
    sys.exit(main())
