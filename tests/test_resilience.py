"""Load, faults, slow and vanishing clients, caps, retries and credentials, over real sockets."""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import aiohttp
import pytest

from gateway.credentials import CredentialSource
from gateway.emulator import JOURNAL, EmulatorSettings
from gateway.signing import SigningCredentials
from tests.conftest import ACCESS_KEY, REGION, SECRET_KEY, start_emulator
from tests.rawhttp import build_request, raw_request
from tests.waiting import poll

IN_FLIGHT = "sagemaker_gateway_in_flight_requests"


async def invoke(session: aiohttp.ClientSession, gateway, endpoint: str, body: bytes = b"{}"):
    """POST one InvokeEndpoint; return (status, ErrorType header or None)."""
    async with session.post(
        gateway.make_url(f"/endpoints/{endpoint}/invocations"), data=body
    ) as response:
        await response.read()
        return response.status, response.headers.get("x-amzn-ErrorType")


def unlimited_session(**kwargs) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), **kwargs)


async def test_300_concurrent_requests_to_a_200_ms_model_all_succeed(gateway, journal):
    """300 requests at once, each held 200 ms upstream: 300 answers of 200, none refused."""
    async with unlimited_session() as session:
        results = await asyncio.gather(*(invoke(session, gateway, "slow-200") for _ in range(300)))
    assert collections.Counter(status for status, _ in results) == {200: 300}
    assert len(journal) == 300


async def test_2000_mixed_requests_each_get_a_well_formed_answer(start_gateway, journal):
    """Healthy, reset, 503, hanging, failing and throttled endpoints mixed, 2,000 requests:
    every one is answered, every error carries x-amzn-ErrorType, every healthy one succeeds,
    and the hanging ones get 504 at the deadline."""
    gateway = await start_gateway(upstream_timeout_s=1.0, max_retries=0)
    mix = ["echo"] * 10 + ["reset", "unavailable", "hang", "model-error", "throttle"]
    endpoints = [mix[i % len(mix)] for i in range(2000)]
    expected = {
        "echo": (200, None),
        "reset": (503, "ServiceUnavailable"),
        "unavailable": (503, "ServiceUnavailable"),
        "hang": (504, "GatewayTimeout"),
        "model-error": (424, "ModelError"),
        "throttle": (400, "ThrottlingException"),
    }
    limit = asyncio.Semaphore(200)

    async def one(endpoint):
        async with limit:
            return endpoint, await invoke(session, gateway, endpoint)

    async with unlimited_session() as session:
        results = await asyncio.gather(*(one(endpoint) for endpoint in endpoints))
    wrong = [(endpoint, got) for endpoint, got in results if got != expected[endpoint]]
    assert wrong == []
    assert len(results) == 2000


async def test_dribbling_clients_are_cut_at_the_head_deadline_and_others_are_served(
    start_gateway, journal
):
    """200 connections sending a head one byte at a time are closed at head_timeout, while
    ordinary requests keep being answered."""
    gateway = await start_gateway(head_timeout_s=1.0)
    head = build_request("POST", "/endpoints/echo/invocations", [], b"{}")
    stop_dribbling = asyncio.Event()
    closed_after: list[float] = []

    async def dribbler():
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        opened = time.monotonic()
        try:
            for byte in head:
                if stop_dribbling.is_set():
                    return
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    async with asyncio.timeout(0.1):
                        if await reader.read(1) == b"":
                            closed_after.append(time.monotonic() - opened)
                            return
                except TimeoutError:
                    continue
        except ConnectionError:
            closed_after.append(time.monotonic() - opened)
        finally:
            writer.close()

    dribblers = [asyncio.create_task(dribbler()) for _ in range(200)]
    try:
        async with unlimited_session() as session:
            served = [await invoke(session, gateway, "echo") for _ in range(30)]
        assert served == [(200, None)] * 30
        await poll(lambda: len(closed_after) == 200, deadline_s=15)
    finally:
        stop_dribbling.set()
        await asyncio.gather(*dribblers)
    assert min(closed_after) >= 0.9  # not before the deadline
    assert len(journal) == 30
    rejected = gateway.app.metrics.registry.get_sample_value(
        "sagemaker_gateway_rejected_requests_total", {"reason": "head_timeout"}
    )
    assert rejected == 200


async def test_clients_that_disconnect_cancel_their_upstream_requests(start_gateway, emulator):
    """20 clients that hang up mid-request: in-flight returns to 0 and the upstream requests
    are cancelled (their connections to the emulator close)."""
    gateway = await start_gateway(upstream_timeout_s=30.0)
    journal = emulator.app[JOURNAL]
    writers = []
    for _ in range(20):
        _, writer = await asyncio.open_connection(gateway.host, gateway.port)
        writer.write(build_request("POST", "/endpoints/hang/invocations", [], b"{}"))
        await writer.drain()
        writers.append(writer)
    state = gateway.app.state
    in_flight = gateway.app.metrics.registry

    await poll(lambda: len(journal) == 20)
    assert state.in_flight == 20
    assert in_flight.get_sample_value(IN_FLIGHT, {"endpoint": "hang"}) == 20
    for writer in writers:
        writer.close()
    await poll(lambda: state.in_flight == 0)
    assert in_flight.get_sample_value(IN_FLIGHT, {"endpoint": "hang"}) == 0
    await poll(lambda: len(emulator.runner.server.connections) == 0)


