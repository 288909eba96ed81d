"""Failover over real sockets: two emulators as two Regions, each checking its own signatures.

The primary is the gateway's Region (us-east-1); the secondary is us-west-2, reached through
``region_urls``. The breakers run on a clock the test moves by hand.
"""

from __future__ import annotations

import aiohttp
import pytest
from botocore.eventstream import EventStreamBuffer
from structlog.testing import capture_logs

from gateway.config import ConfigError, load_config
from gateway.emulator import JOURNAL, EmulatorSettings
from gateway.failover import CircuitBreaker, CircuitState
from tests.conftest import ACCESS_KEY, MODEL_TIMEOUT_S, REGION, SECRET_KEY, start_emulator
from tests.tenancy_support import ManualClock

SECONDARY_REGION = "us-west-2"
ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
STREAM = "invocations-response-stream"


def settings(region: str) -> EmulatorSettings:
    return EmulatorSettings(
        credentials={ACCESS_KEY: SECRET_KEY}, region=region, model_timeout_s=MODEL_TIMEOUT_S
    )


def url_of(server) -> str:
    return str(server.make_url("")).rstrip("/")


def assert_signed_for_its_region(server) -> None:
    unverified = [
        (e.raw_path, e.signature_error) for e in server.app[JOURNAL] if not e.signature_ok
    ]
    assert unverified == [], "an emulator refused the gateway's signature"


@pytest.fixture
async def secondary():
    """The emulator as us-west-2: it accepts only signatures made for us-west-2."""
    server = await start_emulator(settings(SECONDARY_REGION))
    yield server
    await server.runner.cleanup()
    assert_signed_for_its_region(server)


@pytest.fixture
def start_failover(start_gateway, secondary, clock):
    """A gateway with ``fallbacks``, us-west-2 at the secondary emulator, on the manual clock."""

    async def start(fallbacks, **overrides):
        return await start_gateway(
            clock=clock,
            fallbacks=fallbacks,
            region_urls=((SECONDARY_REGION, url_of(secondary)),),
            **overrides,
        )

    return start


async def call(gateway, endpoint: str, *, suffix: str = "invocations", body=b"{}", headers=None):
    """POST through the gateway; (status, headers, body); a cut answer keeps what came."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.make_url(f"/endpoints/{endpoint}/{suffix}"), data=body, headers=headers
        ) as response,
    ):
        data = b""
        try:
            async for chunk in response.content.iter_any():
                data += chunk
        except aiohttp.ClientPayloadError:
            pass  # the caller sees the answer cut
        return response.status, response.headers, data


def sample(gateway, name: str, **labels: str) -> float | None:
    return gateway.app.metrics.registry.get_sample_value(f"sagemaker_gateway_{name}", labels)


def attribute_of(entry) -> str | None:
    return dict((n.lower(), v) for n, v in entry.headers).get(ATTRIBUTES.lower())


async def test_with_the_primary_down_the_secondary_serves_then_the_circuit_heals(
    start_failover, secondary, clock
):
    """Primary listener closed: 50 requests all succeed from us-west-2, each journaled exactly
    once there. After 3 connect failures the primary's circuit opens; with the primary back
    but the circuit open, requests still skip it (its journal stays empty: no connection was
    even tried). After the cool-down one probe goes to the primary, the circuit closes and
    traffic returns to it."""
    down = await start_emulator(settings(REGION))
    port = down.port
    await down.runner.cleanup()  # its listener is closed
    gateway = await start_failover(
        (("echo", (f"{SECONDARY_REGION}/echo",)),),
        upstream_url=f"http://127.0.0.1:{port}",
        circuit_failures=3,
        circuit_cooldown_s=30.0,
        max_retries=1,
    )
    for n in range(50):
        status, headers, _ = await call(gateway, "echo", headers={ATTRIBUTES: f"n={n}"})
        assert status == 200, n
        assert "x-smgw-target" not in headers  # no header unless failover_header asks
    journal = secondary.app[JOURNAL]
    assert [attribute_of(entry) for entry in journal] == [f"n={n}" for n in range(50)]
    assert sample(gateway, "fallbacks_total", endpoint="echo", target="echo", reason="connect") == 3
    skipped = sample(
        gateway, "fallbacks_total", endpoint="echo", target="echo", reason="circuit_open"
    )
    assert skipped == 47
    assert sample(gateway, "circuit_open", target="echo") == 1
    assert sample(gateway, "circuit_open", target="us-west-2/echo") == 0
    assert sample(gateway, "circuit_transitions_total", target="echo", state="open") == 1
    answered = sample(gateway, "target_answers_total", endpoint="echo", target="us-west-2/echo")
    assert answered == 50

    primary = await start_emulator(settings(REGION), port=port)  # back, circuit still open
    try:
        for _ in range(5):
            assert (await call(gateway, "echo"))[0] == 200
        assert primary.app[JOURNAL] == []
        assert len(journal) == 55

        clock.advance(30.0)
        assert (await call(gateway, "echo"))[0] == 200  # the probe
        assert len(primary.app[JOURNAL]) == 1
        assert sample(gateway, "circuit_transitions_total", target="echo", state="half_open") == 1
        assert sample(gateway, "circuit_open", target="echo") == 0
        for _ in range(5):
            assert (await call(gateway, "echo"))[0] == 200
        assert len(primary.app[JOURNAL]) == 6
        assert len(journal) == 55
        assert sample(gateway, "target_answers_total", endpoint="echo", target="echo") == 6
    finally:
        await primary.runner.cleanup()
    assert_signed_for_its_region(primary)


@pytest.mark.parametrize(
    ("endpoint", "status", "error_type"),
    [
        ("model-error", 424, "ModelError"),
        ("no-such-endpoint", 400, "ValidationError"),
        ("hang", 504, "GatewayTimeout"),
    ],
)
async def test_answers_that_may_have_run_reach_the_caller_and_go_nowhere_else(
    start_failover, secondary, journal, endpoint, status, error_type
):
    """A ModelError, a ValidationError and a timeout at the primary are the caller's answer,
    sent upstream once; the secondary's journal stays empty and nothing counts as a fallback."""
    gateway = await start_failover(
        (("*", (f"{SECONDARY_REGION}/echo",)),), upstream_timeout_s=0.5, max_retries=2
    )
    got_status, headers, body = await call(gateway, endpoint)
    assert (got_status, headers["x-amzn-ErrorType"]) == (status, error_type)
    if status != 504:  # SageMaker's own answer, relayed as it came
        assert headers["x-amzn-RequestId"] == journal[0].request_id
        assert body
    assert len(journal) == 1
    assert secondary.app[JOURNAL] == []
    assert sample(gateway, "target_answers_total", endpoint=endpoint, target=endpoint) == (
        None if status == 504 else 1
    )
    families = gateway.app.metrics.registry.collect()
    fallbacks = [s for m in families for s in m.samples if s.name.endswith("fallbacks_total")]
    assert fallbacks == []


