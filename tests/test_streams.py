"""Response-stream figures: time to first part, gaps, parts, bytes and how each stream ends.

End to end, streams go through the running gateway to the emulator, whose stream endpoints set
the first-part delay, the pace, a stall and the way the stream ends by their names; values are
read back with ``registry.get_sample_value``. Timing windows are generous: they say what was
measured, not how fast this machine is. The meter itself is fed bytes split at every offset,
with the clock given, so that a part split across reads, or several parts in one read, are
counted exactly.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway.emulator import eventstream
from gateway.emulator.app import STATE
from gateway.metrics import OTHER_ERROR_CODE, Metrics, Outcome
from gateway.streams import StreamMeter
from tests.waiting import poll

P = "sagemaker_gateway_"
STREAM_OPERATION = "InvokeEndpointWithResponseStream"
BODY = b"abcdefghij"  # five parts of two bytes each


def per_variant(endpoint: str, variant: str = "AllTraffic") -> dict[str, str]:
    return {"endpoint": endpoint, "variant": variant}


def ended(endpoint: str, outcome: str, error_code: str = "") -> dict[str, str]:
    return {**per_variant(endpoint), "outcome": outcome, "error_code": error_code}


def value(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(P + name, labels)


def streams_ended(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    """Every streams_total series: (endpoint, outcome, error_code) -> count."""
    return {
        (s.labels["endpoint"], s.labels["outcome"], s.labels["error_code"]): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == P + "streams_total"
    }


async def read_stream(
    gateway, endpoint: str, body: bytes = BODY, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """POST to the stream path through the gateway; the status and every byte that came."""
    url = gateway.make_url(f"/endpoints/{endpoint}/invocations-response-stream")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        data = b""
        try:
            async for chunk in response.content.iter_any():
                data += chunk
        except aiohttp.ClientPayloadError:
            pass  # a stream the gateway had to cut: what came before is what counts
        return response.status, data


# ---------------------------------------------------------------------------------------------
# End to end: the emulator's stream endpoints through the gateway
# ---------------------------------------------------------------------------------------------


async def test_a_paced_stream_records_its_first_part_its_gaps_and_its_parts(gateway, registry):
    """A 300 ms first-part delay, then 5 parts 50 ms apart: one first-part sample between 0.3
    and 0.45 s, four gaps near 0.05 s (none under 10 ms, none over 250 ms), 5 parts of the
    body's 10 bytes, and one stream completed."""
    status, _ = await read_stream(gateway, "stream-5-50-first-300")
    assert status == 200
    labels = per_variant("stream-5-50-first-300")
    assert value(registry, "stream_first_part_seconds_count", labels) == 1
    assert 0.3 <= value(registry, "stream_first_part_seconds_sum", labels) <= 0.45
    assert value(registry, "stream_part_gap_seconds_count", labels) == 4
    assert value(registry, "stream_part_gap_seconds_bucket", {**labels, "le": "0.01"}) == 0
    assert value(registry, "stream_part_gap_seconds_bucket", {**labels, "le": "0.25"}) == 4
    assert 0.15 <= value(registry, "stream_part_gap_seconds_sum", labels) <= 0.6
    assert value(registry, "stream_parts_total", labels) == 5
    assert value(registry, "stream_bytes_total", labels) == len(BODY)
    assert value(registry, "stream_largest_gap_seconds_count", labels) == 1
    assert streams_ended(registry) == {("stream-5-50-first-300", "completed", ""): 1}


async def test_a_stall_in_the_middle_is_the_streams_largest_gap(gateway, registry):
    """Six parts 20 ms apart with a 600 ms stall after the third: one gap over 0.5 s among the
    five, and the stream's largest gap is that stall."""
    endpoint = "stream-6-20-stall-3-600"
    assert (await read_stream(gateway, endpoint, b"abcdef"))[0] == 200
    labels = per_variant(endpoint)
    assert value(registry, "stream_part_gap_seconds_count", labels) == 5
    assert value(registry, "stream_part_gap_seconds_bucket", {**labels, "le": "0.5"}) == 4
    largest_s = value(registry, "stream_largest_gap_seconds_sum", labels)
    assert 0.6 <= largest_s <= 1.5


