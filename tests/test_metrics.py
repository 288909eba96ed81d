"""The metrics of DESIGN section 6, read back exactly from the registry after known traffic.

Every test sends requests through the running gateway to the emulator and reads values with
``registry.get_sample_value``: the numbers an on-call engineer will see, not how they are made.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway import __version__
from gateway.metrics import MAX_UNCONFIRMED_VARIANTS, OTHER_VARIANTS
from tests.waiting import poll

P = "sagemaker_gateway_"
INVOKE = "InvokeEndpoint"
#: Valid under every other rule, but refused for its underscores: it must never become a label.
BAD_ENDPOINT = "Bad_Endpoint_Name_7f3c"
OVERSIZED_ATTRIBUTES = "a" * 1025  # CustomAttributes allows 1024 characters

#: Label names per metric family, exactly as DESIGN section 6 lists them.
LABEL_NAMES = {
    P + "requests": {"endpoint", "variant", "operation", "status", "error"},
    P + "request_duration_seconds": {"endpoint", "variant", "operation"},
    P + "upstream_duration_seconds": {"endpoint", "variant", "operation"},
    P + "model_timeouts": {"endpoint", "variant"},
    P + "in_flight_requests": {"endpoint"},
    P + "rejected_requests": {"reason"},
    P + "request_body_bytes": {"endpoint", "operation"},
    P + "response_body_bytes": {"endpoint", "operation"},
    P + "build_info": {"version"},
    P + "event_loop_tasks": set(),
    P + "stream_first_part_seconds": {"endpoint", "variant"},
    P + "stream_part_gap_seconds": {"endpoint", "variant"},
    P + "stream_largest_gap_seconds": {"endpoint", "variant"},
    P + "stream_parts": {"endpoint", "variant"},
    P + "stream_bytes": {"endpoint", "variant"},
    P + "streams": {"endpoint", "variant", "outcome", "error_code"},
}


async def invoke(
    gateway,
    endpoint: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"{}",
    suffix: str = "invocations",
) -> tuple[int, Mapping[str, str]]:
    """POST to the gateway; the status and response headers (the body is read and dropped)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.make_url(f"/endpoints/{endpoint}/{suffix}"), data=body, headers=headers
        ) as response,
    ):
        await response.read()
        return response.status, response.headers.copy()


def requests_total(
    registry: CollectorRegistry,
    endpoint: str,
    variant: str,
    status: str,
    error: str = "",
    operation: str = INVOKE,
) -> float | None:
    """``requests_total`` for one exact label set, None when that series does not exist."""
    labels = {"endpoint": endpoint, "variant": variant, "operation": operation}
    labels |= {"status": status, "error": error}
    return registry.get_sample_value(P + "requests_total", labels)


def samples(registry: CollectorRegistry, name: str) -> list[Any]:
    """Every sample named ``name`` in the registry."""
    return [s for metric in registry.collect() for s in metric.samples if s.name == name]


def per_variant(endpoint: str, variant: str) -> dict[str, str]:
    return {"endpoint": endpoint, "variant": variant, "operation": INVOKE}


async def test_alternating_variants_count_three_and_three(gateway, registry):
    """Six calls to an endpoint that alternates variants count 3 for VariantA and 3 for B."""
    for _ in range(6):
        status, _ = await invoke(gateway, "variants")
        assert status == 200
    assert requests_total(registry, "variants", "VariantA", "200") == 3
    assert requests_total(registry, "variants", "VariantB", "200") == 3
    assert sum(s.value for s in samples(registry, P + "requests_total")) == 6
    for variant in ("VariantA", "VariantB"):
        labels = per_variant("variants", variant)
        assert registry.get_sample_value(P + "request_duration_seconds_count", labels) == 3
        assert registry.get_sample_value(P + "upstream_duration_seconds_count", labels) == 3


