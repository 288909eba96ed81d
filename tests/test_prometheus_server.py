"""A real Prometheus scrapes the running gateway: the numbers, rules and dashboard hold up there.

Debian's ``prometheus`` package provides the server and ``promtool``: ``make test`` installs it
with ``scripts/ensure-test-tools.sh``, and this module runs that script itself if they are missing.
One Prometheus, on a free loopback port with a temporary data directory, scrapes one gateway (and
its emulator) for the whole module; both run in the test process, the gateway on 127.0.0.1.

The Prometheus config is ``deploy/prometheus/prometheus.yml`` itself, with two changes: the
Kubernetes service discovery becomes a file listing targets with the labels Kubernetes discovery
would give them (so the relabelling that picks the gateway containers runs for real), and the
intervals shrink to half a second. It loads ``deploy/prometheus/rules.yml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.app import make_app
from gateway.config import Config
from gateway.credentials import CredentialSource
from gateway.demo import free_port
from gateway.emulator import EmulatorSettings
from gateway.emulator.app import running_emulator
from gateway.serving import GatewayServer
from gateway.signing import SigningCredentials
from tests.conftest import ACCESS_KEY, MODEL_TIMEOUT_S, REGION, SECRET_KEY
from tests.waiting import poll_blocking

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
ENSURE_SCRIPT = REPO / "scripts" / "ensure-test-tools.sh"

JOB = "sagemaker-gateway"
SCRAPE_INTERVAL = "500ms"
#: How long Prometheus may take to start, scrape, or evaluate what a test waits for.
WAIT_DEADLINE_S = 20.0
BAD_ENDPOINT = "Bad_Endpoint_Name_7f3c"
STREAM = "invocations-response-stream"
#: Three parts 30 ms apart, the first 200 ms after the call; and a stream that breaks.
PACED_STREAM = "stream-3-30-first-200"
FAILING_STREAM = "stream-fail-2"
OVERSIZED_ATTRIBUTES = {"X-Amzn-SageMaker-Custom-Attributes": "a" * 1025}
#: Where Kubernetes discovery would place the sidecar whose gateway we scrape.
SIDECAR_POD = {"namespace": "shop", "pod": "recommender-7d9f", "container": "sagemaker-gateway"}
#: Grafana's template variables, as a dashboard viewer with "All" selected would send them.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "namespace": ".*",
    "endpoint": ".*",
    "variant": ".*",
}
#: Values a dashboard picker must offer after the traffic this module sends.
EXPECTED_CHOICES = {
    "namespace": {SIDECAR_POD["namespace"]},
    "endpoint": {"variants", "model-timeout", "hang"},
    "variant": {"VariantA", "VariantB"},
}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """Paths of prometheus and promtool, installed by the setup script if missing (never skip)."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        result = subprocess.run(
            ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"prometheus could not be installed:\n{result.stdout}\n{result.stderr}")
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH after {ENSURE_SCRIPT.name}")
    return {name: str(path) for name, path in found.items()}


def promtool(tools: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, str]:
    """Run promtool; its exit code and its output (stdout and stderr together)."""
    result = subprocess.run(
        [tools["promtool"], *args],
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout.decode()


# ---------------------------------------------------------------------------------------------
# The gateway and its emulator, in an event loop of their own
# ---------------------------------------------------------------------------------------------


class LoopThread:
    """An event loop on a thread, so that module-scoped servers outlive each test's own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float = WAIT_DEADLINE_S) -> Any:
        """Run ``coroutine`` on the loop's thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class Gateway:
    url: str
    port: int
    registry: CollectorRegistry


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory) -> Iterator[Gateway]:
    """The emulator and a gateway on 127.0.0.1, recording into a registry of their own.

    It runs with a policy that lets everyone call everything: its series then carry the caller
    label (all "_anonymous", nobody authenticates) and the reload metrics, so the caller panels
    and rules run on real series, and every other rule and panel is shown to work with it.
    """
    policy = tmp_path_factory.mktemp("policy") / "policy.toml"
    policy.write_text('[default]\nendpoints = ["*"]\n')
    loop = LoopThread()
    stack = contextlib.AsyncExitStack()
    try:
        settings = EmulatorSettings(
            credentials={ACCESS_KEY: SECRET_KEY}, region=REGION, model_timeout_s=MODEL_TIMEOUT_S
        )
        emulator_url = loop.run(stack.enter_async_context(running_emulator(settings)))
        config = Config(
            host="127.0.0.1",
            port=0,
            region=REGION,
            upstream_url=emulator_url,
            upstream_timeout_s=1.0,
            connect_timeout_s=1.0,
            max_retries=0,  # one throttled answer is one ThrottlingException, at once
            # not-ready (429 ModelNotReadyException) fails over to echo; its circuit opens at
            # the third call, and the fourth skips it.
            fallbacks=(("not-ready", ("echo",)),),
            circuit_failures=3,
            drain_timeout_s=1.0,
            policy_file=str(policy),
        )
        registry = CollectorRegistry()
        credentials = CredentialSource.static(SigningCredentials(ACCESS_KEY, SECRET_KEY))
        server = GatewayServer(make_app(config, registry=registry, credentials=credentials), config)
        loop.run(server.start())
        stack.push_async_callback(server.stop, grace_s=0)
        yield Gateway(f"http://127.0.0.1:{server.port}", server.port, registry)
    finally:
        loop.run(stack.aclose())
        loop.close()


