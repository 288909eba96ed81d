"""One frozen Config, from flag > environment (``SMGW_*``) > TOML file > default.

Every option has one row in ``OPTIONS``: its name (the flag without dashes, the env var after
``SMGW_``, the TOML key), how to parse and check it, its default and one line of help. The CLI,
the env reader, the file reader and ``config/gateway.toml`` all follow that one table.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "SMGW_"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_PORT = 8080
_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")


class ConfigError(ValueError):
    """A bad option value; the message is the one line the CLI prints before exiting 2."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the gateway's behaviour depends on, resolved once at start-up."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    region: str = ""
    upstream_url: str = ""
    upstream_timeout_s: float = 70.0
    connect_timeout_s: float = 5.0
    max_body_bytes: int = 5_242_880
    log_level: str = "info"
    upstream_pool_size: int = 1024
    credential_check_interval_s: float = 60.0
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    max_concurrent_requests: int = 1024
    max_connections: int = 4096
    allowed_endpoints: tuple[str, ...] = ()
    shutdown_grace_s: float = 5.0
    drain_timeout_s: float = 75.0
    max_retries: int = 2
    stream_idle_timeout_s: float = 60.0
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    inference_component_label: bool = False
    max_endpoint_labels: int = 500
    workers: int = 1
    #: Per endpoint name or glob, in order: where a request goes when its endpoint cannot take
    #: it ("endpoint" in this Region, "REGION/endpoint" in another). First match wins.
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Runtime URLs of other Regions, overriding https://runtime.sagemaker.REGION.amazonaws.com.
    region_urls: tuple[tuple[str, str], ...] = ()
    circuit_failures: int = 5
    circuit_cooldown_s: float = 30.0
    failover_header: bool = False

    # Callers (DESIGN section 8): all off by default.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    tls_reload_interval_s: float = 10.0
    token_audience: str = ""
    token_issuer: str = ""
    jwks_file: str = ""
    jwks_url: str = ""
    jwks_ca_file: str = ""
    jwks_refresh_interval_s: float = 300.0
    jwks_fetch_timeout_s: float = 5.0
    jwks_max_age_s: float = 86400.0
    policy_file: str = ""

    @property
    def authentication(self) -> bool:
        """Whether callers must prove who they are (a client CA or token audience is set)."""
        return bool(self.tls_client_ca_file or self.token_audience)

    @property
    def upstream_host(self) -> str:
        """The Host header SigV4 signs: the upstream's host, with its port when not default."""
        parts = urlsplit(self.upstream_url)
        default_port = 443 if parts.scheme == "https" else 80
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal goes back in brackets
            host = f"[{host}]"
        if parts.port is not None and parts.port != default_port:
            return f"{host}:{parts.port}"
        return host


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be zero or a positive number of seconds")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be zero or a positive whole number")
    return value


_ENDPOINT_GLOB = re.compile(r"[a-zA-Z0-9*?\[\]!-]{1,63}")


def _endpoint_patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    for pattern in patterns:
        if not _ENDPOINT_GLOB.fullmatch(pattern):
            raise ValueError(
                f"must be endpoint names or glob patterns separated by commas; got {pattern!r}"
            )
    return patterns


_ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")


def _target(text: str) -> str:
    region, _, endpoint = text.rpartition("/")
    if region and not _REGION.fullmatch(region):
        raise ValueError(f"must name targets as endpoint or REGION/endpoint; got {text!r}")
    if not _ENDPOINT_NAME.fullmatch(endpoint):
        raise ValueError(f"must name targets by valid endpoint names; got {text!r}")
    return text


