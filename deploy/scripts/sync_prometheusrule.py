"""Write deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/rules.yml.

The rule file is the one source (it has the comments and the promtool unit tests); the
PrometheusRule wraps the same groups for the Prometheus Operator.

    python deploy/scripts/sync_prometheusrule.py           # rewrite the PrometheusRule
    python deploy/scripts/sync_prometheusrule.py --check   # exit 1 if it is out of step
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules.yml"
PROMETHEUS_RULE = ROOT / "deploy/kubernetes/base/prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/rules.yml by deploy/scripts/sync_prometheusrule.py: edit the
# rule file (its comments explain each rule; promtool unit-tests it), then run the script.
# `make deploy-check` fails while the two differ. The PodMonitor and ServiceMonitor in the
# overlays set job="sagemaker-gateway", which the rules expect.
"""


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (PromQL), so the output reads like the rule file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> str:
    """The PrometheusRule manifest for these rule groups."""
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "sagemaker-gateway"},
        "spec": {"groups": groups},
    }
    body = yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=1000)
    return HEADER + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if different")
    args = parser.parse_args()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    if args.check:
        current = yaml.safe_load(PROMETHEUS_RULE.read_text())
        if current.get("spec", {}).get("groups") != groups:
            print(
                f"{PROMETHEUS_RULE.relative_to(ROOT)} is out of step with "
                f"{RULES.relative_to(ROOT)}: run python deploy/scripts/sync_prometheusrule.py",
                file=sys.stderr,
            )
            return 1
        print(f"{PROMETHEUS_RULE.relative_to(ROOT)}: the same {len(groups)} groups as rules.yml")
        return 0
    PROMETHEUS_RULE.write_text(prometheus_rule(groups))
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)} ({len(groups)} groups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