async def test_throttling_is_served_by_the_secondary_after_the_retries(
    start_failover, secondary, journal
):
    """ThrottlingException at the primary: retried max_retries times there, then sent once to
    us-west-2, whose answer (and variant) the caller gets; the access line names the endpoint
    asked for and the target that answered."""
    gateway = await start_failover((("throttle", (f"{SECONDARY_REGION}/echo",)),), max_retries=2)
    with capture_logs() as logs:
        status, headers, body = await call(gateway, "throttle", body=b'{"q": 1}')
    assert (status, body) == (200, b'{"q": 1}')
    assert headers["x-Amzn-Invoked-Production-Variant"] == "AllTraffic"
    assert [entry.endpoint for entry in journal] == ["throttle"] * 3
    assert [entry.endpoint for entry in secondary.app[JOURNAL]] == ["echo"]
    reasons = {"endpoint": "throttle", "target": "throttle", "reason": "throttled"}
    assert sample(gateway, "fallbacks_total", **reasons) == 1
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert (line["endpoint"], line["target"], line["variant"], line["status"]) == (
        "throttle", "us-west-2/echo", "AllTraffic", 200,
    )  # fmt: skip


@pytest.mark.parametrize(("endpoint", "reason"), [("unavailable", "unavailable"),
                                                  ("not-ready", "not_ready")])  # fmt: skip
async def test_503_and_model_not_ready_move_to_a_same_region_target(
    start_failover, journal, endpoint, reason
):
    """503 ServiceUnavailable and 429 ModelNotReadyException ran nothing: the request goes to
    the next target, here another endpoint of the same Region, signed as the first was."""
    gateway = await start_failover(((endpoint, ("echo",)),), max_retries=0, failover_header=True)
    status, headers, _ = await call(gateway, endpoint)
    assert status == 200
    assert headers["x-smgw-target"] == "echo"  # asked for by failover_header
    assert [entry.endpoint for entry in journal] == [endpoint, "echo"]
    assert (
        sample(gateway, "fallbacks_total", endpoint=endpoint, target=endpoint, reason=reason) == 1
    )


async def test_with_every_circuit_open_the_caller_gets_503_naming_the_endpoint_at_once(
    start_failover, journal
):
    """Both targets unreachable with circuit_failures 1: the first request fails over and
    gets 503; the next finds both circuits open and is refused without any attempt."""
    down = await start_emulator(settings(REGION))
    await down.runner.cleanup()
    gateway = await start_failover(
        (("echo", ("echo-b",)),),
        upstream_url=url_of(down),
        circuit_failures=1,
        max_retries=0,
    )
    first = await call(gateway, "echo")
    assert (first[0], first[1]["x-amzn-ErrorType"]) == (503, "ServiceUnavailable")
    status, headers, body = await call(gateway, "echo")
    assert (status, headers["x-amzn-ErrorType"]) == (503, "ServiceUnavailable")
    assert b"endpoint echo has its circuit open" in body
    assert sample(gateway, "circuit_open", target="echo-b") == 1


