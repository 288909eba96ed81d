"""The policy: which caller may invoke which endpoints and operations, how often, how many at once.

A TOML file (``policy_file``), or the ``[policy]`` table of the config file::

    [[policy.callers]]
    name = "team-a"                                    # its metric label; default: identities[0]
    identities = ["system:serviceaccount:team-a:*"]    # exact names or globs
    endpoints = ["team-a-*"]                           # globs; default: none
    operations = ["InvokeEndpoint"]                    # default: all three
    rate = 50                                          # requests a second (token bucket) ...
    burst = 100                                        # ... and its size; default: ceil(rate)
    max_concurrent = 10                                # requests at once; default: no cap

    [policy.default]                                   # callers that match no entry
    endpoints = []                                     # absent table: deny once authentication
                                                       # is configured, else allow everything

A caller is the first entry that names its identity exactly, else the first whose glob matches
it, in file order. Limits are per entry (shared by every identity it matches) and per gateway
process. Caller labels are the entries' names, ``_anonymous`` (no authentication) and
``_other`` (an authenticated caller that matched no entry), so metrics stay bounded whoever
calls.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import CallerForbidden, CallerThrottled

OPERATIONS = ("InvokeEndpoint", "InvokeEndpointAsync", "InvokeEndpointWithResponseStream")
ANONYMOUS = "_anonymous"
OTHER = "_other"
#: Identities resolved to their entry, remembered per policy (glob matching is paid once).
MAX_REMEMBERED_IDENTITIES = 10_000
_GLOB_CHARS = re.compile(r"[*?\[]")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:/._@-]{0,127}")
_ENTRY_KEYS = {"name", "identities", "endpoints", "operations", "rate", "burst", "max_concurrent"}

Clock = Callable[[], float]


class PolicyError(ValueError):
    """A policy that does not load; the message is one line naming the file and the problem."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What one entry of the policy allows its callers."""

    name: str
    identities: tuple[str, ...]
    endpoints: tuple[str, ...]
    operations: frozenset[str]
    rate_per_s: float | None = None
    burst: int = 0
    max_concurrent: int | None = None

    def allows(self, endpoint: str, operation: str) -> bool:
        """Whether this entry lets its callers invoke ``operation`` on ``endpoint``."""
        return operation in self.operations and any(
            fnmatch.fnmatchcase(endpoint, pattern) for pattern in self.endpoints
        )


