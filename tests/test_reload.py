"""SIGHUP: the policy, the JWKS file and the TLS files are read again; a file that does not load
keeps what was there (a bad edit never opens the gateway up) and logs one error line.

Most tests call ``Gateway.reload``, what the signal handler calls; one runs the gateway as its
own process and sends it the signal. A policy that does not load at start-up is a start-up
error (exit 2), like a bad option.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.demo import free_port
from tests.tenancy_support import AUDIENCE, ISSUER, Issuer, P, write_policy
from tests.test_cli_e2e import healthy, served_env
from tests.waiting import poll

TEAM_A = """
[[callers]]
name = "team-a"
identities = ["system:serviceaccount:team-a:*"]
endpoints = [{endpoints}]
"""
BROKEN = '[[callers]]\nname = "team-a"\nidentities = ["system:serviceaccount:team-a:*"\n'


@pytest.fixture
async def reloadable(start_gateway, issuer, tmp_path):
    """A token-authenticated gateway whose team-a may call echo and slow-* endpoints."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    policy = write_policy(tmp_path, TEAM_A.format(endpoints='"echo", "slow-*"'))
    gateway = await start_gateway(
        token_audience=AUDIENCE,
        token_issuer=ISSUER,
        jwks_file=str(jwks),
        policy_file=policy,
    )
    gateway.policy_path = policy
    gateway.jwks_path = jwks
    return gateway


async def status_of(gateway, token: str, endpoint: str = "echo") -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.make_url(f"/endpoints/{endpoint}/invocations"), data=b"{}",
                     headers={"Authorization": f"Bearer {token}"}) as response,
    ):  # fmt: skip
        await response.read()
        return response.status


def gauge(registry, name: str, source: str) -> float | None:
    return registry.get_sample_value(P + name, {"source": source})


async def test_a_broken_policy_keeps_the_old_one_and_sets_the_failed_metric(
    reloadable, issuer, registry, tmp_path
):
    """A policy file with broken TOML: the reload logs one error line, reload_failed is 1,
    and a call the old policy allowed still is."""
    token = issuer.token()
    assert await status_of(reloadable, token) == 200
    loaded_at = gauge(registry, "reload_timestamp_seconds", "policy")
    assert gauge(registry, "reload_failed", "policy") == 0
    write_policy(tmp_path, BROKEN)
    with capture_logs() as logs:
        reloadable.app.reload()
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [(e["event"], e["source"]) for e in errors] == [("reload_failed", "policy")]
    assert reloadable.policy_path in errors[0]["error"]
    assert gauge(registry, "reload_failed", "policy") == 1
    assert gauge(registry, "reload_timestamp_seconds", "policy") == loaded_at
    assert await status_of(reloadable, token) == 200


async def test_a_good_policy_takes_effect_without_dropping_a_call_in_flight(
    reloadable, issuer, registry, journal, tmp_path
):
    """A call to slow-500 is in flight when a policy that no longer allows slow-* is loaded:
    the call completes with 200; the next one is 403; reload_failed goes back to 0."""
    token = issuer.token()
    in_flight = asyncio.create_task(status_of(reloadable, token, "slow-500"))
    await poll(lambda: len(journal) == 1)
    write_policy(tmp_path, TEAM_A.format(endpoints='"echo"'))
    reloadable.app.reload()
    assert gauge(registry, "reload_failed", "policy") == 0
    assert await status_of(reloadable, token, "slow-1") == 403
    assert await in_flight == 200
    assert await status_of(reloadable, token) == 200


async def test_a_reloaded_jwks_file_verifies_tokens_of_the_new_key(reloadable, registry):
    """The cluster's keys rotate: after SIGHUP's reload, tokens of the new key are served;
    a JWKS file that does not parse keeps the keys there were."""
    rotated = await asyncio.to_thread(Issuer)  # key generation off the event loop
    assert await status_of(reloadable, rotated.token()) == 403
    reloadable.jwks_path.write_text(json.dumps(rotated.jwks()))
    reloadable.app.reload()
    assert await status_of(reloadable, rotated.token()) == 200
    reloadable.jwks_path.write_text('{"keys": "none"}')
    reloadable.app.reload()
    assert gauge(registry, "reload_failed", "jwks") == 1
    assert await status_of(reloadable, rotated.token()) == 200


async def run_gateway(emulator, *args: str) -> tuple[str, asyncio.subprocess.Process]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), *args,
        env=served_env(emulator), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return f"http://127.0.0.1:{port}", process


async def test_sighup_reloads_the_policy_of_a_running_gateway(emulator, tmp_path, journal):
    """`serve` as a process: SIGHUP with a wider policy lets echo-2 through; SIGHUP with a
    broken one keeps it so, sets reload_failed and logs one error line; SIGTERM exits 0."""
    policy = write_policy(tmp_path, '[default]\nendpoints = ["echo"]\n')
    url, process = await run_gateway(emulator, "--policy-file", policy)

    async def status(endpoint: str) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/endpoints/{endpoint}/invocations", data=b"{}") as response,
        ):
            return response.status

    async def metric(line: str) -> bool:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as answer:
            return line in (await answer.text()).splitlines()

    try:
        await poll(lambda: healthy(url), deadline_s=20)
        assert (await status("echo"), await status("echo-2")) == (200, 403)
        write_policy(tmp_path, '[default]\nendpoints = ["echo*"]\n')
        process.send_signal(signal.SIGHUP)
        await poll(lambda: answers(status("echo-2"), 200), deadline_s=10)
        write_policy(tmp_path, "[default\n")
        process.send_signal(signal.SIGHUP)
        await poll(lambda: metric(P + 'reload_failed{source="policy"} 1.0'), deadline_s=10)
        assert await status("echo-2") == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            out, _ = await process.communicate()
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    failures = [line for line in lines if line["event"] == "reload_failed"]
    assert [line["source"] for line in failures] == ["policy"]
    assert sum(1 for entry in journal if entry.raw_path.startswith("/endpoints/echo-2/")) == 2


async def answers(status, expected: int) -> bool:
    return await status == expected


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        ({"policy.toml": "[default\n"}, "policy"),
        ({"policy.toml": '[[callers]]\nidentities = ["a"]\nrate = 0\n'}, "rate"),
        ({"policy.toml": "", "tls.crt": "no", "tls.key": "no"}, "tls_cert_file"),
    ],
)
async def test_a_file_that_does_not_load_at_start_up_is_exit_2(
    emulator, tmp_path, files, complaint
):
    """Fail closed: a broken policy or TLS file stops start-up with one line and status 2."""
    args = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args += ["--policy-file", str(tmp_path / "policy.toml")]
    if "tls.crt" in files:
        args += ["--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file",
                 str(tmp_path / "tls.key")]  # fmt: skip
    _, process = await run_gateway(emulator, *args)
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 2
    assert err.decode().count("\n") == 1 and complaint in err.decode()
