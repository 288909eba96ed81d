# sagemaker-gateway container image.
#
#   podman build -t sagemaker-gateway .        (or docker build; --format docker keeps HEALTHCHECK)
#   docker run -p 127.0.0.1:8080:8080 -e AWS_REGION=us-east-1 sagemaker-gateway
#
# The base is an ARG so a build can pin it by digest without editing this file:
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
# Only these paths of the base are used: python3 on PATH with the venv module (stdlib +
# ensurepip), /usr/sbin/groupadd and useradd. `make image-test` builds this file unchanged on a
# locally bootstrapped stand-in for the base (deploy/scripts/image-test.sh says how it differs).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment in /opt/venv with the pinned dependencies and the gateway ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/venv
# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY deploy/requirements.lock ./
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The project alone (--no-deps: the lock above is the whole dependency set), then `pip check`
# proves the lock is complete, then pip and setuptools leave: the running image installs nothing.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

# --- runtime: the base plus /opt/venv; no compiler, no pip cache, no source tree ---
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sagemaker-gateway" \
      org.opencontainers.image.description="Unsigned in, SigV4-signed out: a gateway to Amazon SageMaker runtime endpoints" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without a name lookup.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
# Bytecode was compiled at install time; a read-only root filesystem needs nothing written later.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SMGW_PORT=8080
USER 10001:10001
EXPOSE 8080
# Docker and podman (--format docker) use this; Kubernetes ignores it and uses the probes on
# /healthz and /readyz in deploy/kubernetes instead.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SMGW_PORT', '8080'), timeout=2)"]
# Listening on every interface is right inside a container: the pod or the published port decides
# who can reach it. The sidecar manifest overrides the command to listen on loopback only.
ENTRYPOINT ["sagemaker-gateway", "serve", "--host", "0.0.0.0"]
