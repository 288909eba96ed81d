#!/usr/bin/env bash
# make image-test: build the real Dockerfile, unchanged, with podman on a locally made stand-in for
# its base image, run the image, and check it the way a user would:
#   /healthz answers; /readyz is ready; the running gateway has the hot modules compiled by mypyc
#   loaded (gateway.http.server from its .so); one InvokeEndpoint goes through the container to
#   the emulator on the host and the emulator accepted its SigV4 signature; the process runs as
#   a non-root uid on a read-only root filesystem with no capabilities; SIGTERM exits 0.
# It prints the image size and leaves nothing behind: podman keeps its images and containers in a
# private store in a new directory under /tmp ($WORK), removed on exit, whatever the outcome.
#
# Why stand-ins: this machine reaches no container registry, so neither python:3.11-slim-bookworm
# (the runtime stage's base) nor python:3.11-bookworm (the build stage's) can be pulled. The
# script bootstraps Debian bookworm from Debian's own package mirror (the one apt is configured
# with), adds Debian's python3.11, and imports it into podman under the runtime base's exact name,
# read from the Dockerfile's ARG PYTHON_IMAGE. Then it installs gcc, libc6-dev and python3.11-dev
# into the same tree with apt and imports that under the build base's name (ARG BUILD_IMAGE): the
# official non-slim image has a compiler and Python's headers too, which mypyc's build needs, and
# both stand-ins have the same Python at the same path, as the official images do (the venv is
# built in one and run in the other). What the Dockerfile uses of the bases is the same on both;
# how the stand-ins differ from the official images:
#   - Python is Debian's python3.11 (3.11.2 + Debian patches) in /usr/bin, reached through
#     /usr/local/bin/{python3,python,pip,pip3} symlinks; the official image builds CPython 3.11.x
#     from source into /usr/local. Both give `python3 -m venv` with pip from ensurepip (Debian's
#     through python3.11-venv), which is all the Dockerfile uses.
#   - Debian marks its system Python EXTERNALLY-MANAGED; the stand-in removes that marker so a
#     system-wide `pip install` behaves as on the official image (the Dockerfile does not do one).
#   - This machine reaches PyPI through an egress proxy with its own CA: the stand-in trusts the
#     CAs in /usr/local/share/ca-certificates and sets PIP_CERT, so the build's pip can install the
#     lock. The official image needs neither. These two env vars are the only extra ones.
#   - Documentation, man pages and locales are deleted, as the official slim image's dpkg config
#     excludes them; the size printed is therefore close to, not equal to, the official image's.
#   - The build stand-in has only the compiler and headers added; the official python:3.11-bookworm
#     has much more (buildpack-deps). Its size does not matter: no layer of it is shipped.
#
# What podman (Debian's 4.3) needs on this machine, all set below in PM and the run/build flags:
#   - --cgroup-manager=cgroupfs and --events-backend=file: no systemd, no journald.
#   - --runtime=runc: cgroups are mounted in hybrid mode (v1 controllers plus a v2 "unified"
#     hierarchy holding hugetlb), and crun refuses that ("cgroups in hybrid mode not supported").
#   - explicit --ulimit nofile and nproc: podman's root defaults (nofile 1048576, nproc 4194304)
#     exceed this machine's hard limits, and runc then fails with "error setting rlimit type 6/7:
#     operation not permitted". nproc above ~20000 fails too, so 4096 (plenty for one process).
#   - the overlay storage driver, native on ext4 as root (SMGW_STORAGE_DRIVER=vfs elsewhere).
#   - --network=host for the build (pip must reach PyPI through the host's resolver and egress
#     proxy) and for the run, with the gateway bound to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
root_dir="$PWD"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sagemaker-gateway-image-test.XXXXXX")"
STORAGE_DRIVER="${SMGW_STORAGE_DRIVER:-overlay}"
IMAGE="localhost/sagemaker-gateway:image-test"
CONTAINER="sagemaker-gateway-image-test-$$"
VENV_BIN="${VENV_BIN:-$root_dir/.venv/bin}"
started_at=$(date +%s)