@pytest.mark.parametrize(
    ("end", "error_code"),
    [("fail", "StreamBroken"), ("timeout", "ModelInvocationTimeExceeded")],
)
async def test_a_model_stream_error_after_two_parts_counts_with_its_error_code(
    gateway, registry, end, error_code
):
    """Two parts, then a ModelStreamError: outcome model_stream_error with its ErrorCode, the
    two parts counted, and the request an error ModelStreamError (status 200)."""
    endpoint = f"stream-{end}-2"
    status, data = await read_stream(gateway, endpoint)
    assert status == 200 and b"ModelStreamError" in data
    assert streams_ended(registry) == {(endpoint, "model_stream_error", error_code): 1}
    assert value(registry, "stream_parts_total", per_variant(endpoint)) == 2
    request = {**per_variant(endpoint), "operation": STREAM_OPERATION, "status": "200",
               "error": "ModelStreamError"}  # fmt: skip
    assert value(registry, "requests_total", request) == 1


async def test_an_internal_stream_failure_counts_as_one(gateway, registry):
    """Two parts, then an InternalStreamFailure: outcome internal_stream_failure, no code."""
    await read_stream(gateway, "stream-internal-failure-2")
    assert streams_ended(registry) == {
        ("stream-internal-failure-2", "internal_stream_failure", ""): 1
    }


async def test_a_caller_leaving_mid_stream_counts_caller_left_and_cancels_upstream(
    gateway, registry, emulator, journal
):
    """The caller hangs up after the first of five parts 10 s apart: caller_left, one part,
    499, and the emulator's stream is cancelled long before its next part was due."""
    endpoint = "stream-5-10000"
    url = gateway.make_url(f"/endpoints/{endpoint}/invocations-response-stream")
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=BODY) as response:
            assert response.status == 200
            await response.content.readany()  # the first part
            assert emulator.app[STATE].pending  # the model is still producing
            response.close()
        await poll(lambda: not emulator.app[STATE].pending, deadline_s=5.0)
    await poll(lambda: bool(streams_ended(registry)))
    assert streams_ended(registry) == {(endpoint, "caller_left", ""): 1}
    assert value(registry, "stream_parts_total", per_variant(endpoint)) == 1
    request = {**per_variant(endpoint), "operation": STREAM_OPERATION, "status": "499",
               "error": "ClientClosedRequest"}  # fmt: skip
    assert value(registry, "requests_total", request) == 1
    assert len(journal) == 1


async def test_a_stall_past_stream_idle_timeout_counts_idle_timeout(
    start_gateway, registry, emulator
):
    """With stream_idle_timeout 0.3 s, a 10 s stall after part 2 is cut: idle_timeout, two
    parts, and the emulator's stream cancelled."""
    gateway = await start_gateway(stream_idle_timeout_s=0.3)
    endpoint = "stream-4-10-stall-2-10000"
    status, _ = await read_stream(gateway, endpoint)
    assert status == 200
    await poll(lambda: not emulator.app[STATE].pending, deadline_s=5.0)
    assert streams_ended(registry) == {(endpoint, "idle_timeout", ""): 1}
    assert value(registry, "stream_parts_total", per_variant(endpoint)) == 2


async def test_the_wait_for_the_first_part_is_bounded_by_upstream_timeout(
    start_gateway, registry, emulator
):
    """The first part is due within upstream_timeout (0.4 s here), however long
    stream_idle_timeout is: a 10 s first-part delay is cut as idle_timeout with no part."""
    gateway = await start_gateway(upstream_timeout_s=0.4, stream_idle_timeout_s=60.0)
    endpoint = "stream-2-10-first-10000"
    await read_stream(gateway, endpoint)
    await poll(lambda: not emulator.app[STATE].pending, deadline_s=5.0)
    assert streams_ended(registry) == {(endpoint, "idle_timeout", ""): 1}
    assert value(registry, "stream_first_part_seconds_count", per_variant(endpoint)) == 0


async def test_an_upstream_connection_reset_mid_stream_counts_upstream_cut(gateway, registry):
    """Three parts, then the emulator resets the connection: upstream_cut, three parts."""
    await read_stream(gateway, "stream-cut-3")
    assert streams_ended(registry) == {("stream-cut-3", "upstream_cut", ""): 1}
    assert value(registry, "stream_parts_total", per_variant("stream-cut-3")) == 3


