"""The Prometheus metrics of DESIGN section 6, on a registry the app is given.

Only endpoint names that passed validation become label values, at most max_endpoint_labels
of them; variants come from the upstream's answer, or from a validated TargetVariant the answer
did not confirm, at most MAX_UNCONFIRMED_VARIANTS of those per endpoint. A caller sending
made-up names therefore mints a bounded number of series. Requests refused before forwarding
are counted by reason alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import __version__

PREFIX = "sagemaker_gateway_"
#: The endpoint label of names past max_endpoint_labels; "_" keeps it apart from real names.
OTHER_ENDPOINTS = "_other"
#: TargetVariant names an answer did not confirm that become variant labels, per endpoint
#: (an endpoint has at most ten production variants); later ones count as "_other".
MAX_UNCONFIRMED_VARIANTS = 10
OTHER_VARIANTS = "_other"

#: From half a millisecond (the gateway's own overhead) to past the model's 60-second limit:
#: 58 and 62 bracket it, so answers that hit the limit stand apart from slow ones that did not.
DURATION_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 58.0, 62.0, 75.0, 120.0,
)  # fmt: skip
#: 100 bytes to the 6 MB the service accepts.
SIZE_BUCKETS_BYTES = (
    100, 1_000, 10_000, 100_000, 500_000, 1_000_000, 2_500_000, 5_242_880, 6_291_456,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Series:
    """The children every request of one (endpoint, variant, operation[, component]) uses."""

    request_duration: Any
    request_size: Any
    response_size: Any


@dataclass(slots=True)
class Outcome:
    """What happened to one forwarded-or-refused request with a valid endpoint name."""

    request_id: str
    operation: str
    endpoint: str
    variant: str = "unknown"
    #: Whether ``variant`` came from the upstream's answer (else from the caller's TargetVariant).
    variant_confirmed: bool = False
    status: int = 0
    error: str = ""
    duration_s: float = 0.0
    upstream_duration_s: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    model_timeout: bool = False
    #: SageMaker's x-amzn-RequestId for a forwarded call: the id its caller got back.
    upstream_request_id: str | None = None
    #: The validated InferenceComponentName, "" when none (a label only when opted in).
    inference_component: str = ""
    #: The caller's label (a policy name, "_anonymous" or "_other"; with a policy only) and
    #: the identity it proved (for the access line; None when anonymous).
    caller: str = ""
    caller_identity: str | None = None


class Metrics:
    """The gateway's metric families, created on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        component_label: bool = False,
        multiprocess: bool = False,
        max_endpoint_labels: int = 500,
        caller_label: bool = False,
    ) -> None:
        """``multiprocess``: values live in PROMETHEUS_MULTIPROC_DIR, summed over --workers.

        At most ``max_endpoint_labels`` endpoint names become label values; later ones are
        counted under ``OTHER_ENDPOINTS``. Without an endpoint allowlist any well-formed name
        is forwarded, so this bounds the series a caller can create by inventing names.
        ``caller_label``: requests and durations carry the caller's label (with a policy,
        whose names bound its values).
        """
        self.registry = registry
        self.multiprocess = multiprocess
        self.max_endpoint_labels = max_endpoint_labels
        self._endpoints: set[str] = set()
        self._unconfirmed_variants: dict[str, set[str]] = {}
        # Label children, looked up once per label set instead of once per request (the
        # families themselves bound how many there are).
        self._series: dict[tuple[str, ...], _Series] = {}
        self._counters: dict[tuple[str, ...], Any] = {}
        self._upstream: dict[tuple[str, ...], Any] = {}
        self._in_flight: dict[str, Any] = {}
        # The inference component is an opt-in label: an endpoint may host hundreds of them.
        self.component_label = component_label
        per_variant: tuple[str, ...] = ("endpoint", "variant", "operation")
        if component_label:
            per_variant = (*per_variant, "inference_component")
        self.caller_label = caller_label
        if caller_label:
            per_variant = (*per_variant, "caller")
        self.requests = Counter(
            PREFIX + "requests",
            "Requests with a valid endpoint name, by outcome",
            (*per_variant, "status", "error"),
            registry=registry,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Whole request inside the gateway, from first byte read to last byte written",
            per_variant,
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            PREFIX + "upstream_duration_seconds",
            "Time waiting on SageMaker, from sending the request to the end of its answer",
            per_variant,
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.model_timeouts = Counter(
            PREFIX + "model_timeouts",
            "ModelError answers reporting that the model did not answer within its time limit",
            ("endpoint", "variant"),
            registry=registry,
        )
        self.in_flight = Gauge(
            PREFIX + "in_flight_requests",
            "Requests being handled now",
            ("endpoint",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            PREFIX + "rejected_requests",
            "Requests answered by the gateway without forwarding, by reason",
            ("reason",),
            registry=registry,
        )
        self.request_size = Histogram(
            PREFIX + "request_body_bytes",
            "Request body sizes",
            ("endpoint", "operation"),
            buckets=SIZE_BUCKETS_BYTES,
            registry=registry,
        )
        self.response_size = Histogram(
            PREFIX + "response_body_bytes",
            "Response body sizes",
            ("endpoint", "operation"),
            buckets=SIZE_BUCKETS_BYTES,
            registry=registry,
        )
        # A gauge rather than an Info: Info has no multiprocess mode.
        Gauge(
            PREFIX + "build_info",
            "The running gateway's version",
            ("version",),
            registry=registry,
            multiprocess_mode="max",
        ).labels(__version__).set(1)
        if not multiprocess:  # a callback gauge reads one process; it cannot be summed
            Gauge(
                PREFIX + "event_loop_tasks",
                "asyncio tasks alive in the gateway's event loop (a leak shows as steady growth)",
                registry=registry,
            ).set_function(_event_loop_tasks)

    def endpoint_label(self, endpoint: str) -> str:
        """The label value for ``endpoint``: its name, or OTHER_ENDPOINTS past the budget."""
        return _budgeted(self._endpoints, endpoint, self.max_endpoint_labels, OTHER_ENDPOINTS)

    def variant_label(self, endpoint: str, outcome: Outcome) -> str:
        """The label value for ``outcome``'s variant under the endpoint label ``endpoint``."""
        variant = outcome.variant
        if outcome.variant_confirmed or variant == "unknown":
            return variant
        seen = self._unconfirmed_variants.setdefault(endpoint, set())
        return _budgeted(seen, variant, MAX_UNCONFIRMED_VARIANTS, OTHER_VARIANTS)

    def in_flight_for(self, endpoint: str) -> Any:
        """The in-flight gauge of ``endpoint`` (its label child, looked up once)."""
        label = self.endpoint_label(endpoint)
        gauge = self._in_flight.get(label)
        if gauge is None:
            gauge = self._in_flight[label] = self.in_flight.labels(label)
        return gauge

    def reject(self, reason: str) -> None:
        """Count a request refused before forwarding."""
        self.rejected.labels(reason).inc()

    def record(self, outcome: Outcome) -> None:
        """Count one finished request with a valid endpoint name."""
        endpoint = self.endpoint_label(outcome.endpoint)
        variant = self.variant_label(endpoint, outcome)
        labels: tuple[str, ...] = (endpoint, variant, outcome.operation)
        if self.component_label:
            labels = (*labels, outcome.inference_component)
        if self.caller_label:
            labels = (*labels, outcome.caller)
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(
                self.request_duration.labels(*labels),
                self.request_size.labels(endpoint, outcome.operation),
                self.response_size.labels(endpoint, outcome.operation),
            )
        outcome_labels = (*labels, str(outcome.status), outcome.error)
        counter = self._counters.get(outcome_labels)
        if counter is None:
            counter = self._counters[outcome_labels] = self.requests.labels(*outcome_labels)
        counter.inc()
        series.request_duration.observe(outcome.duration_s)
        if outcome.upstream_duration_s is not None:
            # Looked up only for forwarded requests: a child, once made, is exported.
            upstream = self._upstream.get(labels)
            if upstream is None:
                upstream = self._upstream[labels] = self.upstream_duration.labels(*labels)
            upstream.observe(outcome.upstream_duration_s)
        if outcome.model_timeout:
            self.model_timeouts.labels(endpoint, variant).inc()
        series.request_size.observe(outcome.request_bytes)
        series.response_size.observe(outcome.response_bytes)


def _budgeted(seen: set[str], value: str, budget: int, other: str) -> str:
    """``value`` as a label value while at most ``budget`` values are in ``seen``, else
    ``other``: the first ``budget`` values seen keep their own series."""
    if value in seen:
        return value
    if len(seen) < budget:
        seen.add(value)
        return value
    return other


def _event_loop_tasks() -> float:
    """Tasks of the running loop; 0 when read outside one (no loop, no tasks to leak)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0
