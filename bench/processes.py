"""Start the emulator and the gateway as real processes on loopback, for bench and soak runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.demo import free_port

EMULATOR_KEY = ("AKIDEMULATOR", "emulator-secret-key")  # the emulator's default credentials


def wait_until_up(url: str, deadline_s: float = 20.0) -> None:
    """Poll ``url`` until it answers, or raise after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"{url} did not come up in {deadline_s} s") from None
            time.sleep(0.05)


@dataclass
class Running:
    emulator_url: str
    gateway_url: str
    gateway_pid: int


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) and the open file descriptors of ``pid``."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


@contextmanager
def emulator_and_gateway(*gateway_args: str, model_timeout_s: float = 0.5) -> Iterator[Running]:
    """The emulator and `sagemaker-gateway serve` in two processes; both stopped on exit."""
    emulator_port, gateway_port = free_port(), free_port()
    python = sys.executable
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": EMULATOR_KEY[0],
        "AWS_SECRET_ACCESS_KEY": EMULATOR_KEY[1],
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    emulator = subprocess.Popen(
        [python, "-m", "gateway", "emulator", "--port", str(emulator_port),
         "--model-timeout", str(model_timeout_s)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    gateway = subprocess.Popen(
        [python, "-m", "gateway", "serve", "--port", str(gateway_port), "--region", "us-east-1",
         "--upstream-url", f"http://127.0.0.1:{emulator_port}", "--shutdown-grace", "0",
         *gateway_args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{gateway_port}/healthz")
        wait_until_up(f"http://127.0.0.1:{emulator_port}/_emulator/requests")
        yield Running(
            f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{gateway_port}", gateway.pid
        )
    finally:
        for process in (gateway, emulator):
            process.terminate()
        for process in (gateway, emulator):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