def post(
    live_gateway: Gateway,
    endpoint: str,
    headers: dict[str, str] | None = None,
    suffix: str = "invocations",
) -> int:
    """POST a small JSON body to an endpoint through the gateway; the status (a stream is
    read to its end)."""
    request = urllib.request.Request(
        f"{live_gateway.url}/endpoints/{endpoint}/{suffix}",
        data=b"{}",
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return int(error.code)


# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------


def dies_with_us(command: list[str]) -> list[str]:
    """``command`` under setpriv, which has Linux SIGTERM it if pytest dies without cleaning up."""
    setpriv = shutil.which("setpriv")  # util-linux, on every Debian
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


def kubernetes_targets(gateway_port: int, down_port: int) -> list[dict[str, Any]]:
    """What Kubernetes pod discovery reports in one namespace: gateway ports and others."""

    def port(pod: str, app: str, container: str, port_name: str, number: int, **meta: str):
        labels = {
            "__meta_kubernetes_namespace": SIDECAR_POD["namespace"],
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
            "__meta_kubernetes_pod_container_name": container,
            "__meta_kubernetes_pod_container_init": "false",
            "__meta_kubernetes_pod_container_port_name": port_name,
        }
        labels |= {f"__meta_kubernetes_pod_{name}": value for name, value in meta.items()}
        return {"targets": [f"127.0.0.1:{number}"], "labels": labels}

    app_pod = {"label_sagemaker_gateway_sidecar": "true"}
    sidecar = {**app_pod, "container_init": "true"}  # a native sidecar is an init container
    gateway = "sagemaker-gateway"
    return [
        # Kept: the sidecar of an app pod (it serves), and a shared gateway pod that is down.
        port(SIDECAR_POD["pod"], "recommender", gateway, "gateway", gateway_port, **sidecar),
        port("sagemaker-gateway-5c6d", gateway, gateway, "http", down_port),
        # Dropped: the app's own port in the same pod, another app, a finished pod.
        port(SIDECAR_POD["pod"], "recommender", "app", "http", free_port(), **app_pod),
        port("billing-1234", "billing", "app", "http", free_port()),
        port("recommender-old1", "recommender", gateway, "gateway", 1, **sidecar, phase="Failed"),
    ]


def prometheus_config(targets_file: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, discovering from ``targets_file``, on short intervals."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL}
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    del job["kubernetes_sd_configs"]
    job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "1s"}]
    return config


@dataclass
class Prometheus:
    url: str
    config_file: Path
    down_port: int

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer (fails the test otherwise)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with _NO_PROXY.open(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            answer = json.load(error)
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: a list of {metric, value}."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data]

    def values(self, expr: str, label: str) -> dict[str, float]:
        """An instant query as {value of ``label``: sample value}."""
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(expr)}

    def scalar(self, expr: str) -> float | None:
        """The one value of an instant query, None when it has no result."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll until ``condition`` holds, failing after a deadline."""
        poll_blocking(condition, what, deadline_s=WAIT_DEADLINE_S)


