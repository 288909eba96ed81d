"""``sagemaker-gateway demo``: the emulator and the gateway in one process, a few calls, a table.

No AWS account is involved: the emulator plays SageMaker and checks every signature the
gateway makes with a pair of demo keys; the calls are made by botocore, unsigned, exactly as a
service team's code would make them.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import botocore.session
from aiohttp import web
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import make_app
from gateway.config import Config
from gateway.credentials import CredentialSource
from gateway.emulator import EmulatorSettings, make_emulator_app
from gateway.log import configure_logging
from gateway.serving import GatewayServer
from gateway.signing import SigningCredentials

DEMO_ACCESS_KEY = "AKIDDEMO"
DEMO_SECRET_KEY = "demo-secret-key"
DEMO_REGION = "us-east-1"
STREAM_PARTS = 5
#: The demo's model: its first part after 500 ms, then one every 200 ms, but 800 ms after the
#: third (see gateway/emulator/streaming.py for the name's grammar).
STREAM_ENDPOINT = f"stream-{STREAM_PARTS}-200-first-500-stall-3-800"

#: (what it shows, endpoint, invoke_endpoint parameters)
CALLS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("a JSON echo", "echo", {"ContentType": "application/json"}),
    ("two variants share traffic", "variants", {}),
    ("... and alternate", "variants", {}),
    ("the caller picks a variant", "variants", {"TargetVariant": "VariantB"}),
    ("a slow model (300 ms)", "slow-300", {}),
    ("the model fails", "model-error", {}),
    ("the model times out", "model-timeout", {}),
    ("SageMaker throttles", "throttle", {}),
    ("refused: bad endpoint name", "bad_name", {}),
    ("refused: TargetVariant too long", "echo", {"TargetVariant": "v" * 64}),
)


@dataclass
class Row:
    what: str
    endpoint: str
    variant: str
    status: int
    error: str
    latency_ms: float


def run_demo() -> int:
    """Run the demo; the exit status is 0 when every call got the answer it should."""
    configure_logging("warning")  # the table is the output; access lines would drown it
    return asyncio.run(_demo())


async def _demo() -> int:
    emulator_port = free_port()
    emulator = make_emulator_app(
        EmulatorSettings(
            credentials={DEMO_ACCESS_KEY: DEMO_SECRET_KEY},
            region=DEMO_REGION,
            model_timeout_s=0.5,  # the real limit is 60 s; the demo does not wait a minute
        )
    )
    config = Config(
        port=0,
        region=DEMO_REGION,
        upstream_url=f"http://127.0.0.1:{emulator_port}",
        upstream_timeout_s=5.0,
    )
    registry = CollectorRegistry()
    credentials = CredentialSource.static(SigningCredentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY))
    gateway = make_app(config, registry=registry, credentials=credentials)

    emulator_runner = web.AppRunner(emulator, access_log=None, handler_cancellation=True)
    await emulator_runner.setup()
    await web.TCPSite(emulator_runner, "127.0.0.1", emulator_port).start()
    server = GatewayServer(gateway, config)
    await server.start()
    gateway_url = f"http://127.0.0.1:{server.port}"
    try:
        print(f"emulator (plays SageMaker, checks signatures): http://127.0.0.1:{emulator_port}")
        print(f"gateway  (unsigned in, SigV4 out):             {gateway_url}\n")
        rows = await asyncio.to_thread(_invoke_all, gateway_url)
        print(_table(rows))
        print(
            "\nA response stream (InvokeEndpointWithResponseStream), printed part by part as it"
            f"\narrives from {STREAM_ENDPOINT} (first part after 500 ms, then one every"
            "\n200 ms, with an 800 ms stall after the third):"
        )
        parts = await asyncio.to_thread(_stream, gateway_url)
        exposition = await asyncio.to_thread(_get, f"{gateway_url}/metrics")
    finally:
        await server.stop(grace_s=0)
        await emulator_runner.cleanup()
    stream = _stream_figures(exposition)
    print(
        "\nThe same stream, read back from GET /metrics: "
        f"time to first part {stream['first_part_s']:.3f} s, "
        f"largest gap {stream['largest_gap_s']:.3f} s, {stream['parts']:g} parts, "
        f"outcome {stream['outcome']}"
    )
    print()
    print(_per_variant_summary(exposition))
    expected = (200, 200, 200, 200, 200, 424, 424, 400, 400, 400)
    ok = (
        tuple(row.status for row in rows) == expected
        and parts == stream["parts"] == STREAM_PARTS
        and stream["outcome"] == "completed"
    )
    return 0 if ok else 1


def _client(gateway_url: str) -> Any:
    """An unsigned botocore client for the gateway, as a service team would make one."""
    return botocore.session.get_session().create_client(
        "sagemaker-runtime",
        region_name=DEMO_REGION,
        endpoint_url=gateway_url,
        config=BotoConfig(signature_version=UNSIGNED, retries={"total_max_attempts": 1}),
    )


def _stream(gateway_url: str) -> int:
    """Stream from the demo's streaming endpoint; print each part as it arrives."""
    started = time.perf_counter()
    response = _client(gateway_url).invoke_endpoint_with_response_stream(
        EndpointName=STREAM_ENDPOINT,
        Body=b"Parts of an answer arrive as the model writes them.",
        ContentType="text/plain",
    )
    count = 0
    for event in response["Body"]:
        if "PayloadPart" in event:
            count += 1
            text = event["PayloadPart"]["Bytes"].decode()
            print(f"  {(time.perf_counter() - started) * 1000:7.1f} ms  part {count}: {text!r}")
    return count


