#!/usr/bin/env bash
# Make the Debian packages the tests drive available: `prometheus` and `promtool`
# (tests/test_prometheus_server.py) and the AWS CLI v2 (`awscli`, /usr/bin/aws; the PyPI CLI is
# v1, which lacks the event-stream operations). Does nothing when all are already there.
#
# The package would start a system Prometheus listening on 0.0.0.0:9090; the tests run their own,
# on a loopback port with their own config. So the install runs with a policy-rc.d that refuses
# service starts, without Recommends (prometheus-node-exporter, another daemon), and anything
# the package started anyway is stopped and disabled afterwards.
set -euo pipefail

have_all() {
    command -v prometheus >/dev/null && command -v promtool >/dev/null && [ -x /usr/bin/aws ]
}
if have_all; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "ensure-test-tools: prometheus or awscli is missing, and installing it needs root" >&2
        exit 1
    fi
    sudo=(sudo)
fi

policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# ensure-test-tools.sh: no service starts during the install\nexit 101\n' |
        "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    own_policy=1
fi
cleanup() {
    if [ "$own_policy" -eq 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT

echo "ensure-test-tools: installing Debian's prometheus and awscli packages for the tests"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus awscli >/dev/null

# Whatever the init system, leave no packaged Prometheus running or enabled.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif command -v service >/dev/null; then
    "${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
    "${sudo[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

have_all
echo "ensure-test-tools: $(prometheus --version 2>&1 | head -n 1); $(/usr/bin/aws --version)"