@pytest.fixture(scope="module")
def prometheus(tools, live_gateway, tmp_path_factory) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping the gateway every half second."""
    workdir = tmp_path_factory.mktemp("prometheus")
    down_port = free_port()
    targets_file = workdir / "targets.json"
    targets_file.write_text(json.dumps(kubernetes_targets(live_gateway.port, down_port)))
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(prometheus_config(targets_file), indent=2))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    command = [
        tools["prometheus"],
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    process = subprocess.Popen(dies_with_us(command), stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", config_file, down_port)
    try:
        server.wait_until(lambda: _ready(server, process), "Prometheus is ready")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _ready(server: Prometheus, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"Prometheus exited with {process.returncode}"
    try:
        with _NO_PROXY.open(f"{server.url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def family_total(registry: CollectorRegistry, sample_name: str) -> float:
    return sum(
        s.value for metric in registry.collect() for s in metric.samples if s.name == sample_name
    )


@pytest.fixture(scope="module")
def scraped(live_gateway, prometheus) -> Prometheus:
    """Known traffic sent in two rounds, each scraped before going on, then the rules evaluated.

    Two rounds, so that every counter has grown between two scrapes and rates are not zero.
    In all: 6 calls to ``variants`` (3 per variant), 3 model timeouts, 2 throttled calls, 2 answers
    503, 1 gateway timeout, 4 oversized headers and 1 bad endpoint name (5 rejections); 4 calls
    to ``not-ready`` that echo answers (3 after a 429, 1 with the circuit open); and
    response streams: 3 paced ones that complete and 2 that end in a ModelStreamError.
    """
    second_round = [
        ("variants", None), ("variants", None), ("variants", None), ("variants", None),
        ("model-timeout", None), ("model-timeout", None), ("throttle", None), ("hang", None),
        ("unavailable", None), ("not-ready", None), ("not-ready", None),
        ("echo", OVERSIZED_ATTRIBUTES), ("echo", OVERSIZED_ATTRIBUTES),
        ("echo", OVERSIZED_ATTRIBUTES),
    ]  # fmt: skip
    first_round = [
        ("variants", None), ("variants", None), ("model-timeout", None), ("throttle", None),
        ("unavailable", None), ("echo", OVERSIZED_ATTRIBUTES), (BAD_ENDPOINT, None),
        ("not-ready", None), ("not-ready", None),
    ]  # fmt: skip
    prometheus.wait_until(
        lambda: prometheus.scalar(f'up{{job="{JOB}", pod="{SIDECAR_POD["pod"]}"}}') == 1,
        "the gateway has been scraped once",
    )
    streams = {id(first_round): [PACED_STREAM, FAILING_STREAM],
               id(second_round): [PACED_STREAM, PACED_STREAM, FAILING_STREAM]}  # fmt: skip
    for calls in (first_round, second_round):
        for endpoint, headers in calls:
            post(live_gateway, endpoint, headers)
        for endpoint in streams[id(calls)]:
            assert post(live_gateway, endpoint, suffix=STREAM) == 200
        # The registry is read afresh each time: this thread may see an answer a moment before
        # the gateway's loop has counted it.
        prometheus.wait_until(
            lambda: (
                prometheus.scalar(f'sum(sagemaker_gateway_requests_total{{job="{JOB}"}})')
                == family_total(live_gateway.registry, "sagemaker_gateway_requests_total")
                and prometheus.scalar(
                    f'sum(sagemaker_gateway_rejected_requests_total{{job="{JOB}"}})'
                )
                == family_total(live_gateway.registry, "sagemaker_gateway_rejected_requests_total")
            ),
            "Prometheus has scraped this round's traffic",
        )
    # Rates need two samples of a series: wait for a second scrape of those the last round made.
    samples_per_series = (
        f'min(count_over_time(sagemaker_gateway_requests_total{{job="{JOB}"}}[1m]))'
    )
    prometheus.wait_until(
        lambda: (prometheus.scalar(samples_per_series) or 0) >= 2,
        "every requests_total series has been scraped twice",
    )
    # Each rule group evaluates on its own timer: wait until every one has run since Prometheus
    # had both rounds, so that recorded series and alerts have seen all of the traffic.
    since = time.time()  # Prometheus runs on this machine's clock
    prometheus.wait_until(
        lambda: all(
            datetime.fromisoformat(group["lastEvaluation"]).timestamp() > since
            for group in prometheus.api("rules")["groups"]
        ),
        "every rule group has been evaluated on the traffic",
    )
    return prometheus


# ---------------------------------------------------------------------------------------------
# The numbers, as Prometheus has them
# ---------------------------------------------------------------------------------------------


def test_prometheus_counts_three_calls_per_variant(scraped):
    """Six calls to the alternating endpoint read 3 and 3 per variant in Prometheus."""
    per_variant = scraped.values(
        f'sagemaker_gateway_requests_total{{job="{JOB}", endpoint="variants", status="200"}}',
        "variant",
    )
    assert per_variant == {"VariantA": 3, "VariantB": 3}


def test_prometheus_counts_three_model_timeouts_as_model_errors(scraped):
    """Three model timeouts: model_timeouts_total 3 and three 424 ModelError requests."""
    timeouts = f'sagemaker_gateway_model_timeouts_total{{job="{JOB}", endpoint="model-timeout"}}'
    assert scraped.values(timeouts, "variant") == {"unknown": 3}
    errors = (
        f'sagemaker_gateway_requests_total{{job="{JOB}", endpoint="model-timeout", '
        'status="424", error="ModelError"}'
    )
    assert scraped.scalar(errors) == 3


def test_prometheus_sees_the_gateway_deadline_only_as_a_gateway_timeout(scraped):
    """The hung call is one 504 GatewayTimeout and no model timeout."""
    hang = f'sagemaker_gateway_requests_total{{job="{JOB}", endpoint="hang"}}'
    assert [(s["metric"]["status"], s["metric"]["error"]) for s in scraped.query(hang)] == [
        ("504", "GatewayTimeout")
    ]
    assert scraped.query('sagemaker_gateway_model_timeouts_total{endpoint="hang"}') == []


def test_prometheus_counts_five_rejections_and_never_the_bad_name(scraped):
    """4 oversized headers and 1 bad name: 5 rejections; no label value anywhere is the bad name."""
    rejected = scraped.values(f'sagemaker_gateway_rejected_requests_total{{job="{JOB}"}}', "reason")
    assert rejected == {"header_too_long": 4, "endpoint_name": 1}
    for label in scraped.api("labels"):
        assert BAD_ENDPOINT not in scraped.api(f"label/{label}/values")


def test_every_counter_in_the_registry_has_the_same_value_in_prometheus(live_gateway, scraped):
    """Each counter and histogram count of the gateway reads the same through Prometheus."""
    checked = 0
    for metric in live_gateway.registry.collect():
        for sample in metric.samples:
            if not sample.name.endswith(("_total", "_count")):
                continue
            matchers = ", ".join(f'{k}="{v}"' for k, v in sample.labels.items())
            expr = f'{sample.name}{{job="{JOB}", pod="{SIDECAR_POD["pod"]}", {matchers}}}'
            assert scraped.scalar(expr) == sample.value, expr
            checked += 1
    assert checked >= 20


def test_the_kubernetes_scrape_config_keeps_only_gateway_containers(live_gateway, scraped):
    """Of five discovered ports, the sidecar's and the shared gateway's are scraped, as one job."""
    targets = scraped.api("targets")
    active = {t["scrapeUrl"]: t["labels"] for t in targets["activeTargets"]}
    assert set(active) == {
        f"http://127.0.0.1:{live_gateway.port}/metrics",
        f"http://127.0.0.1:{scraped.down_port}/metrics",
    }
    assert len(targets["droppedTargets"]) == 3
    assert active[f"http://127.0.0.1:{live_gateway.port}/metrics"] == {
        "job": JOB,
        "instance": f"127.0.0.1:{live_gateway.port}",
        **SIDECAR_POD,
    }


# ---------------------------------------------------------------------------------------------
# Rules and dashboard against the real series
# ---------------------------------------------------------------------------------------------


def rules_in_file() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def test_every_rule_is_loaded_and_evaluates_without_error(scraped):
    """Prometheus loaded every rule of rules.yml, each evaluates healthy, and each query runs."""
    loaded = [rule for group in scraped.api("rules")["groups"] for rule in group["rules"]]
    expected = [r.get("record") or r["alert"] for r in rules_in_file()]
    assert sorted(r["name"] for r in loaded) == sorted(expected)
    for rule in loaded:
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), rule["name"]
        scraped.query(rule["query"])


def test_every_recording_rule_records_series_from_the_traffic(scraped):
    """Each recording rule has written at least one series (its metric names and labels match)."""
    for rule in rules_in_file():
        if "record" in rule:
            assert scraped.query(rule["record"]), f"{rule['record']} recorded nothing"


def test_every_metric_a_rule_reads_exists_in_prometheus(scraped):
    """No rule reads a metric name the gateway does not export (that would never fire)."""
    for rule in rules_in_file():
        for name in set(re.findall(r"\b(?:sagemaker_gateway_\w+|up)\b", rule["expr"])):
            assert scraped.query(f'{name}{{job="{JOB}"}}'), f"{rule}: no {name}"


def test_recorded_p99_latency_is_per_variant(scraped):
    """The p99 recording rule has one series per variant of the alternating endpoint."""
    p99 = "endpoint_variant:sagemaker_gateway_request_duration_seconds:p99_rate5m"
    recorded = scraped.values(f'{p99}{{endpoint="variants"}}', "variant")
    assert set(recorded) == {"VariantA", "VariantB"}
    assert all(0 < seconds < 1 for seconds in recorded.values())


def test_recorded_stream_figures_are_per_variant_and_where_the_emulator_put_them(scraped):
    """Parts 30 ms apart, the first after 200 ms: the recorded p50 time to first part is past
    the 0.1 s bound (a first part can come no sooner than 0.2 s) and, with the p99, within a
    generous second; the p99 gap is past 10 ms and under 0.25 s; the paced streams all
    complete (failed ratio 0) and the breaking ones all fail (1)."""

    def recorded(name: str, endpoint: str) -> dict[str, float]:
        return scraped.values(f'{name}{{endpoint="{endpoint}"}}', "variant")

    first = "endpoint_variant:sagemaker_gateway_stream_first_part_seconds"
    p50, p99 = (
        recorded(f"{first}:p50_rate5m", PACED_STREAM),
        recorded(f"{first}:p99_rate5m", PACED_STREAM),
    )
    assert set(p50) == set(p99) == {"AllTraffic"}
    assert 0.1 < p50["AllTraffic"] <= p99["AllTraffic"] <= 1.0
    gap = recorded(
        "endpoint_variant:sagemaker_gateway_stream_part_gap_seconds:p99_rate5m", PACED_STREAM
    )
    assert 0.01 < gap["AllTraffic"] <= 0.25
    failed = "endpoint_variant:sagemaker_gateway_streams_failed:ratio_rate5m"
    assert recorded(failed, PACED_STREAM) == {"AllTraffic": 0}
    assert recorded(failed, FAILING_STREAM) == {"AllTraffic": 1}
    ended = scraped.query(
        f'sagemaker_gateway_streams_total{{job="{JOB}", endpoint="{FAILING_STREAM}"}}'
    )
    assert [(s["metric"]["outcome"], s["metric"]["error_code"], s["value"][1]) for s in ended] == [
        ("model_stream_error", "StreamBroken", "2")
    ]


def test_alerts_become_pending_on_the_matching_real_series(scraped):
    """Model timeouts, throttling, 503s, refused headers, failing streams and the unreachable
    gateway alert."""
    alerts = {
        (a["labels"]["alertname"], a["labels"].get("endpoint") or a["labels"].get("pod"))
        for a in scraped.api("alerts")["alerts"]
    }
    assert {
        ("SageMakerModelTimeouts", "model-timeout"),
        ("SageMakerThrottling", "throttle"),
        ("SageMakerGatewayErrors", "unavailable"),
        ("SageMakerClientErrors", "echo"),
        ("SageMakerStreamErrors", FAILING_STREAM),
        ("SageMakerGatewayDown", "sagemaker-gateway-5c6d"),
        ("SageMakerFailingOver", "not-ready"),
    } <= alerts
    circuits = {a["labels"].get("target") for a in scraped.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "SageMakerCircuitOpen"}  # fmt: skip
    assert circuits == {"not-ready"}
    assert ("SageMakerStreamErrors", PACED_STREAM) not in alerts
    assert ("SageMakerGatewayDown", SIDECAR_POD["pod"]) not in alerts
    assert not any(name == "SageMakerGatewayAbsent" for name, _ in alerts)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows included."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def with_grafana_variables(expr: str) -> str:
    """``expr`` with $name / ${name} / [[name]] replaced as Grafana would; no variable left."""
    pattern = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
    concrete = pattern.sub(lambda m: GRAFANA_VARIABLES[next(g for g in m.groups() if g)], expr)
    assert "$" not in concrete, concrete
    return concrete


def test_every_dashboard_query_evaluates_and_returns_series(scraped):
    """Each panel query runs in Prometheus and returns series from the traffic sent."""
    queries = dashboard_queries()
    assert len(queries) >= 12
    for title, expr in queries:
        result = scraped.query(with_grafana_variables(expr))
        assert result, f"{title}: no series for {expr}"


def test_every_dashboard_variable_query_finds_values(scraped):
    """The endpoint and variant pickers list what the gateway has seen (label_values queries)."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for variable in variables:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
        assert match, variable["definition"]
        selector, label = with_grafana_variables(match[1]), match[2]
        found = {s["metric"].get(label, "") for s in scraped.query(selector)}
        assert found >= EXPECTED_CHOICES[variable["name"]], variable["name"]


