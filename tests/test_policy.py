"""The policy: per caller, which endpoints and operations, how fast, how many at once.

The rules are read from TOML (``parse_policy``, ``load_policy``); end to end, callers prove who
they are with tokens (keys from a JWKS file) and the gateway decides before forwarding. Token
buckets run on a clock the test moves, never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from gateway.errors import CallerThrottled
from gateway.policy import (
    ANONYMOUS,
    OTHER,
    Guard,
    PolicyError,
    TokenBucket,
    load_policy,
    parse_policy,
)
from tests.tenancy_support import (
    AUDIENCE,
    ISSUER,
    TEAM_A_SCORER,
    ManualClock,
    P,
    caller_labels,
    write_policy,
)
from tests.waiting import poll

POLICY = """
[[callers]]
name = "team-a"
identities = ["system:serviceaccount:team-a:*"]
endpoints = ["team-a-*", "echo*"]
operations = ["InvokeEndpoint"]

[[callers]]
name = "limited"
identities = ["system:serviceaccount:team-c:limited"]
endpoints = ["echo"]
rate = 5
burst = 5

[[callers]]
name = "capped"
identities = ["system:serviceaccount:team-c:capped"]
endpoints = ["echo", "hang"]
max_concurrent = 2
"""


# --- the file ------------------------------------------------------------------------------


def test_exact_identities_win_over_globs_and_globs_go_in_file_order():
    """An exact name picks its entry wherever it is; globs are tried in the order written."""
    policy = parse_policy(
        {"callers": [
            {"name": "all", "identities": ["system:serviceaccount:*"], "endpoints": ["*"]},
            {"name": "scorer", "identities": [TEAM_A_SCORER], "endpoints": ["x"]},
            {"name": "team-a", "identities": ["system:serviceaccount:team-a:*"]},
        ]},
        authentication=True,
    )  # fmt: skip
    assert policy.rule_for(TEAM_A_SCORER).name == "scorer"
    assert policy.rule_for("system:serviceaccount:team-a:other").name == "all"
    assert policy.rule_for("spiffe://cluster.local/ns/x/sa/y") is None


def test_without_a_default_nobody_unmatched_passes_once_authentication_is_on():
    """No [default]: with authentication, unmatched callers are denied; without, all pass."""
    assert parse_policy({}, authentication=True).default is None
    assert parse_policy({}, authentication=False).default.allows("any", "InvokeEndpoint")


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        ({"callers": [{"identities": ["a"], "rate": -1}]}, "callers[0].rate"),
        ({"callers": [{"identities": ["a"], "burst": 3}]}, "burst needs a rate"),
        ({"callers": [{"identities": ["a"], "max_concurrent": 0}]}, "max_concurrent"),
        ({"callers": [{"identities": ["a"], "operations": ["DeleteEndpoint"]}]}, "operations"),
        ({"callers": [{"identities": []}]}, "at least one identity"),
        ({"callers": [{"identities": ["a"], "name": "_other"}]}, "name '_other'"),
        ({"callers": [{"identities": ["a"]}, {"identities": ["a"]}]}, "used twice"),
        ({"callers": [{"identities": ["a"], "endpoint": ["x"]}]}, "unknown key 'endpoint'"),
        ({"caller": []}, "unknown key 'caller'"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_entry_and_field(table, complaint):
    """Each mistake is a ValueError whose message points at it."""
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_policy(table, authentication=True)


def test_a_policy_file_error_is_one_line_naming_the_file(tmp_path):
    """Broken TOML and a bad value both give one line that starts with the file's path."""
    for text in ("[[callers]\n", '[[callers]]\nidentities = "a"\nrate = "fast"\n'):
        path = write_policy(tmp_path, text)
        with pytest.raises(PolicyError) as caught:
            load_policy(path, authentication=True)
        assert str(caught.value).startswith(f"policy {path}: ") and "\n" not in str(caught.value)