async def test_stream_series_carry_the_inference_component_when_that_label_is_on(start_gateway):
    """With inference_component_label on, the stream families carry the component."""
    gateway = await start_gateway(inference_component_label=True)
    headers = {"X-Amzn-SageMaker-Inference-Component": "ic-7"}
    assert (await read_stream(gateway, "components", b"{}", headers))[0] == 200
    registry = gateway.app.metrics.registry
    labels = {**per_variant("components"), "inference_component": "ic-7"}
    assert registry.get_sample_value(P + "stream_parts_total", labels) == 1
    assert registry.get_sample_value(P + "stream_first_part_seconds_count", labels) == 1
    ended_labels = {**labels, "outcome": "completed", "error_code": ""}
    assert registry.get_sample_value(P + "streams_total", ended_labels) == 1


async def test_stream_series_share_the_endpoint_label_budget(start_gateway):
    """With max_endpoint_labels 1, a second stream endpoint counts as endpoint="_other"."""
    gateway = await start_gateway(max_endpoint_labels=1)
    for endpoint in ("stream-2", "stream-3"):
        assert (await read_stream(gateway, endpoint))[0] == 200
    registry = gateway.app.metrics.registry
    assert registry.get_sample_value(P + "stream_parts_total", per_variant("stream-2")) == 2
    assert registry.get_sample_value(P + "stream_parts_total", per_variant("_other")) == 3
    assert registry.get_sample_value(P + "stream_parts_total", per_variant("stream-3")) is None


async def test_several_streams_at_once_are_counted_apart(gateway, registry):
    """Ten streams of 4 parts at once: 40 parts, 30 gaps, 10 first parts, 10 completed."""
    await asyncio.gather(*(read_stream(gateway, "stream-4-20") for _ in range(10)))
    labels = per_variant("stream-4-20")
    assert value(registry, "stream_parts_total", labels) == 40
    assert value(registry, "stream_part_gap_seconds_count", labels) == 30
    assert value(registry, "stream_first_part_seconds_count", labels) == 10
    assert streams_ended(registry) == {("stream-4-20", "completed", ""): 10}


# ---------------------------------------------------------------------------------------------
# The meter, fed bytes as a relay would hand them over, on a clock the test sets
# ---------------------------------------------------------------------------------------------

ARRIVED_AT = 1000.0
PARTS = [b"first", b"second part", b"3"]
MESSAGES = [eventstream.payload_part(part) for part in PARTS]
WIRE = b"".join(MESSAGES)