def test_the_dashboard_charts_every_metric_family(live_gateway):
    """Every sagemaker_gateway_* family the gateway exports appears in some panel query."""
    exprs = " ".join(expr for _, expr in dashboard_queries())
    families = {m.name for m in live_gateway.registry.collect()}
    uncharted = {f for f in families if not re.search(rf"\b{re.escape(f)}(_\w+)?\b", exprs)}
    assert uncharted == set()


# ---------------------------------------------------------------------------------------------
# promtool
# ---------------------------------------------------------------------------------------------


def test_fallbacks_and_the_answering_target_reach_prometheus(scraped):
    """Three not-ready calls moved on for not_ready and one for its open circuit; echo
    answered all four; the recorded fallback ratio is there, and above the alert's tenth."""
    moved = scraped.values(
        f'sagemaker_gateway_fallbacks_total{{job="{JOB}", endpoint="not-ready"}}', "reason"
    )
    assert moved == {"not_ready": 3, "circuit_open": 1}
    answered = scraped.values(
        f'sagemaker_gateway_target_answers_total{{job="{JOB}", endpoint="not-ready"}}', "target"
    )
    assert answered == {"echo": 4}
    ratio = scraped.scalar(
        'endpoint:sagemaker_gateway_fallbacks:ratio_rate5m{endpoint="not-ready"}'
    )
    assert ratio is not None and ratio > 0.1