def test_the_config_files_policy_table_is_read_like_a_policy_file(tmp_path):
    """A [policy] table beside [gateway] in the config file is the same policy."""
    path = write_policy(tmp_path, '[gateway]\nport = 1\n\n[[policy.callers]]\nidentities = ["a"]\n')
    assert load_policy(path, authentication=True).rule_for("a").name == "a"


# --- the bucket and the guard ------------------------------------------------------------


def test_a_token_bucket_gives_its_burst_then_its_rate():
    """5 a second, burst 5: five at once, then one more per fifth of a second, never above 5."""
    clock = ManualClock()
    bucket = TokenBucket(5.0, 5, clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.2)
    assert [bucket.take(), bucket.take()] == [True, False]
    clock.advance(60)
    assert sum(bucket.take() for _ in range(10)) == 5


def test_a_reload_keeps_the_bucket_and_in_flight_count_of_an_unchanged_entry():
    """A caller that spent its burst does not get it back by a reload with the same limits;
    its calls in flight still count against its cap; new limits start a new bucket."""
    clock = ManualClock()

    def policy(rate: int):
        entry = {"name": "x", "identities": ["x"], "endpoints": ["*"], "rate": rate,
                 "max_concurrent": 3}  # fmt: skip
        return parse_policy({"callers": [entry]}, authentication=True)

    guard = Guard(policy(2), clock)

    def admit():
        return guard.admit(guard.caller("x"), "e", "InvokeEndpoint")

    releases = [admit() for _ in range(2)]
    guard.replace(policy(2))
    with pytest.raises(CallerThrottled, match="over its policy's rate"):
        admit()
    guard.replace(policy(10))
    admit()
    with pytest.raises(CallerThrottled, match="3 requests in flight"):
        admit()
    for release in releases:
        release()
    admit()


def test_unmatched_and_anonymous_callers_get_the_reserved_labels():
    """No identity is _anonymous, an unmatched one _other: never the identity itself."""
    guard = Guard(
        parse_policy({"default": {"endpoints": ["*"]}}, authentication=True), ManualClock()
    )
    assert guard.resolve(None)[0] == ANONYMOUS
    assert guard.resolve("system:serviceaccount:evil:made-up-123")[0] == OTHER


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture
async def policed(start_gateway, issuer, clock, tmp_path):
    """A gateway taking tokens (keys from a JWKS file) under POLICY, on the test's clock."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    return await start_gateway(
        clock=clock,
        token_audience=AUDIENCE,
        token_issuer=ISSUER,
        jwks_file=str(jwks),
        policy_file=write_policy(tmp_path, POLICY),
    )


async def post(session, gateway, token: str, endpoint: str = "echo", suffix="invocations"):
    """POST as the token's caller; (status, x-amzn-ErrorType, message)."""
    async with session.post(
        gateway.make_url(f"/endpoints/{endpoint}/{suffix}"),
        data=b"{}",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as response:
        body = await response.read()
        message = json.loads(body).get("message", "") if response.status >= 300 else ""
        return response.status, response.headers.get("x-amzn-ErrorType", ""), message


async def test_a_team_a_caller_is_denied_team_b_endpoints_and_other_operations(
    policed, issuer, journal, registry
):
    """Allowed team-a-*: team-b-x is 403 AccessDeniedException naming the caller and the
    endpoint, as is async inference (not among its operations); nothing is forwarded."""
    token = issuer.token()
    async with aiohttp.ClientSession() as session:
        status, error, message = await post(session, policed, token, "team-b-x")
        assert (status, error) == (403, "AccessDeniedException")
        assert TEAM_A_SCORER in message and "team-b-x" in message
        status, error, _ = await post(session, policed, token, "echo", "async-invocations")
        assert (status, error) == (403, "AccessDeniedException")
        assert journal == []
        assert (await post(session, policed, token, "echo-team-a"))[0] == 200
    assert len(journal) == 1
    forbidden = registry.get_sample_value(P + "rejected_requests_total", {"reason": "forbidden"})
    assert forbidden == 2
    labels = {"endpoint": "team-b-x", "variant": "unknown", "operation": "InvokeEndpoint",
              "caller": "team-a", "status": "403", "error": "AccessDeniedException"}  # fmt: skip
    assert registry.get_sample_value(P + "requests_total", labels) == 1


async def test_five_a_second_burst_five_lets_exactly_five_of_twenty_through(
    policed, issuer, journal, registry, clock
):
    """20 calls at once from a caller limited to 5/s with burst 5, the clock standing still:
    exactly 5 are served and 15 get 429 ThrottlingException before anything is forwarded.
    A second later the bucket holds 5 again."""
    token = issuer.token("system:serviceaccount:team-c:limited")
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, policed, token) for _ in range(20)))
        statuses = sorted((status, error) for status, error, _ in results)
        assert statuses == [(200, "")] * 5 + [(429, "ThrottlingException")] * 15
        assert len(journal) == 5
        clock.advance(1.0)
        again = await asyncio.gather(*(post(session, policed, token) for _ in range(6)))
    assert sorted(status for status, _, _ in again) == [200] * 5 + [429]
    assert (
        registry.get_sample_value(P + "rejected_requests_total", {"reason": "rate_limited"}) == 16
    )
    labels = {"endpoint": "echo", "variant": "unknown", "operation": "InvokeEndpoint",
              "caller": "limited", "status": "429", "error": "ThrottlingException"}  # fmt: skip
    assert registry.get_sample_value(P + "requests_total", labels) == 16


