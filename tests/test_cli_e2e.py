"""The installed command end to end: `sagemaker-gateway serve` as a process, the real AWS CLI."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys

import aiohttp
import pytest

from gateway.demo import free_port
from tests.conftest import ACCESS_KEY, REGION, SECRET_KEY, gateway_process_env, run_aws_cli
from tests.waiting import poll


async def healthy(url: str) -> bool:
    """Whether the gateway at ``url`` answers /healthz with 200 yet."""
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


def served_env(emulator) -> dict[str, str]:
    """The environment of a served gateway: test keys for botocore's env chain, nothing else
    of this machine's AWS set-up, the emulator as upstream, no shutdown grace."""
    return gateway_process_env(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        SMGW_REGION=REGION,
        SMGW_UPSTREAM_URL=str(emulator.make_url("")).rstrip("/"),
        SMGW_SHUTDOWN_GRACE="0",
    )


@pytest.fixture
async def served_gateway(emulator):
    """`python -m gateway serve` in its own process, credentials from botocore's env chain."""
    port = free_port()
    env = served_env(emulator)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), "--upstream-timeout", "5",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await poll(lambda: healthy(url), deadline_s=20)
        yield url, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_aws_cli_invoke_endpoint_through_the_served_gateway(
    served_gateway, journal, tmp_path
):
    """`aws sagemaker-runtime invoke-endpoint --no-sign-request` gets the model's answer."""
    url, _ = served_gateway
    body = tmp_path / "body.json"
    body.write_bytes(b'{"instances": [[1.0, 2.0]]}')
    outfile = tmp_path / "out.json"
    code, out, err = await run_aws_cli(
        "sagemaker-runtime", "invoke-endpoint",
        "--endpoint-name", "echo",
        "--body", f"fileb://{body}",
        "--content-type", "application/json",
        "--custom-attributes", "trace=cli",
        "--target-variant", "VariantA",
        "--endpoint-url", url, "--region", REGION, "--no-sign-request",
        str(outfile),
    )  # fmt: skip
    assert code == 0, err
    assert outfile.read_bytes() == b'{"instances": [[1.0, 2.0]]}'
    metadata = json.loads(out)
    assert metadata["ContentType"] == "application/json"
    assert metadata["InvokedProductionVariant"] == "VariantA"
    assert metadata["CustomAttributes"] == "trace=cli"
    assert journal[-1].signature_ok


async def cli_invoke(url: str, endpoint: str, outfile: str) -> tuple[int, str, str]:
    """`aws sagemaker-runtime invoke-endpoint` of ``endpoint`` through the gateway, unsigned."""
    return await run_aws_cli(
        "sagemaker-runtime", "invoke-endpoint", "--endpoint-name", endpoint, "--body", "e30=",
        "--endpoint-url", url, "--region", REGION, "--no-sign-request", outfile,
    )  # fmt: skip


async def test_aws_cli_sees_a_validation_error_for_a_bad_name(served_gateway, journal, tmp_path):
    """The CLI reports the gateway's refusal as the service's ValidationError."""
    url, _ = served_gateway
    code, _, err = await cli_invoke(url, "bad_name", str(tmp_path / "out"))
    assert code != 0
    assert "ValidationError" in err
    assert "endpointName" in err
    assert journal == []


async def test_aws_cli_sees_model_error(served_gateway, tmp_path):
    """A model failure reaches the CLI as ModelError (status 424)."""
    url, _ = served_gateway
    code, _, err = await cli_invoke(url, "model-error", str(tmp_path / "out"))
    assert code != 0
    assert "ModelError" in err


async def test_served_gateway_logs_one_json_line_per_request_and_stops_on_sigterm(
    served_gateway, tmp_path
):
    """Each request is one JSON access line without the body, its durations finer than the
    event loop's millisecond clock; SIGTERM ends the process with 0."""
    url, process = served_gateway
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.post(
                f"{url}/endpoints/echo/invocations",
                data=b"secret-body-value",
                headers={"X-Amzn-SageMaker-Custom-Attributes": "secret-attribute-value"},
            ) as response:
                assert response.status == 200
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        out, _ = await process.communicate()
    assert process.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "request"]
    assert [(line["endpoint"], line["status"]) for line in access] == [("echo", 200)] * 5
    # uvloop's loop.time() moves in whole milliseconds: sub-millisecond overheads would vanish.
    assert any(line["duration_ms"] != int(line["duration_ms"]) for line in access)
    assert any(line["upstream_ms"] != int(line["upstream_ms"]) for line in access)
    assert "secret-body-value" not in out.decode()
    assert "secret-attribute-value" not in out.decode()
    assert SECRET_KEY not in out.decode()


async def test_sigterm_during_ten_in_flight_requests_lets_all_finish(served_gateway, journal):
    """SIGTERM while 10 requests of 1.5 s are in flight: all 10 succeed, the process exits 0."""
    url, process = served_gateway
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def call() -> int:
            async with session.post(f"{url}/endpoints/slow-1500/invocations", data=b"{}") as r:
                await r.read()
                return r.status

        calls = [asyncio.create_task(call()) for _ in range(10)]
        await poll(lambda: len(journal) == 10)
        process.send_signal(signal.SIGTERM)
        statuses = await asyncio.gather(*calls)
    async with asyncio.timeout(20):
        await process.wait()
    assert statuses == [200] * 10
    assert process.returncode == 0


async def test_the_demo_runs_without_aws_and_prints_its_table():
    """`sagemaker-gateway demo` exits 0 and shows the calls, the stream part by part with its
    time to first part (the model's 500 ms, or more) and largest gap (its 800 ms stall, or
    thereabouts) read back from /metrics, and per-variant figures."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=gateway_process_env(HOME="/tmp"),
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    text = out.decode()
    assert process.returncode == 0, err.decode()
    assert "VariantA" in text and "VariantB" in text
    assert "ModelError" in text and "ValidationError" in text
    assert "part 5:" in text
    figures = re.search(
        r"read back from GET /metrics: time to first part ([\d.]+) s, largest gap ([\d.]+) s, "
        r"5 parts, outcome completed",
        text,
    )
    assert figures, text
    assert float(figures[1]) >= 0.5 and float(figures[2]) >= 0.7
    assert "From GET /metrics, per endpoint and variant" in text


async def test_two_workers_share_the_port_and_metrics_report_their_sum(emulator, tmp_path):
    """`serve --workers 2`: both processes answer requests on one port, /metrics sums them,
    and SIGTERM stops both (exit 0)."""
    port = free_port()
    env = served_env(emulator)
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2",
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await poll(lambda: healthy(url), deadline_s=30)
        sent = 0

        async def served_by_both() -> bool:
            nonlocal sent
            # New connections are spread over the two listeners by the kernel.
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)
            ) as session:
                for _ in range(10):
                    async with session.post(
                        f"{url}/endpoints/echo/invocations", data=b"{}"
                    ) as response:
                        assert response.status == 200
                        sent += 1
            text = log_path.read_text()
            lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            pids = {line["pid"] for line in lines if line["event"] == "request"}
            return len(pids) == 2

        await poll(served_by_both, deadline_s=30, interval_s=0)

        async def all_counted() -> bool:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{url}/metrics") as response,
            ):
                exposition = await response.text()
            total = sum(
                float(line.rsplit(" ", 1)[1])
                for line in exposition.splitlines()
                if line.startswith("sagemaker_gateway_requests_total{")
            )
            assert total <= sent
            return total == sent

        # A worker records a request just after writing its answer: a scrape the other worker
        # serves at that moment may not count it yet.
        await poll(all_counted, deadline_s=10)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    assert process.returncode == 0