async def test_two_300_ms_calls_put_their_time_in_the_duration_sums(gateway, registry):
    """Two calls to slow-300 add between 0.55 and 1.5 s to both duration sums, 2 to each count."""
    for _ in range(2):
        assert (await invoke(gateway, "slow-300"))[0] == 200
    labels = per_variant("slow-300", "AllTraffic")
    whole_s = registry.get_sample_value(P + "request_duration_seconds_sum", labels)
    upstream_s = registry.get_sample_value(P + "upstream_duration_seconds_sum", labels)
    assert 0.55 <= upstream_s <= whole_s <= 1.5
    assert registry.get_sample_value(P + "request_duration_seconds_count", labels) == 2
    assert registry.get_sample_value(P + "upstream_duration_seconds_count", labels) == 2


async def test_model_timeouts_count_as_model_timeouts_and_model_errors(gateway, registry):
    """Three ModelErrors that report the model's time limit: model_timeouts_total 3, status 424."""
    for _ in range(3):
        status, headers = await invoke(gateway, "model-timeout")
        assert (status, headers["x-amzn-ErrorType"]) == (424, "ModelError")
    timeouts = {"endpoint": "model-timeout", "variant": "unknown"}
    assert registry.get_sample_value(P + "model_timeouts_total", timeouts) == 3
    assert requests_total(registry, "model-timeout", "unknown", "424", "ModelError") == 3
    assert registry.get_sample_value(P + "rejected_requests_total", {"reason": "timeout"}) is None


async def test_a_model_error_that_is_not_a_timeout_is_not_counted_as_one(gateway, registry):
    """A 424 ModelError from a container that answered 500 is an error, not a model timeout."""
    assert (await invoke(gateway, "model-error"))[0] == 424
    assert requests_total(registry, "model-error", "unknown", "424", "ModelError") == 1
    assert samples(registry, P + "model_timeouts_total") == []


async def test_the_gateways_own_deadline_is_a_gateway_timeout_only(start_gateway, registry):
    """A hit of upstream_timeout counts as 504 GatewayTimeout, never as a model timeout."""
    gateway = await start_gateway(upstream_timeout_s=0.3)
    status, headers = await invoke(gateway, "hang")
    assert (status, headers["x-amzn-ErrorType"]) == (504, "GatewayTimeout")
    assert requests_total(registry, "hang", "unknown", "504", "GatewayTimeout") == 1
    assert [(s.labels, s.value) for s in samples(registry, P + "requests_total")] == [
        ({**per_variant("hang", "unknown"), "status": "504", "error": "GatewayTimeout"}, 1.0)
    ]
    assert samples(registry, P + "model_timeouts_total") == []
    assert samples(registry, P + "rejected_requests_total") == []
    waited_s = registry.get_sample_value(
        P + "upstream_duration_seconds_sum", per_variant("hang", "unknown")
    )
    assert waited_s >= 0.3


async def test_rejections_count_by_reason_and_a_bad_name_never_becomes_a_label(gateway, registry):
    """4 oversized headers and 1 bad endpoint name: 5 rejections; no series holds the bad name."""
    for _ in range(4):
        status, _ = await invoke(
            gateway, "echo", headers={"X-Amzn-SageMaker-Custom-Attributes": OVERSIZED_ATTRIBUTES}
        )
        assert status == 400
    assert (await invoke(gateway, BAD_ENDPOINT))[0] == 400

    rejected = {
        s.labels["reason"]: s.value for s in samples(registry, P + "rejected_requests_total")
    }
    assert rejected == {"header_too_long": 4, "endpoint_name": 1}
    everywhere = [s for metric in registry.collect() for s in metric.samples]
    assert all(BAD_ENDPOINT not in value for s in everywhere for value in s.labels.values())
    assert all(OVERSIZED_ATTRIBUTES not in value for s in everywhere for value in s.labels.values())
    # A request refused for a header still names its (valid) endpoint in the per-endpoint series.
    assert requests_total(registry, "echo", "unknown", "400", "ValidationError") == 4
    assert samples(registry, P + "upstream_duration_seconds_count") == []


