# sagemaker-gateway container image.
#
#   podman build -t sagemaker-gateway .        (or docker build; --format docker keeps HEALTHCHECK)
#   docker run -p 127.0.0.1:8080:8080 -e AWS_REGION=us-east-1 sagemaker-gateway
#
# The bases are ARGs so a build can pin them by digest without editing this file:
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
#   --build-arg BUILD_IMAGE=python:3.11-bookworm@sha256:<digest>
# The build stage compiles the hot modules with mypyc (setup.py, SMGW_COMPILE=1), so its base
# needs a C compiler and Python's headers, which the official non-slim image has; the running
# image is the slim one, without a compiler. The build stage's venv is copied into the runtime
# stage as it is, so both bases must have the same Python at the same path (the official
# python:3.11 images do: /usr/local/bin/python3). Only these paths of the bases are used: python3
# on PATH with the venv module (stdlib + ensurepip), gcc and Python.h in the build base,
# /usr/sbin/groupadd and useradd in the runtime base. `make image-test` builds this file
# unchanged on locally bootstrapped stand-ins for both (deploy/scripts/image-test.sh says how
# they differ).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=python:3.11-bookworm

# --- build: a virtual environment in /opt/venv with the pinned dependencies and the gateway ---
FROM ${BUILD_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/venv
# Dependencies first, in their own layer: it is rebuilt only when the locks change. The build
# tools (mypy, setuptools) go into the same venv: mypyc type-checks the modules it compiles and
# must see the dependencies' types, so the project is built there, without build isolation.
COPY deploy/requirements.lock deploy/requirements-build.lock ./
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: \
        -r requirements.lock -r requirements-build.lock
COPY pyproject.toml setup.py README.md ./
COPY gateway ./gateway
# The project alone, compiled (--no-deps: the lock above is the whole dependency set); the
# build tools leave, then `pip check` proves the lock is complete, then pip leaves too: the
# running image installs nothing. The last line fails the build unless the server module imports
# from its compiled extension (-I: not from the sources in /src).
RUN SMGW_COMPILE=1 /opt/venv/bin/pip install --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip uninstall --yes -r requirements-build.lock \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip \
    && /opt/venv/bin/python -I -c 'import gateway.http.server as m; assert m.__file__.endswith(".so"), m.__file__'

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
# The venv was built on the build stage's base: the compiled modules must load on this one too
# (the same Python, at the same path), or the build fails here rather than at the first request.
RUN python3 -I -c 'import gateway.http.server as m; assert m.__file__.endswith(".so"), m.__file__'
USER 10001:10001
EXPOSE 8080
# Docker and podman (--format docker) use this; Kubernetes ignores it and uses the probes on
# /healthz and /readyz in deploy/kubernetes instead.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SMGW_PORT', '8080'), timeout=2)"]
# Listening on every interface is right inside a container: the pod or the published port decides
# who can reach it. The sidecar manifest overrides the command to listen on loopback only.
ENTRYPOINT ["sagemaker-gateway", "serve", "--host", "0.0.0.0"]
