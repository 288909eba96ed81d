"""Configuration: precedence flag > env > file > default, and one line + exit 2 for bad values."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import OPTIONS, Config, ConfigError, load_config
from tests.conftest import gateway_process_env

REPO = Path(__file__).resolve().parents[1]


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_defaults_bind_loopback_port_8080():
    """With only a region, the gateway listens on 127.0.0.1:8080 with the documented limits."""
    config = load_config({}, env={"AWS_REGION": "eu-west-1"})
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.upstream_timeout_s == 70.0
    assert config.max_body_bytes == 5_242_880
    assert config.upstream_url == "https://runtime.sagemaker.eu-west-1.amazonaws.com"


def test_flag_beats_env_beats_file(tmp_path):
    """The same option from three sources: the flag wins, then SMGW_*, then the file."""
    path = write_toml(
        tmp_path, "[gateway]\nupstream_timeout = 30\nport = 9001\nregion = 'eu-west-1'\n"
    )
    env = {"SMGW_UPSTREAM_TIMEOUT": "40", "SMGW_PORT": "9002"}
    config = load_config({"upstream_timeout": "50"}, env=env, config_path=path)
    assert config.upstream_timeout_s == 50.0
    assert config.port == 9002
    assert config.region == "eu-west-1"
    assert load_config({}, env={}, config_path=path).upstream_timeout_s == 30.0


def test_region_falls_back_to_aws_region_before_the_file(tmp_path):
    """--region, then SMGW_REGION, then AWS_REGION, then AWS_DEFAULT_REGION, then the file."""
    path = write_toml(tmp_path, "region = 'ap-south-1'\n")
    env = {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-central-1"}
    assert load_config({}, env=env, config_path=path).region == "us-west-2"
    assert load_config({}, env={"AWS_DEFAULT_REGION": "eu-central-1"}).region == "eu-central-1"
    assert load_config({}, env={}, config_path=path).region == "ap-south-1"
    assert load_config({"region": "sa-east-1"}, env=env).region == "sa-east-1"


def test_upstream_host_carries_a_non_default_port():
    """SigV4 signs Host with its port when the upstream URL has one that is not the default."""
    assert Config(upstream_url="http://127.0.0.1:9000").upstream_host == "127.0.0.1:9000"
    assert Config(upstream_url="https://runtime.example:443").upstream_host == "runtime.example"
    assert Config(upstream_url="http://[::1]:81").upstream_host == "[::1]:81"


@pytest.mark.parametrize(
    ("flags", "env", "needle"),
    [
        ({"port": "80000"}, {}, "--port"),
        ({"upstream_timeout": "-1"}, {}, "--upstream-timeout"),
        ({}, {"SMGW_UPSTREAM_TIMEOUT": "soon"}, "SMGW_UPSTREAM_TIMEOUT"),
        ({"max_body_bytes": "0"}, {}, "--max-body-bytes"),
        ({"log_level": "loud"}, {}, "--log-level"),
        ({"upstream_url": "ftp://x"}, {}, "--upstream-url"),
        ({"upstream_url": "http://x/path"}, {}, "--upstream-url"),
        ({"region": "mars"}, {}, "--region"),
        ({}, {"AWS_REGION": ""}, "region"),
    ],
)
def test_a_bad_value_is_one_error_naming_its_source(flags, env, needle):
    """Each bad value raises ConfigError with a message naming where it came from."""
    env = {"AWS_REGION": "us-east-1", **env} if "AWS_REGION" not in env else env
    with pytest.raises(ConfigError) as caught:
        load_config(flags, env=env)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_unknown_key_in_the_file_is_refused(tmp_path):
    """A typo in the TOML file is an error, not a silently ignored option."""
    path = write_toml(tmp_path, "upstream_timout = 5\n")
    with pytest.raises(ConfigError, match="upstream_timout"):
        load_config({}, env={"AWS_REGION": "us-east-1"}, config_path=path)


def test_the_shipped_config_file_documents_every_option_at_its_default():
    """config/gateway.toml has a line for every option, and loading it gives the defaults."""
    path = REPO / "config" / "gateway.toml"
    text = path.read_text()
    for option in OPTIONS:
        assert re.search(rf"^(# )?{option.name} =", text, re.MULTILINE), option.name
    loaded = load_config({}, env={"AWS_REGION": "us-east-1"}, config_path=str(path))
    expected = replace(Config(), region="us-east-1", upstream_url=loaded.upstream_url)
    assert loaded == expected
    assert set(tomllib.loads(text)["gateway"]) <= {option.name for option in OPTIONS}


def test_the_cli_prints_one_line_and_exits_2_on_a_bad_value():
    """`serve --port nope` writes one line to stderr and exits with status 2."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "nope", "--region", "us-east-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--port" in result.stderr


def test_the_cli_exits_2_without_a_region():
    """No region anywhere: one line naming the option, exit 2."""
    env = gateway_process_env(PATH="/usr/bin:/bin", HOME="/tmp")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert "region" in result.stderr
