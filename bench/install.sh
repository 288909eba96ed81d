#!/usr/bin/env bash
# What `make bench` needs from Debian: wrk (the load generator) and nginx (the backend, and the
# proxy_pass floor). Does nothing when both are there. No service is started or left enabled:
# the bench runs its own nginx processes on loopback ports with its own configs.
set -euo pipefail
if command -v wrk >/dev/null && command -v nginx >/dev/null; then
    exit 0
fi
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
trap '[ "$own_policy" -eq 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends wrk nginx-light >/dev/null
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
else
    service nginx stop >/dev/null 2>&1 || true
fi