async def test_in_flight_reads_one_while_a_request_is_held_and_zero_after(gateway, registry):
    """in_flight_requests{endpoint} is 1 while a call waits on the upstream, 0 once it has gone."""

    def in_flight() -> float | None:
        return registry.get_sample_value(P + "in_flight_requests", {"endpoint": "hang"})

    held = asyncio.create_task(invoke(gateway, "hang"))
    try:
        await poll(lambda: in_flight() == 1)  # the request waits on the upstream
    finally:
        held.cancel()  # the caller goes away; the gateway cancels its upstream call
        with pytest.raises(asyncio.CancelledError):
            await held
    await poll(lambda: in_flight() == 0)


async def test_variant_comes_from_the_response_else_the_request_else_unknown(gateway, registry):
    """The upstream's variant header wins; else the requested TargetVariant; else 'unknown'."""
    target = {"X-Amzn-SageMaker-Target-Variant": "VariantB"}
    assert (await invoke(gateway, "echo"))[0] == 200  # the emulator answers AllTraffic
    assert (await invoke(gateway, "model-error", headers=target))[0] == 424  # names no variant
    assert (await invoke(gateway, "model-error"))[0] == 424
    assert (await invoke(gateway, "throttle"))[0] == 400

    assert requests_total(registry, "echo", "AllTraffic", "200") == 1
    assert requests_total(registry, "model-error", "VariantB", "424", "ModelError") == 1
    assert requests_total(registry, "model-error", "unknown", "424", "ModelError") == 1
    assert requests_total(registry, "throttle", "unknown", "400", "ThrottlingException") == 1


async def test_unconfirmed_target_variants_are_labels_up_to_a_budget(gateway, registry):
    """TargetVariant names that no answer confirmed become variant labels for at most
    MAX_UNCONFIRMED_VARIANTS per endpoint; later ones count as "_other", so a caller inventing
    names cannot grow the series without bound. Confirmed variants are not limited by them."""
    for n in range(MAX_UNCONFIRMED_VARIANTS + 5):
        target = {"X-Amzn-SageMaker-Target-Variant": f"Invented{n}"}
        assert (await invoke(gateway, "model-error", headers=target))[0] == 424
    variants = {
        s.labels["variant"]
        for s in samples(registry, P + "requests_total")
        if s.labels["endpoint"] == "model-error"
    }
    expected = {f"Invented{n}" for n in range(MAX_UNCONFIRMED_VARIANTS)} | {OTHER_VARIANTS}
    assert variants == expected
    assert requests_total(registry, "model-error", OTHER_VARIANTS, "424", "ModelError") == 5
    target = {"X-Amzn-SageMaker-Target-Variant": "VariantB"}
    assert (await invoke(gateway, "variants", headers=target))[0] == 200
    assert requests_total(registry, "variants", "VariantB", "200") == 1


async def test_operation_labels_are_the_api_operation_names(gateway, registry):
    """Each route counts under its API operation's name, whatever the upstream answered."""
    for suffix in ("invocations", "async-invocations", "invocations-response-stream"):
        await invoke(gateway, "echo", suffix=suffix)
    operations = {s.labels["operation"] for s in samples(registry, P + "requests_total")}
    assert operations == {INVOKE, "InvokeEndpointAsync", "InvokeEndpointWithResponseStream"}
    assert requests_total(registry, "echo", "AllTraffic", "200") == 1


async def test_every_family_has_exactly_the_designed_label_names(gateway, registry):
    """Each metric family carries the label names of DESIGN section 6, no more and no fewer."""
    for endpoint in ("variants", "model-timeout", BAD_ENDPOINT):
        await invoke(gateway, endpoint)
    await invoke(gateway, "stream-2", suffix="invocations-response-stream")
    seen = {}
    for metric in registry.collect():
        for sample in metric.samples:
            seen.setdefault(metric.name, set()).update(set(sample.labels) - {"le"})
    assert seen == LABEL_NAMES


async def test_build_info_names_the_running_version(gateway, registry):
    """build_info{version} is 1 for the running version before any traffic."""
    value = registry.get_sample_value(P + "build_info", {"version": __version__})
    assert value == 1


