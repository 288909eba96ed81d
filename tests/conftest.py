"""Fixtures: the emulator and the gateway on real loopback sockets, and clients pointed at them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import boto3
import botocore.loaders
import pytest
from aiohttp import web
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from prometheus_client import CollectorRegistry
from yarl import URL

from gateway.app import make_app
from gateway.config import Config
from gateway.credentials import CredentialSource
from gateway.emulator import JOURNAL, EmulatorSettings, make_emulator_app
from gateway.serving import GatewayServer
from gateway.signing import SigningCredentials

pytest_plugins = [
    "tests.emulator_fixtures",  # the emulator-only tests' fixtures
    "tests.tenancy_support",  # the callers' tests' fixtures
]

ACCESS_KEY = "AKIDGATEWAYTEST"
SECRET_KEY = "gateway/test+secret"
REGION = "us-east-1"
#: How long the emulator's model-timeout endpoint takes in tests (the real limit is 60 s).
MODEL_TIMEOUT_S = 0.3
AWS_CLI = str(Path(sys.executable).with_name("aws"))
#: Version 1 of the CLI (PyPI) does not offer the event-stream operations; version 2 is
#: Debian's package (installed by `make test`), taught today's service model with its own
#: `aws configure add-model`, since Debian's 2.9 predates InvokeEndpointWithResponseStream.
AWS_CLI_V2 = "/usr/bin/aws"


def gateway_process_env(**variables: str) -> dict[str, str]:
    """The environment of a gateway started as its own process: ``variables`` on a bare base
    (PATH, HOME), and PYTHONPATH when this run has one. `make test-compiled` puts its compiled
    copy of the tree first on PYTHONPATH, so the child runs the build under test too, not the
    venv's editable install of the source."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return {**env, **variables}


@pytest.fixture
def gateway_credentials() -> SigningCredentials:
    return SigningCredentials(ACCESS_KEY, SECRET_KEY)


class RunningEmulator:
    """The emulator app on a loopback port, with a listen backlog sized for load tests."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.app = runner.app
        self.host = "127.0.0.1"
        self.port = port

    def make_url(self, path: str) -> URL:
        return URL(f"http://{self.host}:{self.port}{path}")


async def start_emulator(settings: EmulatorSettings, port: int = 0) -> RunningEmulator:
    """Start an emulator (on ``port``, else a free one); aiohttp's test server listens with a
    backlog of 128, too few for 300 simultaneous upstream connections, so this one is started
    by hand."""
    runner = web.AppRunner(make_emulator_app(settings), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
    await site.start()
    return RunningEmulator(runner, runner.addresses[0][1])


@pytest.fixture
async def emulator():
    """The emulated SageMaker runtime, accepting only the gateway's test credentials.

    After the test, every request that reached it must have carried a valid signature: the
    gateway never forwards anything unsigned or signed wrongly.
    """
    settings = EmulatorSettings(
        credentials={ACCESS_KEY: SECRET_KEY}, region=REGION, model_timeout_s=MODEL_TIMEOUT_S
    )
    server = await start_emulator(settings)
    yield server
    await server.runner.cleanup()
    entries = server.app[JOURNAL]
    unverified = [(e.raw_path, e.signature_error) for e in entries if not e.signature_ok]
    assert unverified == [], "the emulator refused the gateway's signature"


@pytest.fixture
def journal(emulator):
    """Every request the emulator received, in order."""
    return emulator.app[JOURNAL]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def gateway_config(emulator) -> Config:
    return Config(
        port=0,
        region=REGION,
        upstream_url=str(emulator.make_url("")).rstrip("/"),
        upstream_timeout_s=2.0,
        connect_timeout_s=1.0,
        drain_timeout_s=5.0,
    )


class RunningGateway:
    """A gateway served by the production listener (GatewayServer) on a free loopback port."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.app = server.app
        self.host = "127.0.0.1"
        self.port = server.port

    def make_url(self, path: str) -> URL:
        return URL(f"http://{self.host}:{self.port}{path}")


@pytest.fixture
async def start_gateway(registry, gateway_credentials, gateway_config):
    """Start a gateway on a free port; keyword arguments override its Config (``clock``: what
    its circuit breakers, callers' token buckets and token keys' age are timed by).

    The first gateway a test starts records into the ``registry`` fixture; any further one gets
    a registry of its own.
    """
    registries = [registry]
    started: list[GatewayServer] = []

    async def start(
        credentials: CredentialSource | None = None, clock=time.monotonic, **overrides
    ) -> RunningGateway:
        config = replace(gateway_config, **overrides)
        source = credentials or CredentialSource.static(gateway_credentials)
        own_registry = registries.pop() if registries else CollectorRegistry()
        app = make_app(config, registry=own_registry, credentials=source, clock=clock)
        server = GatewayServer(app, config)
        await server.start()
        started.append(server)
        return RunningGateway(server)

    yield start
    for server in started:
        await server.stop(grace_s=0)


@pytest.fixture
async def gateway(start_gateway):
    """The gateway with its test defaults, forwarding to the emulator."""
    return await start_gateway()


@pytest.fixture
def gateway_url(gateway) -> str:
    return str(gateway.make_url("")).rstrip("/")


def make_runtime_client(url: str, signed_with: tuple[str, str] | None = None):
    """A boto3 sagemaker-runtime client for ``url``: unsigned, or signed with a caller's keys."""
    boto_config = BotoConfig(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        **({} if signed_with else {"signature_version": UNSIGNED}),
    )
    session = boto3.session.Session(
        aws_access_key_id=signed_with[0] if signed_with else None,
        aws_secret_access_key=signed_with[1] if signed_with else None,
        region_name=REGION,
    )
    return session.client("sagemaker-runtime", endpoint_url=url, config=boto_config)


@pytest.fixture
def runtime_client(gateway_url) -> Callable[..., object]:
    """A factory for boto3 clients pointed at the default test gateway (unsigned by default)."""
    return lambda signed_with=None: make_runtime_client(gateway_url, signed_with)


async def run_aws_cli(
    *args: str, timeout_s: float = 60.0, cli: str = AWS_CLI, home: str | None = None
) -> tuple[int, str, str]:
    """Run the real AWS CLI with no credentials around it; return (code, stdout, stderr)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": home or os.environ.get("HOME", "/tmp"),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
    process = await asyncio.create_subprocess_exec(
        cli, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout_s):
        out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


@pytest.fixture(scope="session")
def aws_cli_v2_home(tmp_path_factory) -> str:
    """A HOME in which Debian's AWS CLI v2 knows the current sagemaker-runtime model."""
    home = tmp_path_factory.mktemp("aws-cli-v2")
    model = home / "sagemaker-runtime.json"
    loader = botocore.loaders.Loader()
    model.write_text(json.dumps(loader.load_service_model("sagemaker-runtime", "service-2")))
    subprocess.run(
        [AWS_CLI_V2, "configure", "add-model", "--service-name", "sagemaker-runtime",
         "--service-model", f"file://{model}"],
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
        check=True, timeout=60, capture_output=True,
    )  # fmt: skip
    return str(home)