def _fallbacks(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``pattern=target,target;pattern=target`` (a TOML table arrives in this form)."""
    rules = []
    for rule in (part.strip() for part in text.split(";")):
        if not rule:
            continue
        pattern, equals, targets = rule.partition("=")
        names = tuple(_target(name.strip()) for name in targets.split(",") if name.strip())
        if not equals or not names or len(_endpoint_patterns(pattern)) != 1:
            raise ValueError(f"must be pattern=target,target;...; got {rule!r}")
        rules.append((pattern.strip(), names))
    return tuple(rules)


def _region_urls(text: str) -> tuple[tuple[str, str], ...]:
    """``region=url,region=url`` (a TOML table arrives with ``;`` between pairs)."""
    pairs = []
    for pair in (part.strip() for part in re.split("[,;]", text)):
        if pair:
            region, equals, url = pair.partition("=")
            if not equals:
                raise ValueError(f"must be region=url pairs separated by commas; got {pair!r}")
            pairs.append((_region(region.strip()), _url(url.strip())))
    return tuple(pairs)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive whole number")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _optional_port(text: str) -> int | None:
    if text.strip().lower() in ("", "off", "none"):
        return None
    return _port(text)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _host(text: str) -> str:
    if not text or any(ch.isspace() for ch in text):
        raise ValueError("must be a host name or an IP address")
    return text


def _region(text: str) -> str:
    if not _REGION.fullmatch(text):
        raise ValueError("must be an AWS region name such as us-east-1")
    return text


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("must be a bare scheme://host[:port], without path, query or user")
    parts.port  # noqa: B018 - raises ValueError for a port out of range
    return text.rstrip("/")


def _path(text: str) -> str:
    if not text.strip():
        raise ValueError("must be a file path")
    return text


def _text(text: str) -> str:
    if not text.strip() or any(not " " < ch <= "~" for ch in text):
        raise ValueError("must be non-empty printable text without spaces")
    return text


def _jwks_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        raise ValueError("must be an http:// or https:// URL with a host (and a path)")
    parts.port  # noqa: B018 - raises ValueError for a port out of range
    return text


def _log_level(text: str) -> str:
    level = text.lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class Option:
    """One configurable option: where it lives in Config, how to parse it, what it means."""

    name: str  # flag/env/TOML name: --upstream-timeout, SMGW_UPSTREAM_TIMEOUT, upstream_timeout
    attr: str  # Config field
    parse: Callable[[str], Any]
    help: str
    #: Other environment variables that set this option, read after SMGW_<NAME>, before the file.
    fallback_env: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS = (
    Option("host", "host", _host, "address to listen on; loopback unless you mean to expose it"),
    Option("port", "port", _port, "port to listen on (0 picks a free one)"),
    Option(
        "region",
        "region",
        _region,
        "AWS region; else AWS_REGION / AWS_DEFAULT_REGION",
        fallback_env=("AWS_REGION", "AWS_DEFAULT_REGION"),
    ),
    Option("upstream_url", "upstream_url", _url, "runtime URL; default is the region's"),
    Option(
        "upstream_timeout",
        "upstream_timeout_s",
        _positive_float,
        "seconds for the whole upstream exchange: the model's 60 s plus margin; then 504",
    ),
    Option(
        "connect_timeout",
        "connect_timeout_s",
        _positive_float,
        "seconds to open a connection to the upstream; then 503",
    ),
    Option("max_body_bytes", "max_body_bytes", _positive_int, "largest request body accepted"),
    Option("log_level", "log_level", _log_level, "debug, info, warning or error"),
    Option(
        "upstream_pool_size",
        "upstream_pool_size",
        _positive_int,
        "most simultaneous upstream connections (kept alive and reused)",
    ),
    Option(
        "credential_check_interval",
        "credential_check_interval_s",
        _positive_float,
        "seconds between background looks at the credentials (botocore refreshes them early)",
    ),
    Option(
        "head_timeout",
        "head_timeout_s",
        _positive_float,
        "seconds a client has to send a request's line and headers; then the connection closes",
    ),
    Option(
        "body_timeout",
        "body_timeout_s",
        _positive_float,
        "seconds a client has to send a request's whole body; then 408",
    ),
    Option(
        "keepalive_timeout",
        "keepalive_timeout_s",
        _positive_float,
        "seconds an idle client connection is kept open",
    ),
    Option(
        "max_concurrent_requests",
        "max_concurrent_requests",
        _positive_int,
        "requests handled at once; more get 429 ThrottlingException at once, never a queue",
    ),
    Option(
        "max_connections",
        "max_connections",
        _positive_int,
        "client connections open at once; more are closed on arrival",
    ),
    Option(
        "allowed_endpoints",
        "allowed_endpoints",
        _endpoint_patterns,
        "endpoint names or glob patterns, comma-separated; others get 403 (empty: all)",
    ),
    Option(
        "shutdown_grace",
        "shutdown_grace_s",
        _non_negative_float,
        "seconds after SIGTERM that new requests are still taken while /readyz reports 503",
    ),
    Option(
        "drain_timeout",
        "drain_timeout_s",
        _positive_float,
        "seconds in-flight requests get to finish once the listener is closed",
    ),
    Option(
        "workers",
        "workers",
        _positive_int,
        "processes sharing the port (SO_REUSEPORT), metrics summed over them; needs a fixed port",
    ),
    Option(
        "max_endpoint_labels",
        "max_endpoint_labels",
        _positive_int,
        'endpoint names that become metric labels; later ones count as endpoint="_other"',
    ),
    Option(
        "inference_component_label",
        "inference_component_label",
        _boolean,
        "add the inference component as a metric label (off: one series per component)",
    ),
    Option(
        "admin_port",
        "admin_port",
        _optional_port,
        "a second listener with only /healthz, /readyz and /metrics (off by default)",
    ),
    Option(
        "admin_host",
        "admin_host",
        _host,
        "address of the admin listener; 0.0.0.0 lets probes and Prometheus reach a sidecar",
    ),
    Option(
        "stream_idle_timeout",
        "stream_idle_timeout_s",
        _positive_float,
        "seconds a response stream may go quiet between parts once it has started",
    ),
    Option(
        "max_retries",
        "max_retries",
        _non_negative_int,
        "retries of a connection failure or throttling, within the deadline and a retry budget",
    ),
    Option(
        "fallbacks",
        "fallbacks",
        _fallbacks,
        "per endpoint or glob, targets tried in order when nothing can have run (README)",
    ),
    Option(
        "region_urls",
        "region_urls",
        _region_urls,
        "region=url pairs: runtime URLs of fallback Regions instead of their public ones",
    ),
    Option(
        "circuit_failures",
        "circuit_failures",
        _positive_int,
        "consecutive failures (connect, 503, not ready, throttled) that open a target's circuit",
    ),
    Option(
        "circuit_cooldown",
        "circuit_cooldown_s",
        _positive_float,
        "seconds an open circuit is skipped before one request probes the target again",
    ),
    Option(
        "failover_header",
        "failover_header",
        _boolean,
        "add x-smgw-target (the target that answered) to answers of endpoints with fallbacks",
    ),
    Option("tls_cert_file", "tls_cert_file", _path, "PEM certificate chain: serve TLS (off: HTTP)"),
    Option("tls_key_file", "tls_key_file", _path, "PEM private key of tls_cert_file"),
    Option(
        "tls_client_ca_file",
        "tls_client_ca_file",
        _path,
        "PEM CAs whose client certificates identify callers (URI SAN, else first DNS SAN)",
    ),
    Option(
        "tls_reload_interval",
        "tls_reload_interval_s",
        _positive_float,
        "seconds between looks at the TLS files; a changed file is loaded for new connections",
    ),
    Option(
        "token_audience",
        "token_audience",
        _text,
        "accept Kubernetes service-account bearer tokens issued for this audience",
    ),
    Option("token_issuer", "token_issuer", _text, "the tokens' issuer (iss), checked exactly"),
    Option("jwks_file", "jwks_file", _path, "JWKS file with the keys that sign the tokens"),
    Option("jwks_url", "jwks_url", _jwks_url, "or a URL to fetch it from (cached, refreshed)"),
    Option("jwks_ca_file", "jwks_ca_file", _path, "PEM CAs to verify jwks_url (else the system's)"),
    Option(
        "jwks_refresh_interval",
        "jwks_refresh_interval_s",
        _positive_float,
        "seconds between fetches of jwks_url",
    ),
    Option(
        "jwks_fetch_timeout",
        "jwks_fetch_timeout_s",
        _positive_float,
        "seconds a fetch of jwks_url may take, connecting included",
    ),
    Option(
        "jwks_max_age",
        "jwks_max_age_s",
        _positive_float,
        "seconds keys fetched from jwks_url are used while refreshes fail; then tokens get 503",
    ),
    Option(
        "policy_file",
        "policy_file",
        _path,
        "TOML policy: callers, their endpoints, operations, rate and cap (else [policy] here)",
    ),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


def load_config(
    flags: Mapping[str, str | None],
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
    *,
    require_region: bool = True,
) -> Config:
    """Resolve every option by precedence flag > env > file > default, then check it.

    ``flags`` maps option names to the raw text given on the command line (None or absent when
    not given). Raises ConfigError with one line naming the option, its source and the rule.
    Only a gateway that signs needs a region (``sagemaker-gateway openapi`` does not).
    """
    env = os.environ if env is None else env
    path = config_path or env.get(ENV_PREFIX + "CONFIG")
    data = _read_toml(path) if path else {}
    file_values = _file_options(data, path) if path else {}
    values: dict[str, Any] = {}
    for option in OPTIONS:
        sources = [
            (option.flag, flags.get(option.name)),
            (option.env, env.get(option.env)),
            *((name, env.get(name) or None) for name in option.fallback_env),
            (f"{path}: {option.name}", file_values.get(option.name)),
        ]
        for source, raw in sources:
            if raw is None:
                continue
            if isinstance(raw, list):  # a TOML array, for the options that take several values
                raw = ",".join(str(item) for item in raw)
            elif isinstance(raw, dict):  # a TOML table: fallbacks, region_urls
                raw = _table_text(raw)
            try:
                values[option.attr] = option.parse(str(raw))
            except ValueError as exc:
                reason = str(exc) if "must" in str(exc) else "is not a valid value"
                raise ConfigError(f"{source}={raw!r}: {option.name} {reason}") from None
            break
    if values.get("workers", 1) > 1 and values.get("port", DEFAULT_PORT) == 0:
        raise ConfigError("--workers: more than one worker needs a fixed --port, not 0")
    if values.get("region"):
        region = values["region"]
        values.setdefault("upstream_url", f"https://runtime.sagemaker.{region}.amazonaws.com")
    elif require_region:
        raise ConfigError("region: none given; pass --region or set AWS_REGION")
    _check_callers(values)
    if path and "policy_file" not in values and "policy" in data:
        values["policy_file"] = path  # the [policy] table of the config file itself
    return Config(**values)


def _table_text(table: dict[str, Any]) -> str:
    """A TOML table in its options' text form: ``key=a,b;key=c``."""
    return ";".join(
        f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in table.items()
    )


def _check_callers(values: dict[str, Any]) -> None:
    """The options of DESIGN section 8 that only make sense together."""
    tls = ("tls_cert_file", "tls_key_file")
    if bool(values.get(tls[0])) != bool(values.get(tls[1])):
        raise ConfigError("tls_cert_file and tls_key_file: give both or neither")
    if values.get("tls_client_ca_file") and not values.get("tls_cert_file"):
        raise ConfigError("tls_client_ca_file: client certificates need tls_cert_file")
    token = ("token_audience", "token_issuer")
    jwks = [name for name in ("jwks_file", "jwks_url") if values.get(name)]
    if values.get(token[0]) or values.get(token[1]) or jwks:
        if not (values.get(token[0]) and values.get(token[1])):
            raise ConfigError("token_audience, token_issuer: bearer tokens need both")
        if len(jwks) != 1:
            raise ConfigError("jwks_file, jwks_url: bearer tokens need exactly one of them")


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"--config {path}: cannot be read as TOML: {exc}") from None


def _file_options(data: dict[str, Any], path: str) -> dict[str, Any]:
    # A [policy] table beside [gateway] is the policy (gateway/policy.py), not options.
    gateway = data.get("gateway", {key: value for key, value in data.items() if key != "policy"})
    unknown = sorted(set(gateway) - set(OPTIONS_BY_NAME))
    if unknown:
        raise ConfigError(f"{path}: unknown option {unknown[0]!r}")
    return dict(gateway)


def config_fields() -> tuple[str, ...]:
    """The names of Config's fields (for tests that check every option is documented)."""
    return tuple(f.name for f in fields(Config))