async def test_the_concurrency_cap_answers_429_at_once(start_gateway, journal):
    """With max_concurrent_requests 2 and two requests held, a third gets 429 at once, counted
    as rejected for concurrency_limit (the SageMakerGatewaySaturated alert's reason)."""
    gateway = await start_gateway(max_concurrent_requests=2, upstream_timeout_s=30.0)
    async with unlimited_session() as session:
        held = [asyncio.create_task(invoke(session, gateway, "hang")) for _ in range(2)]
        await poll(lambda: len(journal) == 2)
        assert await invoke(session, gateway, "echo") == (429, "ThrottlingException")
        rejected = gateway.app.metrics.registry.get_sample_value(
            "sagemaker_gateway_rejected_requests_total", {"reason": "concurrency_limit"}
        )
        assert rejected == 1
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    assert len(journal) == 2


async def test_endpoints_outside_the_allowlist_get_403(start_gateway, journal):
    """allowed_endpoints ('echo', 'slow-*'): those pass, anything else is AccessDeniedException."""
    gateway = await start_gateway(allowed_endpoints=("echo", "slow-*"))
    async with unlimited_session() as session:
        assert await invoke(session, gateway, "echo") == (200, None)
        assert await invoke(session, gateway, "slow-10") == (200, None)
        assert await invoke(session, gateway, "variants") == (403, "AccessDeniedException")
    assert [entry.endpoint for entry in journal] == ["echo", "slow-10"]


async def test_throttling_is_retried_within_max_retries(start_gateway, journal):
    """A throttled request is sent 1 + max_retries times, then the throttle is passed on."""
    gateway = await start_gateway(max_retries=2)
    async with unlimited_session() as session:
        assert await invoke(session, gateway, "throttle") == (400, "ThrottlingException")
    assert len(journal) == 3


@pytest.mark.parametrize(("endpoint", "expected"), [("model-error", 424), ("hang", 504)])
async def test_model_errors_and_timeouts_are_never_retried(
    start_gateway, journal, endpoint, expected
):
    """A 424 or a deadline hit goes upstream exactly once."""
    gateway = await start_gateway(max_retries=2, upstream_timeout_s=0.5)
    async with unlimited_session() as session:
        status, _ = await invoke(session, gateway, endpoint)
    assert status == expected
    assert len(journal) == 1


async def test_the_retry_budget_stops_retries_multiplying_load(start_gateway, journal):
    """60 throttled requests in a burst: retries are capped by the budget, far below 2 each."""
    gateway = await start_gateway(max_retries=2)
    async with unlimited_session() as session:
        results = await asyncio.gather(*(invoke(session, gateway, "throttle") for _ in range(60)))
    assert all(result == (400, "ThrottlingException") for result in results)
    retries = len(journal) - 60
    assert 0 < retries < 30


async def test_sigterm_grace_keeps_serving_then_drains_in_flight(start_gateway, journal):
    """On stop: /readyz is 503 at once, new requests are taken during the grace period,
    in-flight ones finish, then the listener is closed."""
    gateway = await start_gateway()
    async with unlimited_session() as session:
        in_flight = [asyncio.create_task(invoke(session, gateway, "slow-800")) for _ in range(5)]
        await poll(lambda: len(journal) == 5)
        stopping = asyncio.create_task(gateway.server.stop(grace_s=0.5))
        ready = await raw_request(gateway.host, gateway.port, build_request("GET", "/readyz", []))
        assert ready.status == 503
        assert await invoke(session, gateway, "echo") == (200, None)  # within the grace
        assert [await task for task in in_flight] == [(200, None)] * 5
        await stopping
        with pytest.raises(aiohttp.ClientConnectionError):
            await invoke(session, gateway, "echo")


async def test_healthz_answers_while_credentials_are_still_resolving(start_gateway, journal):
    """/healthz is 200 as soon as the listener is open, even while the credential lookup
    blocks; /readyz and requests say 503 until it finishes, then work."""
    release = threading.Event()

    def slow_resolver():
        release.wait(10)
        return SigningCredentials(ACCESS_KEY, SECRET_KEY)

    gateway = await start_gateway(credentials=CredentialSource(slow_resolver, check_interval_s=0.1))
    health = await raw_request(gateway.host, gateway.port, build_request("GET", "/healthz", []))
    ready = await raw_request(gateway.host, gateway.port, build_request("GET", "/readyz", []))
    early = await raw_request(
        gateway.host, gateway.port, build_request("POST", "/endpoints/echo/invocations", [])
    )
    release.set()
    assert (health.status, ready.status, early.status) == (200, 503, 503)
    assert journal == []

    async def ready_now():
        answer = await raw_request(gateway.host, gateway.port, build_request("GET", "/readyz", []))
        return answer.status == 200

    await poll(ready_now)


