"""The callers' options (DESIGN section 8): what only makes sense together is refused alone."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config
from tests.test_config import write_toml

ENV = {"AWS_REGION": "us-east-1"}


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        ({"tls_cert_file": "c.pem"}, "tls_cert_file and tls_key_file"),
        ({"tls_key_file": "k.pem"}, "tls_cert_file and tls_key_file"),
        ({"tls_client_ca_file": "ca.pem"}, "need tls_cert_file"),
        ({"token_audience": "gw", "jwks_file": "j.json"}, "need both"),
        ({"token_audience": "gw", "token_issuer": "https://i"}, "exactly one"),
        (
            {
                "token_audience": "gw",
                "token_issuer": "https://i",
                "jwks_file": "j",
                "jwks_url": "https://i/keys",
            },
            "exactly one",
        ),
        ({"jwks_url": "ftp://i/keys"}, "jwks_url"),
        ({"token_audience": "has space"}, "token_audience"),
    ],
)
def test_incomplete_caller_options_are_one_line_errors(flags, complaint):
    """Half a TLS pair, a client CA without TLS, a token audience without issuer or keys."""
    with pytest.raises(ConfigError, match=complaint) as caught:
        load_config(flags, env=ENV)
    assert "\n" not in str(caught.value)


def test_authentication_is_on_with_a_client_ca_or_a_token_audience():
    """Either way of proving who calls turns authentication (and so default-deny) on."""
    assert not load_config({}, env=ENV).authentication
    tls = {"tls_cert_file": "c", "tls_key_file": "k", "tls_client_ca_file": "ca"}
    assert load_config(tls, env=ENV).authentication
    tokens = {"token_audience": "gw", "token_issuer": "https://i", "jwks_file": "j"}
    assert load_config(tokens, env=ENV).authentication


def test_a_policy_table_in_the_config_file_is_its_policy(tmp_path):
    """[policy] beside [gateway] is not an unknown option: the file itself is the policy."""
    path = write_toml(tmp_path, '[gateway]\nport = 9\n\n[[policy.callers]]\nidentities = ["a"]\n')
    config = load_config({}, env=ENV, config_path=path)
    assert (config.port, config.policy_file) == (9, path)
    assert load_config({"policy_file": "other.toml"}, env=ENV, config_path=path).policy_file == (
        "other.toml"
    )


def test_the_shared_overlays_policy_loads_and_denies_whom_it_does_not_name():
    """deploy/kubernetes/overlays/shared/policy.toml is a valid policy with no default."""
    from gateway.policy import load_policy
    from tests.test_config import REPO

    path = REPO / "deploy/kubernetes/overlays/shared/policy.toml"
    policy = load_policy(str(path), authentication=True)
    assert policy.names == {"scorer", "payments"} and policy.default is None
    assert policy.rule_for("system:serviceaccount:payments:refunds").name == "payments"
