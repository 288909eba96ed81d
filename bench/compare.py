"""Two gateways' CPU per request at 100 B, in alternating rounds on one machine.

`make bench` measures each system once, one after the other; on a shared machine the load
around a run drifts by more than the difference between two versions of the gateway. This
runs both side by side (each pinned alone to CPU 1 while measured, wrk and an nginx backend on
CPU 0) in rounds A, B, A, B, ... so that drift falls on both alike, and reports each round's
figures and the median ratio B/A.

    python bench/compare.py --a-tree /path/to/old/checkout [--b-tree .] [--rounds 6]

Each tree is served as `python -m gateway serve` from that directory (so its own `gateway`
package is imported), with production defaults and its access log written to a file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import EMULATOR_KEY, free_port, wait_until_up
from run import BACKEND_CONF, CPU_LOAD, CPU_PROXY, children, measure, process


def gateway_command(tree: Path, port: int, backend_port: int) -> list[str]:
    return [
        "env", "-C", str(tree), f"PYTHONPATH={tree}", sys.executable, "-m", "gateway", "serve",
        "--port", str(port), "--region", "us-east-1", "--shutdown-grace", "0",
        "--upstream-url", f"http://127.0.0.1:{backend_port}",
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a-tree", type=Path, required=True, help="the baseline checkout")
    parser.add_argument("--b-tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5, help="seconds of wrk per measurement")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="smgw-compare-"))
    (workdir / "body-100B").write_bytes(b"x" * 100)
    backend_port = free_port()
    (workdir / "backend.conf").write_text(BACKEND_CONF.format(dir=workdir, port=backend_port))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": EMULATOR_KEY[0],
        "AWS_SECRET_ACCESS_KEY": EMULATOR_KEY[1],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    path = "/endpoints/bench/invocations"
    figures: dict[str, list[float]] = {"A": [], "B": []}
    with ExitStack() as stack:
        stack.enter_context(process(["nginx", "-c", str(workdir / "backend.conf")], CPU_LOAD))
        wait_until_up(f"http://127.0.0.1:{backend_port}/")
        systems = {}
        for name, tree in (("A", args.a_tree.resolve()), ("B", args.b_tree.resolve())):
            port = free_port()
            command = gateway_command(tree, port, backend_port)
            pid = stack.enter_context(process(command, CPU_PROXY, env, workdir / f"{name}.log"))
            wait_until_up(f"http://127.0.0.1:{port}/healthz")
            systems[name] = (f"http://127.0.0.1:{port}{path}", pid)
        for name, (url, pid) in systems.items():  # warm-up: pools, caches, first requests
            measure(name, url, children(pid), None, "100B", args.connections, 2, workdir)
        print("| round | A us/req | B us/req | B/A | A req/s | B req/s |")
        print("|---|---|---|---|---|---|")
        for round_number in range(1, args.rounds + 1):
            runs = {}
            order = ("A", "B") if round_number % 2 else ("B", "A")
            for name in order:
                url, pid = systems[name]
                runs[name] = measure(name, url, children(pid), None, "100B", args.connections,
                                     args.seconds, workdir)  # fmt: skip
                figures[name].append(runs[name].cpu_us_per_request or 0.0)
            a, b = runs["A"], runs["B"]
            ratio = (b.cpu_us_per_request or 0) / (a.cpu_us_per_request or 1)
            print(f"| {round_number} | {a.cpu_us_per_request:.1f} | {b.cpu_us_per_request:.1f} | "
                  f"{ratio:.3f} | {a.rps:,.0f} | {b.rps:,.0f} |", flush=True)  # fmt: skip
    ratios = [b / a for a, b in zip(figures["A"], figures["B"], strict=True)]
    print(
        f"\nmedian CPU per request: A {statistics.median(figures['A']):.1f} us, "
        f"B {statistics.median(figures['B']):.1f} us; median ratio B/A "
        f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, "
        f"{len(ratios)} rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
