"""The emulator's settings: which keys it trusts, its region, and the pace of its slow answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: A credentials entry: a secret key, or a (secret key, session token) pair for temporary keys.
Credential = str | tuple[str, str]

DEFAULT_ACCESS_KEY = "AKIDEMULATOR"
DEFAULT_SECRET_KEY = "emulator-secret-key"
#: The largest body InvokeEndpoint accepts: the ``BodyBlob`` max in botocore's service model.
SERVICE_MAX_BODY_BYTES = 6_291_456


def _default_credentials() -> Mapping[str, Credential]:
    return MappingProxyType({DEFAULT_ACCESS_KEY: DEFAULT_SECRET_KEY})


@dataclass(frozen=True)
class EmulatorSettings:
    """How the emulator behaves; every field has the service's default."""

    #: Access key id -> secret key, or -> (secret key, session token) for temporary credentials.
    credentials: Mapping[str, Credential] = field(default_factory=_default_credentials)
    region: str = "us-east-1"
    #: How long ``model-timeout`` waits before its ModelError (the service's limit is 60 s).
    model_timeout_s: float = 60.0
    #: How long ``slow`` waits; ``slow-<N>`` waits N ms instead.
    slow_default_ms: int = 300
    #: How many parts ``stream`` sends, and how long it waits between them; ``stream-<N>-<ms>``
    #: says both in its name instead.
    stream_parts: int = 5
    stream_part_interval_ms: int = 100
    max_body_bytes: int = SERVICE_MAX_BODY_BYTES
    #: How far X-Amz-Date may be from the emulator's clock (AWS allows five minutes).
    clock_skew_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.credentials:
            raise ValueError("credentials: at least one access key is needed")
        for access_key, credential in self.credentials.items():
            if not access_key or not _is_credential(credential):
                raise ValueError(
                    f"credentials[{access_key!r}]: expected a secret key or (secret, token)"
                )
        if not self.region:
            raise ValueError("region: must not be empty")
        for name in (
            "model_timeout_s",
            "slow_default_ms",
            "stream_parts",
            "stream_part_interval_ms",
            "clock_skew_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes: must be positive")

    def secrets(self) -> dict[str, str]:
        """Access key id -> secret key."""
        return {key: _split(credential)[0] for key, credential in self.credentials.items()}

    def session_tokens(self) -> dict[str, str]:
        """Access key id -> the session token it must present, for temporary credentials only."""
        tokens = {key: _split(credential)[1] for key, credential in self.credentials.items()}
        return {key: token for key, token in tokens.items() if token is not None}


def _is_credential(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(part, str) and part for part in value)
    )


def _split(credential: Credential) -> tuple[str, str | None]:
    if isinstance(credential, str):
        return credential, None
    return credential
