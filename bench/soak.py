"""`make soak`: memory under 40 concurrent 5 MB bodies, then minutes of mixed traffic.

Prints the gateway's resident memory, file descriptors and event-loop tasks over time and fails
(exit 1) if they keep growing. Bounded in count and time; loopback only. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import emulator_and_gateway, proc_status

MIX = ["echo"] * 12 + ["slow-50", "variants", "model-error", "throttle", "unavailable", "reset",
                       "hang", "bad_name"]  # fmt: skip
RESULTS = Path(__file__).resolve().parent / "results"


async def tasks_in(session: aiohttp.ClientSession, gateway_url: str) -> int | None:
    """The gateway's event-loop task count, from its /metrics."""
    async with session.get(f"{gateway_url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("sagemaker_gateway_event_loop_tasks "):
                return int(float(line.split()[1]))
    return None


async def big_bodies(gateway_url: str, pid: int, concurrency: int, rounds: int) -> dict:
    """RSS before and after ``rounds`` of ``concurrency`` simultaneous 5 MB bodies."""
    body = b"m" * 5_242_880
    before = proc_status(pid)
    peak = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            url = f"{gateway_url}/endpoints/echo/invocations"
            async with session.post(url, data=body) as response:
                await response.read()
                return response.status

        for _ in range(rounds):
            statuses = await asyncio.gather(*(one() for _ in range(concurrency)))
            assert statuses == [200] * concurrency, statuses
            peak = max(peak, proc_status(pid)["VmHWM"])
    after = proc_status(pid)
    return {
        "concurrency": concurrency,
        "body_bytes": len(body),
        "rss_before_kb": before["VmRSS"],
        "rss_after_kb": after["VmRSS"],
        "rss_peak_kb": peak,
        "bodies_in_flight_kb": concurrency * len(body) // 1024,
    }


STREAM_PARTS, STREAM_GAP_S = 20, 0.05


async def stream_figures(session: aiohttp.ClientSession, gateway_url: str, endpoint: str) -> dict:
    """The gateway's own stream figures for ``endpoint``, summed from its /metrics."""
    wanted = {
        "sagemaker_gateway_stream_parts_total": "parts",
        "sagemaker_gateway_stream_first_part_seconds_sum": "first_part_sum_s",
        "sagemaker_gateway_stream_first_part_seconds_count": "first_parts",
        "sagemaker_gateway_stream_part_gap_seconds_sum": "gap_sum_s",
        "sagemaker_gateway_stream_part_gap_seconds_count": "gaps",
    }
    figures = dict.fromkeys([*wanted.values(), "completed"], 0.0)
    async with session.get(f"{gateway_url}/metrics") as response:
        exposition = await response.text()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.labels.get("endpoint") != endpoint:
                continue
            if sample.name in wanted:
                figures[wanted[sample.name]] += sample.value
            elif (
                sample.name == "sagemaker_gateway_streams_total"
                and sample.labels["outcome"] == "completed"
            ):
                figures["completed"] += sample.value
    return figures


async def streams(gateway_url: str, pid: int, count: int) -> dict:
    """RSS while ``count`` response streams (20 parts, 50 ms apart) are relayed at once; each
    stream's parts must keep their pace (not held back and delivered together), and the
    gateway's stream metrics must count every part and gap."""
    endpoint = f"stream-{STREAM_PARTS}-{int(STREAM_GAP_S * 1000)}"
    before = proc_status(pid)["VmRSS"]
    peak = before
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[int, float]:
            url = f"{gateway_url}/endpoints/{endpoint}/invocations-response-stream"
            async with session.post(url, data=b"x" * 2000) as response:
                size, arrivals = 0, []
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    arrivals.append(time.monotonic())
                return size, arrivals[-1] - arrivals[0]

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, proc_status(pid)["VmRSS"])
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(*(one() for _ in range(count)))
        sampler.cancel()
        figures = await stream_figures(session, gateway_url, endpoint)
    sizes = [size for size, _ in results]
    spreads = sorted(spread for _, spread in results)
    assert all(size > 2000 for size in sizes), sizes
    # 19 gaps of 50 ms: a stream whose parts were batched would arrive in far less.
    paced = (STREAM_PARTS - 1) * STREAM_GAP_S * 0.8
    assert spreads[0] >= paced, f"a stream arrived in {spreads[0]:.3f} s, under {paced:.3f} s"
    assert figures["parts"] == count * STREAM_PARTS, figures
    assert figures["gaps"] == count * (STREAM_PARTS - 1), figures
    assert figures["completed"] == count, figures
    return {
        "streams": count,
        "rss_before_kb": before,
        "rss_peak_kb": peak,
        "first_to_last_part_s": {"min": round(spreads[0], 3), "max": round(spreads[-1], 3)},
        "gateway_parts": figures["parts"],
        "gateway_completed": figures["completed"],
        "gateway_mean_gap_ms": round(figures["gap_sum_s"] / figures["gaps"] * 1000, 2),
        "gateway_mean_first_part_ms": round(
            figures["first_part_sum_s"] / figures["first_parts"] * 1000, 2
        ),
    }