async def test_expired_credentials_fail_closed_and_refreshed_ones_are_used(start_gateway):
    """Expired credentials: 503 and /readyz 503, nothing forwarded. When the chain hands out
    new keys, the gateway signs with them without a restart."""
    emulator = await start_emulator(
        EmulatorSettings(
            credentials={"AKIDOLD": "old-secret", "AKIDNEW": "new-secret"}, region=REGION
        )
    )
    journal = emulator.app[JOURNAL]
    current = {"credentials": SigningCredentials("AKIDOLD", "old-secret", expires_at=1.0)}
    gateway = await start_gateway(
        credentials=CredentialSource(lambda: current["credentials"], check_interval_s=0.05),
        upstream_url=str(emulator.make_url("")).rstrip("/"),
    )
    request = build_request("POST", "/endpoints/echo/invocations", [], b"{}")
    assert (await raw_request(gateway.host, gateway.port, request)).status == 503
    ready = await raw_request(gateway.host, gateway.port, build_request("GET", "/readyz", []))
    assert ready.status == 503
    assert journal == []

    current["credentials"] = SigningCredentials(
        "AKIDNEW", "new-secret", expires_at=time.time() + 3600
    )

    async def answered():
        return (await raw_request(gateway.host, gateway.port, request)).status == 200

    await poll(answered)
    assert all(entry.signature_ok for entry in journal)
    assert (
        "Credential=AKIDNEW/"
        in dict((n.lower(), v) for n, v in journal[-1].headers)["authorization"]
    )


async def test_forty_concurrent_5mb_bodies_are_all_forwarded(start_gateway, journal):
    """40 bodies of 5 MB at once: all forwarded whole (memory is measured in bench/)."""
    # 400 MB through one process: on a busy 2-core machine that can take longer than the
    # other tests' 2-second upstream deadline, which is not what this test is about.
    gateway = await start_gateway(upstream_timeout_s=30.0)
    body = b"m" * 5_242_880
    async with unlimited_session() as session:
        results = await asyncio.gather(*(invoke(session, gateway, "echo", body) for _ in range(40)))
    assert results == [(200, None)] * 40
    assert [entry.body_length for entry in journal] == [5_242_880] * 40


async def test_the_admin_listener_serves_health_and_metrics_but_never_forwards(
    start_gateway, journal
):
    """With admin_port set, probes and Prometheus use the second listener; an invocation sent
    there is a 404 and reaches nothing, while the main listener keeps forwarding."""
    gateway = await start_gateway(admin_port=0)
    admin_port = gateway.server.admin_port
    assert admin_port and admin_port != gateway.port
    for path in ("/healthz", "/readyz", "/metrics"):
        answer = await raw_request("127.0.0.1", admin_port, build_request("GET", path, []))
        assert answer.status == 200, path
    invoke_there = build_request("POST", "/endpoints/echo/invocations", [], b"{}")
    refused = await raw_request("127.0.0.1", admin_port, invoke_there)
    assert refused.status == 404
    assert refused.headers["x-amzn-errortype"] == "UnknownOperationException"
    assert journal == []
    async with unlimited_session() as session:
        assert await invoke(session, gateway, "echo") == (200, None)


async def test_connections_beyond_max_connections_are_closed_on_arrival(start_gateway, journal):
    """With max_connections 5 and 5 idle connections open, a sixth is closed at once (and
    counted); once one closes, new connections are served again."""
    gateway = await start_gateway(max_connections=5)
    idle = [await asyncio.open_connection(gateway.host, gateway.port) for _ in range(5)]
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    rejected = gateway.app.metrics.registry.get_sample_value(
        "sagemaker_gateway_rejected_requests_total", {"reason": "connection_limit"}
    )
    assert rejected == 1
    for _, idle_writer in idle:
        idle_writer.close()
    await poll(lambda: gateway.server.open_connections == 0)
    async with unlimited_session() as session:
        assert await invoke(session, gateway, "echo") == (200, None)


async def test_a_request_at_start_up_waits_for_the_first_credential_lookup(start_gateway, journal):
    """A request that arrives while the first lookup is still running waits for it (up to the
    connect timeout) instead of failing with 503; the answer is signed and forwarded."""
    release = threading.Event()

    def slow_resolver():
        release.wait(10)
        return SigningCredentials(ACCESS_KEY, SECRET_KEY)

    gateway = await start_gateway(
        credentials=CredentialSource(slow_resolver, check_interval_s=60), connect_timeout_s=5.0
    )
    request = build_request("POST", "/endpoints/echo/invocations", [], b"{}")
    pending = asyncio.create_task(raw_request(gateway.host, gateway.port, request))
    await poll(lambda: gateway.app.state.in_flight == 1)
    release.set()
    assert (await pending).status == 200
    assert len(journal) == 1