#: The default when the policy has none and nobody is authenticated: everything, no limits.
ALLOW_ALL = Rule("", (), ("*",), frozenset(OPERATIONS))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the proven identity (None: nobody), its metric label, its entry."""

    identity: str | None
    label: str
    rule: Rule | None


class Policy:
    """A loaded policy: its entries, its default, and who matches which."""

    def __init__(self, rules: tuple[Rule, ...], default: Rule | None) -> None:
        self.rules = rules
        #: None: callers that match nothing are denied.
        self.default = default
        self.names = frozenset(rule.name for rule in rules)
        self._exact: dict[str, Rule] = {}
        for rule in rules:
            for identity in rule.identities:
                if not _GLOB_CHARS.search(identity):
                    self._exact.setdefault(identity, rule)
        self._globs = [
            (pattern, rule)
            for rule in rules
            for pattern in rule.identities
            if _GLOB_CHARS.search(pattern)
        ]
        self._resolved: dict[str, Rule | None] = {}
        #: (entry name, endpoint, operation) -> allowed, remembered like identities.
        self._allowed: dict[tuple[str, str, str], bool] = {}

    def allows(self, rule: Rule, endpoint: str, operation: str) -> bool:
        """Whether ``rule`` (one of this policy's) lets its callers invoke ``operation`` on
        ``endpoint``."""
        key = (rule.name, endpoint, operation)
        allowed = self._allowed.get(key)
        if allowed is None:
            allowed = rule.allows(endpoint, operation)
            if len(self._allowed) < MAX_REMEMBERED_IDENTITIES:
                self._allowed[key] = allowed
        return allowed

    def rule_for(self, identity: str) -> Rule | None:
        """The entry naming ``identity`` (exact first, then globs in file order), or None."""
        try:
            return self._resolved[identity]
        except KeyError:
            pass
        rule = self._exact.get(identity) or next(
            (rule for pattern, rule in self._globs if fnmatch.fnmatchcase(identity, pattern)),
            None,
        )
        if len(self._resolved) < MAX_REMEMBERED_IDENTITIES:
            self._resolved[identity] = rule
        return rule


def load_policy(path: str, *, authentication: bool) -> Policy:
    """Read and check the policy at ``path`` (its ``[policy]`` table when it has one)."""
    try:
        with Path(path).open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise PolicyError(f"policy {path}: no such file") from None
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy {path}: cannot be read as TOML: {exc}") from None
    table = data.get("policy", data)
    try:
        return parse_policy(table, authentication=authentication)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"policy {path}: {exc}") from None


def parse_policy(table: Mapping[str, Any], *, authentication: bool) -> Policy:
    """A Policy from its TOML table; ValueError naming the entry and field that is wrong."""
    unknown = sorted(set(table) - {"callers", "default"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected [[callers]] and [default])")
    entries = table.get("callers", [])
    if not isinstance(entries, list):
        raise ValueError("callers must be an array of tables ([[callers]])")
    rules: list[Rule] = []
    for index, entry in enumerate(entries):
        rule = _rule(entry, f"callers[{index}]", default=False)
        if rule.name in {r.name for r in rules}:
            raise ValueError(f"callers[{index}]: name {rule.name!r} is used twice")
        rules.append(rule)
    if "default" in table:
        default: Rule | None = _rule(table["default"], "default", default=True)
    else:
        default = None if authentication else ALLOW_ALL
    return Policy(tuple(rules), default)


def _rule(entry: Any, where: str, *, default: bool) -> Rule:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a table")
    allowed_keys = _ENTRY_KEYS - ({"name", "identities"} if default else set())
    unknown = sorted(set(entry) - allowed_keys)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    identities: tuple[str, ...] = ()
    name = ""
    if not default:
        identities = _strings(entry.get("identities"), f"{where}.identities")
        if not identities:
            raise ValueError(f"{where}.identities: name at least one identity")
        name = entry.get("name", identities[0])
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"{where}.name {name!r}: 1-128 letters, digits and :/._@- (not starting with _),"
                " as it becomes the caller label"
            )
    endpoints = _strings(entry.get("endpoints", []), f"{where}.endpoints")
    operations = _strings(entry.get("operations", list(OPERATIONS)), f"{where}.operations")
    for operation in operations:
        if operation not in OPERATIONS:
            raise ValueError(f"{where}.operations: {operation!r} is not one of {OPERATIONS}")
    rate = entry.get("rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf
    ):
        raise ValueError(f"{where}.rate must be a positive number of requests a second")
    burst = entry.get("burst", math.ceil(rate) if rate else 0)
    if rate is None and "burst" in entry:
        raise ValueError(f"{where}.burst needs a rate")
    if rate is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise ValueError(f"{where}.burst must be a whole number of requests, at least 1")
    cap = entry.get("max_concurrent")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"{where}.max_concurrent must be a whole number, at least 1")
    return Rule(
        name,
        identities,
        endpoints,
        frozenset(operations),
        float(rate) if rate is not None else None,
        burst,
        cap,
    )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a list of non-empty strings")
    return tuple(value)


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; a request takes one or is refused."""

    __slots__ = ("_clock", "_tokens", "_updated", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> bool:
        """Take a token if there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class _Limits:
    """One entry's rate and cap, and its requests in flight."""

    __slots__ = ("bucket", "in_flight", "max_concurrent")

    def __init__(self) -> None:
        self.bucket: TokenBucket | None = None
        self.in_flight = 0
        self.max_concurrent: int | None = None

    def release(self) -> None:
        self.in_flight -= 1


class Guard:
    """Decides for each request under the current policy; a reload swaps the policy and keeps
    each entry's bucket and in-flight count (by name) when its limits stay the same."""

    def __init__(self, policy: Policy, clock: Clock) -> None:
        self._clock = clock
        self._limits: dict[str, _Limits] = {}
        self.policy = policy
        self.replace(policy)

    def replace(self, policy: Policy) -> None:
        """Decide by ``policy`` from now on."""
        rules = [*policy.rules, *([policy.default] if policy.default else [])]
        limits: dict[str, _Limits] = {}
        for rule in rules:
            for label in (rule.name,) if rule.name else (ANONYMOUS, OTHER):
                kept = limits[label] = self._limits.get(label) or _Limits()
                kept.max_concurrent = rule.max_concurrent
                bucket = kept.bucket
                if rule.rate_per_s is None:
                    kept.bucket = None
                elif bucket is None or (bucket.rate_per_s, bucket.burst) != (
                    rule.rate_per_s,
                    rule.burst,
                ):
                    kept.bucket = TokenBucket(rule.rate_per_s, rule.burst, self._clock)
        self._limits = limits
        self.policy = policy
        self._callers: dict[str | None, Caller] = {}

    def resolve(self, identity: str | None) -> tuple[str, Rule | None]:
        """The caller label of ``identity`` (None: anonymous) and the entry that applies."""
        policy = self.policy
        if identity is not None:
            rule = policy.rule_for(identity)
            if rule is not None:
                return rule.name, rule
        return (ANONYMOUS if identity is None else OTHER), policy.default

    def caller(self, identity: str | None) -> Caller:
        """The Caller that ``identity`` is under the current policy (remembered per policy)."""
        callers = self._callers
        found = callers.get(identity)
        if found is None:
            found = Caller(identity, *self.resolve(identity))
            if len(callers) < MAX_REMEMBERED_IDENTITIES:
                callers[identity] = found
        return found

    def admit(self, caller: Caller, endpoint: str, operation: str) -> Callable[[], None] | None:
        """Let the request through (returning what to call when it ends, or None), or raise
        CallerForbidden or CallerThrottled."""
        label, rule = caller.label, caller.rule
        who = caller.identity or ANONYMOUS
        if rule is None or not self.policy.allows(rule, endpoint, operation):
            raise CallerForbidden(
                f"User: {who} is not authorized to perform: sagemaker:{operation} on resource: "
                f"endpoint/{endpoint} (gateway policy, caller {label})"
            )
        limits = self._limits.get(label)
        if limits is None:  # an entry without limits
            return None
        cap = limits.max_concurrent
        if cap is not None and limits.in_flight >= cap:
            raise CallerThrottled(
                f"Caller {who} has {cap} requests in flight (its policy's max_concurrent); "
                "retry with backoff"
            )
        if limits.bucket is not None and not limits.bucket.take():
            raise CallerThrottled(
                f"Caller {who} is over its policy's rate ({limits.bucket.rate_per_s:g} requests "
                f"a second, burst {limits.bucket.burst}); retry with backoff"
            )
        limits.in_flight += 1
        return limits.release