step() { printf '\n== %s (%ss)\n' "$*" "$(($(date +%s) - started_at))"; }
fail() { printf 'image-test: FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools: podman, runc, debootstrap from Debian's packages, where missing ------------------
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if ((${#need[@]})); then
    step "installing ${need[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}" containernetworking-plugins >/dev/null
fi
podman --version

nofile_hard=$(ulimit -Hn)
[ "$nofile_hard" = unlimited ] && nofile_hard=16384
nofile=$((nofile_hard < 16384 ? nofile_hard : 16384))
ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)

PM=(podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver "$STORAGE_DRIVER"
    --cgroup-manager cgroupfs --events-backend file --runtime runc --tmpdir "$WORK/tmp")
pm() { "${PM[@]}" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%02d s' $((ms / 1000)) $((ms % 1000 / 10)); }

emulator_pid=""
cleanup() {
    local rc=$?
    set +e
    [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null && wait "$emulator_pid" 2>/dev/null
    if [ -d "$WORK/storage" ]; then
        pm rm --force --time 0 "$CONTAINER" >/dev/null 2>&1
        pm rmi --all --force >/dev/null 2>&1
        # Anything podman still has mounted under the private store must go before rm -rf.
        grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
mkdir -p "$WORK/tmp"

# --- the stand-in base images ----------------------------------------------------------------
image_name() {  # REF: the name `FROM REF` resolves to
    case "$1" in
        *@*) fail "a digest-pinned base cannot be stood in for; pass it unpinned" ;;
        */*/*) echo "$1" ;;                         # registry/namespace/name:tag
        */*) echo "docker.io/$1" ;;
        *) echo "docker.io/library/$1" ;;           # what `FROM python:...` resolves to
    esac
}
base_ref=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
[ -n "$base_ref" ] || fail "Dockerfile has no 'ARG PYTHON_IMAGE=' default"
build_ref=$(sed -n 's/^ARG BUILD_IMAGE=//p' Dockerfile)
[ -n "$build_ref" ] || fail "Dockerfile has no 'ARG BUILD_IMAGE=' default"
base_name=$(image_name "$base_ref")
build_name=$(image_name "$build_ref")

# The Debian mirror apt already uses: debian.sources (deb822) or sources.list (one-line form).
mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)\/\{0,1\}$/\1/p' /etc/apt/sources.list.d/*.sources \
    2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\/debian\)\/\{0,1\} .*/\2/p' \
    /etc/apt/sources.list 2>/dev/null | head -n1)
mirror="${mirror:-http://deb.debian.org/debian}"

step "bootstrapping Debian bookworm + python3.11 from $mirror as $base_name"
rootfs="$WORK/rootfs"
debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-pip,ca-certificates,netbase,tzdata \
    bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
# The paths the official image has: python3 / python / pip / pip3 in /usr/local/bin.
for name in python3 python; do ln -s /usr/bin/python3.11 "$rootfs/usr/local/bin/$name"; done
for name in pip pip3; do ln -s /usr/bin/pip3 "$rootfs/usr/local/bin/$name"; done
rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || fail "update-ca-certificates"
fi
slim() {  # what the official slim image leaves out, and apt's downloads
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
}
import_rootfs() {  # NAME: the tree in $rootfs as image NAME
    tar -C "$rootfs" --numeric-owner -cf - . | pm import \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "ENV PYTHON_VERSION=$python_version" \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        --quiet - "$1" >/dev/null
}
slim
python_version=$(chroot "$rootfs" /usr/bin/python3.11 -c 'import platform; print(platform.python_version())')
import_rootfs "$base_name"

step "the same tree plus gcc, libc6-dev, python3.11-dev as $build_name"
# apt inside the tree, from the mirror debootstrap wrote into its sources.list; no service starts.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod +x "$rootfs/usr/sbin/policy-rc.d"
{ chroot "$rootfs" apt-get -o Acquire::Check-Valid-Until=false update \
    && chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends gcc libc6-dev python3.11-dev; } >"$WORK/apt.log" 2>&1 \
    || { tail -n 30 "$WORK/apt.log" >&2; fail "apt-get install in the build stand-in"; }
rm -f "$rootfs/usr/sbin/policy-rc.d"
slim
import_rootfs "$build_name"
rm -rf "$rootfs"
pm images

# --- the real Dockerfile, unchanged --------------------------------------------------------------
step "podman build (Dockerfile unchanged; FROM $build_ref, then FROM $base_ref)"
# --format docker: the OCI image format has no HEALTHCHECK, and podman would drop it.
pm build --pull=never --network=host --format docker --runtime runc "${ULIMITS[@]}" \
    --tag "$IMAGE" --file Dockerfile . 2>&1 | tee "$WORK/build.log" | grep -E 'STEP [0-9]+/|^COMMIT|^Successfully installed' || true
pm image exists "$IMAGE" || { tail -n 40 "$WORK/build.log" >&2; fail "podman build"; }

# --- run it against the emulator on the host ------------------------------------------------------
free_port() { "$VENV_BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
emulator_port=$(free_port)
gateway_port=$(free_port)
step "emulator on 127.0.0.1:$emulator_port, gateway container on 127.0.0.1:$gateway_port"
"$VENV_BIN/sagemaker-gateway" emulator --host 127.0.0.1 --port "$emulator_port" \
    >"$WORK/emulator.log" 2>&1 &
emulator_pid=$!

# Kubernetes' restricted settings: read-only root without podman's extra tmpfs mounts, every
# capability dropped, no privilege escalation. `--host 127.0.0.1` after the entry point's
# `--host 0.0.0.0` wins (argparse keeps the last), so the host network sees only loopback.
# --health-interval disable: no systemd timer here to run the HEALTHCHECK; it is run by hand below.
pm run --detach --name "$CONTAINER" --network host \
    --read-only --read-only-tmpfs=false --cap-drop all --security-opt no-new-privileges \
    --health-interval disable \
    "${ULIMITS[@]}" \
    --env AWS_ACCESS_KEY_ID=AKIDEMULATOR --env AWS_SECRET_ACCESS_KEY=emulator-secret-key \
    --env SMGW_REGION=us-east-1 --env SMGW_UPSTREAM_URL="http://127.0.0.1:$emulator_port" \
    --env SMGW_PORT="$gateway_port" \
    "$IMAGE" --host 127.0.0.1 >/dev/null \
    2> >(grep -v 'unable to get systemd connection' >&2)  # podman 4.3 says so even when disabled
run_at=$(now_ms)

wait_for() {  # URL DEADLINE_S: poll until it answers 200
    local deadline=$(($(date +%s) + $2))
    until curl --silent --fail --max-time 2 --output /dev/null "$1"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
wait_for "http://127.0.0.1:$gateway_port/healthz" 30 \
    || { pm logs "$CONTAINER" >&2; fail "/healthz did not answer 200 within 30 s"; }
echo "/healthz 200, $(since "$run_at") after podman run"
wait_for "http://127.0.0.1:$emulator_port/_emulator/requests" 30 || fail "emulator did not start"
wait_for "http://127.0.0.1:$gateway_port/readyz" 30 \
    || { pm logs "$CONTAINER" >&2; fail "/readyz did not answer 200"; }
echo "/readyz 200"

# The gateway's own process (the entry point runs as pid 1) has the compiled modules mapped.
compiled=$(pm exec "$CONTAINER" grep -o '/opt/venv/[^ ]*/gateway/http/server\.[^ /]*\.so$' /proc/1/maps \
    | head -n1) || true
[ -n "$compiled" ] || fail "gateway.http.server is not loaded from a compiled extension (mypyc)"
echo "gateway.http.server is compiled: $compiled is mapped in the gateway process"

uid=$(pm exec "$CONTAINER" id -u)
echo "uid in the container: $uid"
[ "$uid" != 0 ] || fail "the gateway runs as root"
pm exec "$CONTAINER" sh -c 'touch /tmp/probe 2>/dev/null' && fail "root filesystem is writable"
echo "root filesystem is read-only (not even /tmp is writable, as in Kubernetes without a volume)"
# shellcheck disable=SC2016 # expanded by the container's shell
pm exec "$CONTAINER" sh -c 'for tool in gcc cc make; do command -v $tool; done;
    ls -d /opt/venv/bin/pip /root/.cache /src 2>/dev/null; exit 0' >"$WORK/leftovers"
[ ! -s "$WORK/leftovers" ] || fail "the final stage still has: $(tr '\n' ' ' <"$WORK/leftovers")"
echo "final stage: no compiler, no pip in the venv, no pip cache, no source tree"
pm healthcheck run "$CONTAINER" || fail "the image's HEALTHCHECK failed"
echo "HEALTHCHECK: healthy"

step "one InvokeEndpoint through the container"
payload='{"inputs":"image-test"}'
curl --silent --show-error --fail-with-body --max-time 30 \
    --header 'Content-Type: application/json' --data "$payload" \
    --dump-header "$WORK/invoke.headers" --output "$WORK/invoke.body" \
    "http://127.0.0.1:$gateway_port/endpoints/echo/invocations" \
    || { cat "$WORK/invoke.body" >&2; pm logs "$CONTAINER" >&2; fail "invocation"; }
head -n1 "$WORK/invoke.headers"
[ "$(cat "$WORK/invoke.body")" = "$payload" ] || fail "echo answered $(cat "$WORK/invoke.body")"
echo "echo returned the body unchanged"
curl --silent --fail "http://127.0.0.1:$emulator_port/_emulator/requests" >"$WORK/journal.json"
"$VENV_BIN/python" - "$WORK/journal.json" <<'PY'
import json
import sys

entries = json.load(open(sys.argv[1]))
calls = [e for e in entries if e.get("endpoint") == "echo"]
if len(calls) != 1 or not calls[0]["signature_ok"]:
    sys.exit(f"image-test: FAIL: emulator journal: {calls}")
auth = dict((k.lower(), v) for k, v in calls[0]["headers"]).get("authorization", "")
print(f"emulator: 1 call to echo, signature_ok=True ({auth.split(',')[0]})")
PY
curl --silent --fail "http://127.0.0.1:$gateway_port/metrics" \
    | grep -E '^sagemaker_gateway_requests_total\{.*endpoint="echo"' \
    || fail "no requests_total sample for echo in /metrics"

step "SIGTERM"
pm kill --signal TERM "$CONTAINER" >/dev/null
term_at=$(now_ms)
exit_code=$(timeout 60 "${PM[@]}" wait "$CONTAINER") || fail "still running 60 s after SIGTERM"
echo "exit status $exit_code, $(since "$term_at") after SIGTERM"
echo "--- container log (last lines) ---"
pm logs "$CONTAINER" 2>&1 | tail -n 5
[ "$exit_code" = 0 ] || fail "exit status $exit_code after SIGTERM"

step "image size"
pm images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | sort
base_bytes=$(pm image inspect --format '{{.Size}}' "$base_name")
image_bytes=$(pm image inspect --format '{{.Size}}' "$IMAGE")
mb() { echo $((($1 + 500000) / 1000000)); }
echo "sagemaker-gateway image: $(mb "$image_bytes") MB," \
    "of which the stand-in base is $(mb "$base_bytes") MB and the gateway layers" \
    "$(mb $((image_bytes - base_bytes))) MB"

step "image-test passed"
