"""The config file: validation errors with paths, environment expansion, naming."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, parse_config
from proxy.naming import Names


def test_minimal_config_gets_safe_defaults() -> None:
    cfg = parse_config({"upstreams": {"a": {"command": "x"}}}, env={})
    assert cfg.listen.host == "127.0.0.1" and cfg.control.host == "127.0.0.1"
    assert not cfg.prefixed and cfg.database_url.startswith("sqlite")


def test_environment_variables_are_expanded_and_missing_ones_are_errors() -> None:
    cfg = parse_config(
        {
            "upstreams": {
                "a": {"command": "x", "env": {"KEY": "${RUNPOD_API_KEY}", "OTHER": "${UNSET:-fallback}"}}
            }
        },
        env={"RUNPOD_API_KEY": "rpa_123"},
    )
    assert cfg.upstreams["a"].env == {"KEY": "rpa_123", "OTHER": "fallback"}
    with pytest.raises(ConfigError) as err:
        parse_config({"upstreams": {"a": {"command": "${NOPE}"}}}, env={})
    assert err.value.errors == ["upstreams.a.command: environment variable NOPE is not set"]


def test_every_error_is_listed_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "upstreams": {"a": {"url": "ftp://x"}, "b": {}},
                "listen": {"port": -1},
                "identities": {"x": {"groups": ["g"]}},
                "stdio_identity": "ghost",
            },
            env={},
        )
    errors = "\n".join(err.value.errors)
    assert "upstreams.a: url must start with http:// or https://" in errors
    assert "upstreams.b: give exactly one of `command` (stdio) or `url` (Streamable HTTP)" in errors
    assert "listen.port: Input should be greater than or equal to 0" in errors
    assert "identities.x: give `token_env`" in errors
    assert len(err.value.errors) >= 4


def test_token_hashes_must_look_like_sha256() -> None:
    with pytest.raises(ConfigError, match="64 hex digits"):
        parse_config(
            {"upstreams": {"a": {"command": "x"}}, "identities": {"i": {"token_sha256": "abc"}}}, env={}
        )


def test_names_round_trip_and_longest_upstream_wins() -> None:
    names = Names(["a", "a.b"], ".", prefixed=True)
    assert names.public("a", "tool") == "a.tool"
    assert names.resolve("a.b.tool") == ("a.b", "tool")
    assert names.resolve("a.tool") == ("a", "tool")
    assert names.resolve("zzz.tool") is None and names.resolve("a.") is None
    single = Names(["runpod"], ".", prefixed=False)
    assert single.resolve("cancel-job") == ("runpod", "cancel-job")
