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


async def streams(gateway_url: str, pid: int, count: int) -> dict:
    """RSS while ``count`` response streams (20 parts, 50 ms apart) are relayed at once."""
    before = proc_status(pid)["VmRSS"]
    peak = before
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            url = f"{gateway_url}/endpoints/stream-20-50/invocations-response-stream"
            async with session.post(url, data=b"x" * 2000) as response:
                size = 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                return size

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, proc_status(pid)["VmRSS"])
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        sizes = await asyncio.gather(*(one() for _ in range(count)))
        sampler.cancel()
    assert all(size > 2000 for size in sizes), sizes
    return {"streams": count, "rss_before_kb": before, "rss_peak_kb": peak}


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
    args = parser.parse_args()
    with emulator_and_gateway("--upstream-timeout", "5", "--log-level", "warning") as running:
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