async def soak(gateway_url: str, pid: int, duration_s: float, concurrency: int) -> list[dict]:
    """Mixed traffic for ``duration_s``; a sample of the process every tenth of the run."""
    samples: list[dict] = []
    end = time.monotonic() + duration_s
    counts = {"requests": 0, "answered": 0}
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            rng = random.Random()
            while time.monotonic() < end:
                endpoint = rng.choice(MIX)
                counts["requests"] += 1
                url = f"{gateway_url}/endpoints/{endpoint}/invocations"
                async with session.post(url, data=b'{"x": 1}') as response:
                    await response.read()
                    counts["answered"] += 1

        async def sampler() -> None:
            started = time.monotonic()
            while time.monotonic() < end:
                status = proc_status(pid)
                status["tasks"] = await tasks_in(session, gateway_url)
                status["t_s"] = round(time.monotonic() - started, 1)
                status["requests"] = counts["requests"]
                samples.append(status)
                print(json.dumps(status), flush=True)
                await asyncio.sleep(duration_s / 10)

        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    if counts["answered"] != counts["requests"]:
        raise SystemExit(f"{counts['requests'] - counts['answered']} requests got no answer")
    return samples


def growth(samples: list[dict], key: str) -> float:
    """Last third's mean over the middle third's (the first third is warm-up)."""
    third = max(1, len(samples) // 3)
    middle = [s[key] for s in samples[third : 2 * third] if s[key] is not None]
    last = [s[key] for s in samples[-third:] if s[key] is not None]
    if not middle or not last:
        return 1.0
    return (sum(last) / len(last)) / max(1e-9, sum(middle) / len(middle))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=180.0, help="soak seconds")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--streams-only", action="store_true", help="only the 100 concurrent streams phase"
    )
    args = parser.parse_args()
    with emulator_and_gateway("--upstream-timeout", "5", "--log-level", "warning") as running:
        if args.streams_only:
            relayed = asyncio.run(streams(running.gateway_url, running.gateway_pid, 100))
            print("100 streams:", json.dumps(relayed))
            return 0
        memory = asyncio.run(big_bodies(running.gateway_url, running.gateway_pid, 40, 3))
        print("40 x 5 MB:", json.dumps(memory))
        relayed = asyncio.run(streams(running.gateway_url, running.gateway_pid, 100))
        print("100 streams:", json.dumps(relayed))
        samples = asyncio.run(
            soak(running.gateway_url, running.gateway_pid, args.duration, args.concurrency)
        )
    verdict = {key: round(growth(samples, key), 3) for key in ("VmRSS", "fds", "tasks")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(
        json.dumps(
            {"big_bodies": memory, "streams": relayed, "samples": samples, "growth": verdict},
            indent=2,
        )
    )
    print("growth, last third over middle third:", verdict)
    # Memory may settle a little; file descriptors and tasks must not creep.
    ok = verdict["VmRSS"] < 1.10 and verdict["fds"] < 1.25 and verdict["tasks"] < 1.25
    print("soak:", "no growth" if ok else "GROWTH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