def metered() -> tuple[StreamMeter, Outcome, Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    outcome = Outcome(
        request_id="r-1", operation=STREAM_OPERATION, endpoint="llm", variant="Blue",
        variant_confirmed=True, arrived_at=ARRIVED_AT,
    )  # fmt: skip
    return StreamMeter(outcome, metrics.stream_series(outcome)), outcome, metrics, registry


def finish(meter: StreamMeter, outcome: Outcome, metrics: Metrics) -> None:
    meter.finish()
    metrics.record(outcome)


@pytest.mark.parametrize("cut", range(1, len(WIRE)))
def test_a_message_split_across_reads_counts_once_when_it_is_whole(cut):
    """Whatever byte the first read ends at, three parts count, each when its last byte came:
    those whole in the first read at its time, the rest at the second read's."""
    meter, outcome, metrics, registry = metered()
    meter.relayed(WIRE[:cut], ARRIVED_AT + 0.5)
    whole_in_first = sum(1 for end in _message_ends() if end <= cut)
    assert meter.figures.parts == whole_in_first
    meter.relayed(WIRE[cut:], ARRIVED_AT + 0.75)
    finish(meter, outcome, metrics)
    figures = outcome.stream
    assert figures is not None
    assert (figures.parts, figures.payload_bytes) == (3, sum(map(len, PARTS)))
    assert figures.first_part_s == (0.5 if whole_in_first else 0.75)
    assert figures.outcome == "completed"
    labels = {"endpoint": "llm", "variant": "Blue"}
    assert registry.get_sample_value(P + "stream_part_gap_seconds_count", labels) == 2
    expected_gaps_s = 0.25 if 0 < whole_in_first < 3 else 0.0
    assert registry.get_sample_value(P + "stream_part_gap_seconds_sum", labels) == expected_gaps_s


def _message_ends() -> list[int]:
    ends, total = [], 0
    for message in MESSAGES:
        total += len(message)
        ends.append(total)
    return ends


def test_gaps_are_the_time_between_parts_and_the_largest_is_kept():
    """Parts relayed at +0.25, +0.375 and +1.375 s: first part 0.25 s, gaps 0.125 and 1 s,
    the largest 1 s (times a binary fraction can hold exactly)."""
    meter, outcome, metrics, registry = metered()
    for message, at in zip(MESSAGES, (0.25, 0.375, 1.375), strict=True):
        meter.relayed(message, ARRIVED_AT + at)
    finish(meter, outcome, metrics)
    assert outcome.stream is not None
    assert (outcome.stream.first_part_s, outcome.stream.largest_gap_s) == (0.25, 1.0)
    labels = {"endpoint": "llm", "variant": "Blue"}

    def gaps_up_to(bound: str) -> float | None:
        return registry.get_sample_value(
            P + "stream_part_gap_seconds_bucket", {**labels, "le": bound}
        )

    assert (gaps_up_to("0.1"), gaps_up_to("0.25"), gaps_up_to("1.0")) == (0, 1, 2)
    assert registry.get_sample_value(P + "stream_part_gap_seconds_sum", labels) == 1.125
    assert registry.get_sample_value(P + "stream_largest_gap_seconds_sum", labels) == 1.0


def test_a_stream_that_ends_inside_a_message_counts_upstream_cut():
    """Bytes that end halfway through a message, then a clean end: upstream_cut, one part."""
    meter, outcome, metrics, _ = metered()
    meter.relayed(MESSAGES[0] + MESSAGES[1][:7], ARRIVED_AT + 0.1)
    finish(meter, outcome, metrics)
    assert outcome.stream is not None
    assert (outcome.stream.outcome, outcome.stream.parts) == ("upstream_cut", 1)


def test_bytes_that_are_not_an_event_stream_count_malformed_and_stop_being_read():
    """A message with a broken checksum: malformed; what follows is not read (nor counted)."""
    meter, outcome, metrics, _ = metered()
    broken = MESSAGES[1][:-1] + bytes([MESSAGES[1][-1] ^ 0xFF])
    meter.relayed(MESSAGES[0] + broken, ARRIVED_AT + 0.1)
    meter.relayed(MESSAGES[2], ARRIVED_AT + 0.2)
    finish(meter, outcome, metrics)
    assert outcome.stream is not None
    assert (outcome.stream.outcome, outcome.stream.parts) == ("malformed", 1)


@pytest.mark.parametrize(
    ("members", "error_code", "label"),
    [
        ({"Message": "m", "ErrorCode": "StreamBroken"}, "StreamBroken", "StreamBroken"),
        ({"Message": "m", "ErrorCode": "SomethingNew"}, "SomethingNew", OTHER_ERROR_CODE),
        ({"Message": "m", "ErrorCode": "x" * 500}, "x" * 100, OTHER_ERROR_CODE),
        ({"Message": "m"}, "", OTHER_ERROR_CODE),
    ],
)
def test_an_error_code_becomes_a_label_only_when_the_api_documents_it(members, error_code, label):
    """The ErrorCode is logged as sent (cut to 100 characters); as a label it is a documented
    code or "_other", so SageMaker's strings cannot mint series."""
    meter, outcome, metrics, registry = metered()
    meter.relayed(
        MESSAGES[0] + eventstream.exception_message("ModelStreamError", members), ARRIVED_AT
    )
    finish(meter, outcome, metrics)
    assert outcome.stream is not None
    assert (outcome.stream.outcome, outcome.stream.error_code) == ("model_stream_error", error_code)
    assert outcome.error == "ModelStreamError"
    labels = {"endpoint": "llm", "variant": "Blue", "outcome": "model_stream_error"}
    assert registry.get_sample_value(P + "streams_total", {**labels, "error_code": label}) == 1


def test_an_exception_message_decides_the_outcome_even_if_the_stream_is_cut_after_it():
    """An InternalStreamFailure, then the connection cut: internal_stream_failure, not a cut."""
    meter, outcome, *_ = metered()
    failure = eventstream.exception_message("InternalStreamFailure", {"Message": "m"})
    meter.relayed(failure, ARRIVED_AT + 0.1)
    meter.finish("upstream_cut")
    assert outcome.stream is not None
    assert outcome.stream.outcome == "internal_stream_failure"