async def test_a_stream_refused_before_answering_fails_over(start_failover, secondary, journal):
    """A response stream answered 503 by the primary is streamed by the secondary, whole."""
    gateway = await start_failover((("unavailable", (f"{SECONDARY_REGION}/stream-3-10",)),))
    status, _, data = await call(gateway, "unavailable", suffix=STREAM, body=b"abcdef")
    assert status == 200
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    parts = [bytes(m.payload) for m in buffer if m.headers.get(":event-type") == "PayloadPart"]
    assert parts == [b"ab", b"cd", b"ef"]
    assert [entry.endpoint for entry in secondary.app[JOURNAL]] == ["stream-3-10"]


async def test_a_stream_cut_after_its_first_part_is_not_sent_elsewhere(
    start_failover, secondary, journal
):
    """The primary resets the connection after two parts: the caller sees the stream cut, as
    without failover, and the secondary never hears of it."""
    gateway = await start_failover((("stream-cut-2", (f"{SECONDARY_REGION}/echo",)),))
    status, _, data = await call(gateway, "stream-cut-2", suffix=STREAM, body=b"abcd")
    assert status == 200
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    assert len([m for m in buffer if m.headers.get(":event-type") == "PayloadPart"]) == 2
    assert len(journal) == 1
    assert secondary.app[JOURNAL] == []


async def test_an_async_invocation_fails_over_like_the_others(start_failover, secondary, journal):
    """InvokeEndpointAsync answered 503 by the primary is accepted (202) by the secondary."""
    gateway = await start_failover((("unavailable", (f"{SECONDARY_REGION}/echo",)),))
    headers = {"X-Amzn-SageMaker-InputLocation": "s3://bucket/input/1.json"}
    status, _, _ = await call(
        gateway, "unavailable", suffix="async-invocations", body=b"", headers=headers
    )
    assert status == 202
    assert [entry.endpoint for entry in secondary.app[JOURNAL]] == ["echo"]


# ---------------------------------------------------------------------------------------------
# The breaker alone, on the manual clock
# ---------------------------------------------------------------------------------------------


def test_a_breaker_opens_after_n_failures_probes_once_after_the_cooldown_and_closes():
    """Closed through 2 failures, open at the 3rd; skipped while cooling down; then exactly
    one probe is let through; its failure reopens, a later probe's success closes."""
    clock = ManualClock()
    states: list[CircuitState] = []
    breaker = CircuitBreaker(3, 10.0, clock, states.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state is CircuitState.CLOSED
    breaker.failed()
    assert (breaker.state, breaker.allow()) == (CircuitState.OPEN, False)
    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert [breaker.allow(), breaker.allow()] == [True, False]  # one probe at a time
    breaker.failed()
    assert (breaker.state, breaker.allow()) == (CircuitState.OPEN, False)
    clock.advance(10.0)
    assert breaker.allow()
    breaker.abandoned()  # a probe that timed out gives its turn back
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is CircuitState.CLOSED
    assert states == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.OPEN,
                      CircuitState.HALF_OPEN, CircuitState.OPEN, CircuitState.HALF_OPEN,
                      CircuitState.CLOSED]  # fmt: skip


def test_a_success_resets_the_count_of_consecutive_failures():
    """Failures must be consecutive: one success in between starts the count again."""
    breaker = CircuitBreaker(2, 10.0, ManualClock(), lambda state: None)
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert breaker.state is CircuitState.CLOSED


def test_fallbacks_and_region_urls_come_from_a_toml_table(tmp_path):
    """The TOML tables become the ordered targets per pattern and the Region's URL."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        'fallbacks = { "rec" = ["rec-b", "us-west-2/rec"], "llm-*" = ["eu-west-1/llm"] }\n'
        'region_urls = { "us-west-2" = "http://127.0.0.1:9001" }\n'
    )
    config = load_config({}, env={"AWS_REGION": REGION}, config_path=str(path))
    assert config.fallbacks == (("rec", ("rec-b", "us-west-2/rec")), ("llm-*", ("eu-west-1/llm",)))
    assert config.region_urls == (("us-west-2", "http://127.0.0.1:9001"),)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"fallbacks": "rec=mars/rec"}, "REGION/endpoint"),
        ({"fallbacks": "rec=bad_name"}, "valid endpoint names"),
        ({"fallbacks": "rec"}, "pattern=target"),
        ({"region_urls": "us-west-2"}, "region=url"),
        ({"circuit_failures": "0"}, "positive"),
    ],
)
def test_a_bad_failover_option_is_one_error_naming_it(flags, needle):
    """Each bad value is refused at start-up with one line naming the option."""
    with pytest.raises(ConfigError) as raised:
        load_config(flags, env={"AWS_REGION": REGION})
    message = str(raised.value)
    assert needle in message and "\n" not in message
    assert next(iter(flags)) in message