def _invoke_all(gateway_url: str) -> list[Row]:
    """Make every demo call with an unsigned botocore client, as a service would."""
    client = _client(gateway_url)
    rows = []
    for what, endpoint, params in CALLS:
        started = time.perf_counter()
        try:
            response = client.invoke_endpoint(EndpointName=endpoint, Body=b'{"x": 1}', **params)
            response["Body"].read()
            status, error = 200, ""
            variant = response.get("InvokedProductionVariant", "")
        except ClientError as exc:
            status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
            error = exc.response["Error"]["Code"]
            variant = ""
        latency_ms = (time.perf_counter() - started) * 1000
        rows.append(Row(what, endpoint, variant, status, error, latency_ms))
    return rows


def _table(rows: list[Row]) -> str:
    header = ("call", "operation", "endpoint", "variant", "status", "error", "latency")
    cells = [header] + [
        (
            row.what,
            "InvokeEndpoint",
            row.endpoint if len(row.endpoint) <= 20 else row.endpoint[:17] + "...",
            row.variant or "-",
            str(row.status),
            row.error or "-",
            f"{row.latency_ms:7.1f} ms",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _stream_figures(exposition: str) -> dict[str, Any]:
    """The one demo stream's figures, from the exposition: with one stream, each histogram's
    sum is that stream's value."""
    figures: dict[str, Any] = {"outcome": "-", "parts": 0.0}
    sums = {
        "sagemaker_gateway_stream_first_part_seconds_sum": "first_part_s",
        "sagemaker_gateway_stream_largest_gap_seconds_sum": "largest_gap_s",
        "sagemaker_gateway_stream_parts_total": "parts",
    }
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.labels.get("endpoint") != STREAM_ENDPOINT:
                continue
            if sample.name in sums:
                figures[sums[sample.name]] = sample.value
            elif sample.name == "sagemaker_gateway_streams_total" and sample.value:
                figures["outcome"] = sample.labels["outcome"]
    figures.setdefault("first_part_s", float("nan"))
    figures.setdefault("largest_gap_s", float("nan"))
    return figures


def _per_variant_summary(exposition: str) -> str:
    """Per-variant figures, read back from the gateway's /metrics exposition."""
    lines = ["From GET /metrics, per endpoint and variant:"]
    totals: dict[str, float] = {"model_timeouts": 0.0, "rejected_requests": 0.0}
    for family in text_string_to_metric_families(exposition):
        name = family.name.removeprefix("sagemaker_gateway_")
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if name == "requests":
                labels = sample.labels
                lines.append(
                    f"  requests_total  endpoint={labels['endpoint']:<14} "
                    f"variant={labels['variant']:<10} status={labels['status']} "
                    f"error={labels['error'] or '-':<20} {sample.value:g}"
                )
            elif name in totals:
                totals[name] += sample.value
    lines.append(f"  model_timeouts_total (all endpoints)   {totals['model_timeouts']:g}")
    lines.append(f"  rejected_requests_total (all reasons)  {totals['rejected_requests']:g}")
    return "\n".join(lines)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for the demo, the tests and the bench)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