@pytest.mark.parametrize(
    ("family", "first_bound", "last_bound"),
    [
        ("stream_first_part_seconds", 0.01, 60.0),
        ("stream_part_gap_seconds", 0.001, 10.0),
        ("stream_largest_gap_seconds", 0.001, 10.0),
    ],
)
async def test_stream_buckets_run_from_milliseconds_to_the_longest_wait_that_matters(
    gateway, registry, family, first_bound, last_bound
):
    """Time to first part: buckets from 10 ms to the model's 60 s; gaps between parts (and a
    stream's largest): from 1 ms to a 10 s stall."""
    await invoke(gateway, "stream-2", suffix="invocations-response-stream")
    bounds = sorted(
        float(s.labels["le"])
        for s in samples(registry, P + family + "_bucket")
        if s.labels["endpoint"] == "stream-2"
    )
    finite = [bound for bound in bounds if not math.isinf(bound)]
    assert (finite[0], finite[-1], bounds[-1]) == (first_bound, last_bound, math.inf)


@pytest.mark.parametrize("family", ["request_duration_seconds", "upstream_duration_seconds"])
async def test_duration_buckets_resolve_milliseconds_and_the_60_second_limit(
    gateway, registry, family
):
    """First bound <= 2 ms, one bound in 55-65 s, the last finite bound >= 60 s."""
    await invoke(gateway, "echo")
    bounds = sorted(
        float(s.labels["le"])
        for s in samples(registry, P + family + "_bucket")
        if s.labels["endpoint"] == "echo"
    )
    finite = [bound for bound in bounds if not math.isinf(bound)]
    assert bounds[-1] == math.inf
    assert finite[0] <= 0.002
    assert any(55 <= bound <= 65 for bound in finite)
    assert finite[-1] >= 60


async def test_the_inference_component_label_is_opt_in(start_gateway):
    """Off by default; with inference_component_label on, requests_total and the histograms
    carry the validated InferenceComponentName."""
    header = {"X-Amzn-SageMaker-Inference-Component": "ic-7"}
    plain = await start_gateway()
    await invoke(plain, "components", headers=header)
    labelled = await start_gateway(inference_component_label=True)
    await invoke(labelled, "components", headers=header)
    base = {"endpoint": "components", "variant": "AllTraffic", "operation": "InvokeEndpoint"}
    outcome = {"status": "200", "error": ""}
    plain_registry = plain.app.metrics.registry
    labelled_registry = labelled.app.metrics.registry
    assert plain_registry.get_sample_value(P + "requests_total", {**base, **outcome}) == 1
    with_component = {**base, **outcome, "inference_component": "ic-7"}
    assert labelled_registry.get_sample_value(P + "requests_total", with_component) == 1
    count = {**base, "inference_component": "ic-7"}
    assert labelled_registry.get_sample_value(P + "request_duration_seconds_count", count) == 1


async def test_a_caller_that_hangs_up_is_counted_as_499(gateway, registry, journal):
    """A request whose caller disconnects is ClientClosedRequest (499), never a success."""
    _, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(
        b"POST /endpoints/hang/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    )
    await writer.drain()
    await poll(lambda: len(journal) == 1)
    writer.close()
    labels = {"endpoint": "hang", "variant": "unknown", "operation": "InvokeEndpoint",
              "status": "499", "error": "ClientClosedRequest"}  # fmt: skip
    await poll(lambda: registry.get_sample_value(P + "requests_total", labels) == 1)


async def test_endpoint_names_past_the_label_budget_count_as_other(start_gateway):
    """With max_endpoint_labels 2, a third endpoint name is counted under endpoint="_other"
    (in requests_total and in_flight): invented names cannot grow the series without bound."""
    gateway = await start_gateway(max_endpoint_labels=2)
    for endpoint in ("echo", "variants", "echo-invented-1", "echo-invented-2", "echo"):
        assert (await invoke(gateway, endpoint))[0] == 200
    registry = gateway.app.metrics.registry
    endpoints = {
        sample.labels["endpoint"]
        for metric in registry.collect()
        for sample in metric.samples
        if "endpoint" in sample.labels
    }
    assert endpoints == {"echo", "variants", "_other"}
    other = {"endpoint": "_other", "variant": "AllTraffic", "operation": "InvokeEndpoint",
             "status": "200", "error": ""}  # fmt: skip
    assert registry.get_sample_value(P + "requests_total", other) == 2