def test_promtool_check_metrics_accepts_the_exposition(tools, live_gateway, scraped):
    """The gateway's /metrics, after traffic of every kind, passes promtool's lint."""
    with _NO_PROXY.open(f"{live_gateway.url}/metrics", timeout=10) as response:
        exposition = response.read()
    assert b"sagemaker_gateway_model_timeouts_total" in exposition
    assert promtool(tools, "check", "metrics", stdin=exposition) == (0, "")


def test_promtool_check_rules_accepts_the_rules(tools):
    code, output = promtool(tools, "check", "rules", str(RULES))
    assert code == 0, output


def test_promtool_unit_tests_of_the_rules_pass(tools):
    code, output = promtool(tools, "test", "rules", str(PROMETHEUS_DIR / "rules_test.yml"))
    assert code == 0, output


@pytest.mark.parametrize("name", ["prometheus.local.yml"])
def test_promtool_check_config_accepts_the_example_config(tools, name):
    """The static example config (and the rules it loads) passes promtool check config."""
    code, output = promtool(tools, "check", "config", str(PROMETHEUS_DIR / name))
    assert code == 0, output


def test_promtool_check_config_accepts_the_kubernetes_config_as_tested(tools, prometheus):
    """The Kubernetes config as this module ran it (discovery from a file) passes check config.

    Debian's build of Prometheus leaves out Kubernetes discovery, so the file as shipped cannot
    be checked here; everything else in it is.
    """
    code, output = promtool(tools, "check", "config", str(prometheus.config_file))
    assert code == 0, output


def test_bucket_bounds_reach_prometheus_as_exposed(scraped):
    """The duration histogram's bounds in Prometheus: first <= 2 ms, one in 55-65 s, last >= 60."""
    buckets = scraped.query(
        f'sagemaker_gateway_request_duration_seconds_bucket{{job="{JOB}", endpoint="variants", '
        'variant="VariantA"}'
    )
    bounds = sorted(float(s["metric"]["le"]) for s in buckets)
    finite = [bound for bound in bounds if not math.isinf(bound)]
    assert finite[0] <= 0.002 and finite[-1] >= 60 and any(55 <= b <= 65 for b in finite)


def test_caller_label_values_in_prometheus_are_only_the_policys(scraped):
    """With a policy that names nobody and no authentication, every caller is _anonymous: no
    other value of the caller label ever reaches Prometheus."""
    assert scraped.api("label/caller/values") == ["_anonymous"]