async def test_a_caller_capped_at_two_has_its_third_call_refused_at_once(
    policed, issuer, journal, registry
):
    """Two calls held open by a hanging endpoint: the third is 429 at once while they are
    still in flight; when they end, the caller may call again."""
    token = issuer.token("system:serviceaccount:team-c:capped")
    in_flight = {"endpoint": "hang"}
    async with aiohttp.ClientSession() as holding:
        held = [asyncio.create_task(post(holding, policed, token, "hang")) for _ in range(2)]
        await poll(lambda: len(journal) == 2)
        async with aiohttp.ClientSession() as session:
            status, error, message = await post(session, policed, token, "echo")
            assert (status, error) == (429, "ThrottlingException")
            assert "2 requests in flight" in message
            assert not any(task.done() for task in held)
            assert registry.get_sample_value(P + "in_flight_requests", in_flight) == 2
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
    await poll(lambda: registry.get_sample_value(P + "in_flight_requests", in_flight) == 0)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, policed, token, "echo"))[0] == 200
    assert len(journal) == 3


async def test_caller_labels_are_only_the_policys_names_and_the_reserved_two(
    policed, issuer, registry
):
    """Thirty made-up service accounts and the named ones: the caller label takes no value
    but the policy's names and _other (the default denies them)."""
    async with aiohttp.ClientSession() as session:
        for index in range(30):
            token = issuer.token(f"system:serviceaccount:mallory:bot-{index}")
            assert (await post(session, policed, token))[:2] == (403, "AccessDeniedException")
        for subject in (TEAM_A_SCORER, "system:serviceaccount:team-a:x",
                        "system:serviceaccount:team-c:limited"):  # fmt: skip
            assert (await post(session, policed, issuer.token(subject)))[0] == 200
    assert caller_labels(registry) == {"team-a", "limited", OTHER}


async def test_a_policy_without_authentication_limits_the_anonymous_caller(
    start_gateway, tmp_path, clock, registry, journal
):
    """No authentication (a sidecar): the default entry applies to everyone, as _anonymous."""
    policy = write_policy(tmp_path, '[default]\nendpoints = ["echo"]\nrate = 1\nburst = 2\n')
    gateway = await start_gateway(clock=clock, policy_file=policy)
    async with aiohttp.ClientSession() as session:
        results = [await post(session, gateway, "ignored") for _ in range(3)]
        assert [status for status, _, _ in results] == [200, 200, 429]
        assert (await post(session, gateway, "ignored", "other"))[:2] == (
            403,
            "AccessDeniedException",
        )
    assert caller_labels(registry) == {ANONYMOUS}
    assert len(journal) == 2
