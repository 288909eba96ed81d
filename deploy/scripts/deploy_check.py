"""Check the rendered Kubernetes manifests and the image's dependency lock (run by deploy-check.sh).

    deploy_check.py --kubernetes-version 1.30 OVERLAY=RENDERED.yaml ...

For every object kustomize rendered:

1. Built-in kinds are validated by kubernetes-validate against the Kubernetes JSON schemas it
   ships (offline), in strict mode: an unknown field is an error. kubernetes-validate itself only
   *warns* about a kind it has no schema for and exits 0, so a misspelt kind or apiVersion would
   pass; here a missing schema is an error.
2. The Prometheus Operator's kinds (monitoring.coreos.com/v1 PodMonitor, ServiceMonitor,
   PrometheusRule) are custom resources, for which kubernetes-validate has no schema. Only these,
   listed in CRD_SCHEMAS, are exempt from step 1, and each is instead validated, strictly, against
   a hand-written subset of its CRD's schema: the real field names and types of the parts these
   manifests use. A field outside the subset is an error, so a typo cannot slip through; a real
   field not yet listed needs adding there. The rules' PromQL is checked by `promtool check rules`
   (deploy-check.sh).
3. References between objects are checked the way the cluster would resolve them: selectors match
   a rendered pod template or Service, named ports exist, the HPA's target, the ServiceAccount
   and the ConfigMaps exist.
4. The gateway container itself meets the deployment contract: non-root, no privilege
   escalation, read-only root, all capabilities dropped, probes on /healthz and /readyz,
   requests and limits, and a termination grace period longer than the gateway's shutdown (its
   grace after SIGTERM plus a drain that outlasts the upstream timeout).

Also: every [project] dependency of pyproject.toml is pinned in deploy/requirements.lock with a
version the dependency's specifier allows (the image installs the lock with --no-deps), and
the mypy deploy/requirements-build.lock compiles the image with is the one the test extra pins.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_IMAGE = "sagemaker-gateway"
GATEWAY_UID = 10001
#: The gateway's defaults (gateway/config.py) for the options that bound a shutdown: the upstream
#: timeout (the model's 60 s limit plus margin), the grace after SIGTERM while /readyz is 503, and
#: the drain of in-flight calls once the listener is closed.
SHUTDOWN_DEFAULTS_S = {
    "SMGW_UPSTREAM_TIMEOUT": 70.0,
    "SMGW_SHUTDOWN_GRACE": 5.0,
    "SMGW_DRAIN_TIMEOUT": 75.0,
}

# --- a strict subset of the Prometheus Operator's CRD schemas (monitoring.coreos.com/v1) -------


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_STRING = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
    r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_LABEL_SELECTOR = _strict(
    {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": _strict(
                {
                    "key": _STRING,
                    "operator": _STRING,
                    "values": {"type": "array", "items": _STRING},
                },
                ("key", "operator"),
            ),
        },
    }
)
_NAMESPACE_SELECTOR = _strict({"any": {"type": "boolean"}, "matchNames": {"type": "array"}})
_RELABEL_ACTIONS = (
    "Replace",
    "Keep",
    "Drop",
    "HashMod",
    "LabelMap",
    "LabelDrop",
    "LabelKeep",
    "Lowercase",
    "Uppercase",
    "KeepEqual",
    "DropEqual",
)
_RELABELINGS = {
    "type": "array",
    "items": _strict(
        {
            "action": {"enum": [*_RELABEL_ACTIONS, *(a.lower() for a in _RELABEL_ACTIONS)]},
            "modulus": {"type": "integer"},
            "regex": _STRING,
            "replacement": _STRING,
            "separator": _STRING,
            "sourceLabels": {"type": "array", "items": _STRING},
            "targetLabel": _STRING,
        }
    ),
}
_SCRAPE_ENDPOINT = {
    "path": _STRING,
    "scheme": {"enum": ["http", "https"]},
    "interval": _DURATION,
    "scrapeTimeout": _DURATION,
    "honorLabels": {"type": "boolean"},
    "honorTimestamps": {"type": "boolean"},
    "relabelings": _RELABELINGS,
    "metricRelabelings": _RELABELINGS,
    "params": {"type": "object"},
}
_METADATA = {"type": "object", "required": ["name"]}


def _resource(spec: dict[str, Any]) -> dict[str, Any]:
    return _strict(
        {"apiVersion": _STRING, "kind": _STRING, "metadata": _METADATA, "spec": spec},
        ("apiVersion", "kind", "metadata", "spec"),
    )


CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PodMonitor"): _resource(
        _strict(
            {
                "jobLabel": _STRING,
                "podTargetLabels": {"type": "array", "items": _STRING},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "sampleLimit": {"type": "integer"},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {"port": _STRING, "portNumber": {"type": "integer"}, **_SCRAPE_ENDPOINT}
                    ),
                },
            },
            ("selector", "podMetricsEndpoints"),
        )
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource(
        _strict(
            {
                "jobLabel": _STRING,
                "targetLabels": {"type": "array", "items": _STRING},
                "podTargetLabels": {"type": "array", "items": _STRING},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "sampleLimit": {"type": "integer"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict({"port": _STRING, "targetPort": {}, **_SCRAPE_ENDPOINT}),
                },
            },
            ("selector", "endpoints"),
        )
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _resource(
        _strict(
            {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {
                            "name": _STRING,
                            "interval": _DURATION,
                            "limit": {"type": "integer"},
                            "partial_response_strategy": _STRING,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": _strict(
                                    {
                                        "alert": _STRING,
                                        "record": _STRING,
                                        "expr": _STRING,
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": _STRING_MAP,
                                        "annotations": _STRING_MAP,
                                    },
                                    ("expr",),
                                ),
                            },
                        },
                        ("name", "rules"),
                    ),
                }
            },
            ("groups",),
        )
    ),
}


# --- checks ----------------------------------------------------------------------------------


class Findings:
    """Errors collected across all checks, printed at the end."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_schema(obj: dict[str, Any], version: str, where: str, findings: Findings) -> str:
    """Validate one object against its schema; return how it was validated."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key in CRD_SCHEMAS:
        for problem in jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).iter_errors(obj):
            path = ".".join(str(part) for part in problem.absolute_path)
            findings.error(where, f"{path}: {problem.message}")
        return "CRD subset schema, strict"
    try:
        return f"Kubernetes {kv.validate(obj, version, strict=True)} schema, strict"
    except kv.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        findings.error(where, f"{path}: {exc.message}")
    except kv.SchemaNotFoundError as exc:
        findings.error(where, f"no schema, so not a Kubernetes {version} kind: {exc.message}")
    return "INVALID"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if selector.get("matchExpressions"):
        raise NotImplementedError("matchExpressions: extend _selects before using them")
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def _pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield obj, obj["spec"]["template"]


def _containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def check_references(objects: list[dict[str, Any]], where: str, findings: Findings) -> None:
    """Names and selectors point at objects that exist in the same rendering."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    templates = list(_pod_templates(objects))

    def pods_selected(selector: dict[str, Any]) -> list[dict[str, Any]]:
        return [t for _, t in templates if _selects(selector, t["metadata"].get("labels", {}))]

    for owner, template in templates:
        here = f"{where}: {_name(owner)}"
        if not _selects(owner["spec"]["selector"], template["metadata"].get("labels", {})):
            findings.error(here, "spec.selector does not match the pod template's labels")
        spec = template["spec"]
        account = spec.get("serviceAccountName")
        if account and account not in by_kind.get("ServiceAccount", {}):
            findings.error(here, f"serviceAccountName {account!r} is not rendered")
        for container in _containers(spec):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in by_kind.get("ConfigMap", {}):
                    findings.error(here, f"envFrom configMapRef {ref!r} is not rendered")

    for kind, path in (
        ("Service", ("spec", "selector")),
        ("PodDisruptionBudget", ("spec", "selector")),
        ("NetworkPolicy", ("spec", "podSelector")),
        ("PodMonitor", ("spec", "selector")),
    ):
        for obj in by_kind.get(kind, {}).values():
            selector = obj
            for part in path:
                selector = selector[part]
            if kind == "Service":
                selector = {"matchLabels": selector}
            if not pods_selected(selector):
                findings.error(f"{where}: {_name(obj)}", "selects no rendered pod template")

    for service in by_kind.get("Service", {}).values():
        ports = {
            port.get("name")
            for t in pods_selected({"matchLabels": service["spec"]["selector"]})
            for c in _containers(t["spec"])
            for port in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in ports:
                findings.error(f"{where}: {_name(service)}", f"targetPort {target!r} not found")

    for monitor in by_kind.get("PodMonitor", {}).values():
        ports = {
            port.get("name")
            for t in pods_selected(monitor["spec"]["selector"])
            for c in _containers(t["spec"])
            for port in c.get("ports", [])
        }
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            if endpoint.get("port") not in ports:
                findings.error(f"{where}: {_name(monitor)}", f"port {endpoint.get('port')!r}?")

    for monitor in by_kind.get("ServiceMonitor", {}).values():
        services = [
            s
            for s in by_kind.get("Service", {}).values()
            if _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        if not services:
            findings.error(f"{where}: {_name(monitor)}", "selects no rendered Service")
        names = {p.get("name") for s in services for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in names:
                findings.error(f"{where}: {_name(monitor)}", f"port {endpoint.get('port')!r}?")

    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]
        if target["name"] not in by_kind.get(target["kind"], {}):
            findings.error(f"{where}: {_name(hpa)}", f"scaleTargetRef {target} is not rendered")


def _probe_path(container: dict[str, Any], probe: str) -> str | None:
    return container.get(probe, {}).get("httpGet", {}).get("path")


def check_gateway(objects: list[dict[str, Any]], where: str, findings: Findings) -> int:
    """The gateway container meets the deployment contract; return how many were found."""
    found = 0
    configmaps = {
        o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"
    }
    for owner, template in _pod_templates(objects):
        spec = template["spec"]
        for container in _containers(spec):
            if container.get("image", "").split("/")[-1].split(":")[0] != GATEWAY_IMAGE:
                continue
            found += 1
            here = f"{where}: {_name(owner)} container {container['name']}"
            if container in spec.get("initContainers", []) and (
                container.get("restartPolicy") != "Always"
            ):
                findings.error(here, "an init container without restartPolicy: Always")
            security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
            expected = {
                "runAsNonRoot": True,
                "runAsUser": GATEWAY_UID,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
            }
            for key, value in expected.items():
                if security.get(key) != value:
                    findings.error(here, f"securityContext.{key} should be {value}")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                findings.error(here, "securityContext.capabilities.drop should be [ALL]")
            paths = {
                probe: _probe_path(container, probe)
                for probe in ("startupProbe", "readinessProbe", "livenessProbe")
            }
            if paths != {
                "startupProbe": "/healthz",
                "readinessProbe": "/readyz",
                "livenessProbe": "/healthz",
            }:
                findings.error(
                    here,
                    f"probes should be startup/healthz, readiness/readyz, "
                    f"liveness/healthz; found {paths}",
                )
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(part, {})):
                    findings.error(here, f"resources.{part} needs cpu and memory")
            check_shutdown(spec, container, configmaps, here, findings)
    if not found:
        findings.error(where, f"no container runs the {GATEWAY_IMAGE} image")
    return found


def check_shutdown(
    spec: dict[str, Any],
    container: dict[str, Any],
    configmaps: dict[str, dict[str, str]],
    here: str,
    findings: Findings,
) -> None:
    """An in-flight call can finish after SIGTERM before the kubelet's SIGKILL.

    The drain must outlast the upstream timeout, and the pod's grace period must outlast the
    gateway's grace plus its drain, with the settings as the container will see them.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps.get(source.get("configMapRef", {}).get("name"), {}))
    env.update(
        {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    )
    seconds = {name: float(env.get(name, default)) for name, default in SHUTDOWN_DEFAULTS_S.items()}
    if seconds["SMGW_DRAIN_TIMEOUT"] < seconds["SMGW_UPSTREAM_TIMEOUT"]:
        findings.error(here, f"drain shorter than the upstream timeout: {seconds}")
    needed = seconds["SMGW_SHUTDOWN_GRACE"] + seconds["SMGW_DRAIN_TIMEOUT"]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= needed:
        findings.error(here, f"terminationGracePeriodSeconds {grace} <= {needed} s: {seconds}")


def _pins(path: str) -> dict[str, Version]:
    """The ``name==version`` lines of a requirements file, by canonical name."""
    pins: dict[str, Version] = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def check_lock(findings: Findings) -> int:
    """Every runtime dependency is pinned in the lock with an allowed version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins("deploy/requirements.lock")
    for text in project["dependencies"]:
        requirement = Requirement(text)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            findings.error("deploy/requirements.lock", f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            findings.error(
                "deploy/requirements.lock",
                f"{requirement.name}=={pinned} is outside {requirement.specifier}; "
                "run deploy/scripts/lock-requirements.sh",
            )
    return len(project["dependencies"])


def check_build_lock(findings: Findings) -> str:
    """The image compiles with the mypy that `make test-compiled` tests: the test extra's pin
    and deploy/requirements-build.lock's are the same version. Returns that version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    test_extra = [Requirement(text) for text in project["optional-dependencies"]["test"]]
    tested = [
        requirement for requirement in test_extra if canonicalize_name(requirement.name) == "mypy"
    ]
    built = _pins("deploy/requirements-build.lock").get("mypy")
    here = "deploy/requirements-build.lock"
    if len(tested) != 1 or len(tested[0].specifier) != 1 or built is None:
        findings.error(here, "mypy must be pinned (==) once in the test extra and in this lock")
        return "?"
    pin = next(iter(tested[0].specifier))
    if pin.operator != "==" or "*" in pin.version or Version(pin.version) != built:
        findings.error(
            here, f"mypy=={built} here, {pin} in pyproject.toml's test extra: make them equal"
        )
    return str(built)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.30")
    parser.add_argument("rendered", nargs="+", metavar="OVERLAY=FILE")
    args = parser.parse_args()
    findings = Findings()
    for item in args.rendered:
        overlay, _, path = item.partition("=")
        objects = [obj for obj in yaml.safe_load_all(Path(path).read_text()) if obj]
        before = len(findings.errors)
        for obj in objects:
            how = validate_schema(
                obj, args.kubernetes_version, f"{overlay}: {_name(obj)}", findings
            )
            print(f"  {overlay:8} {_name(obj):52} {how}")
        if len(findings.errors) > before:
            # The cross-object checks read fields the schemas promise; they would only crash.
            print(f"{overlay}: {len(objects)} objects: FAILED schema validation")
            continue
        check_references(objects, overlay, findings)
        gateways = check_gateway(objects, overlay, findings)
        status = "ok" if len(findings.errors) == before else "FAILED"
        print(f"{overlay}: {len(objects)} objects, {gateways} gateway container(s): {status}")
    dependencies = check_lock(findings)
    print(f"requirements.lock: {dependencies} [project] dependencies checked")
    print(f"requirements-build.lock: mypy {check_build_lock(findings)}, as make test-compiled")
    for error in findings.errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 1 if findings.errors else 0


if __name__ == "__main__":
    sys.exit(main())
