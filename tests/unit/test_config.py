"""The config file: validation errors with paths, environment expansion, naming."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_config, read_document
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


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "policy.yaml",
            "tools:\n  runpod.cancel-job: {action: allow}\n  runpod.cancel-job: {action: deny}\n",
            "duplicate key 'runpod.cancel-job' (line 3, column 3)",
        ),
        ("policy.json", '{"default": "deny", "default": "allow"}', "duplicate key 'default'"),
    ],
)
def test_a_key_given_twice_is_an_error_not_a_silent_override(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_document(path)
    assert expected in e.value.errors[0]


def test_yaml_merge_keys_may_still_override_what_they_merge(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {timeout: 30, mode: hold}\nrule: {<<: *b, timeout: 60}\n")
    assert read_document(path)["rule"] == {"timeout": 60, "mode": "hold"}


def test_a_file_that_is_not_yaml_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    # A mistyped path can point at a credentials file; its content must not reach the log.
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_secret_access_key: abc: sk-live-0123456789\n")
    with pytest.raises(ConfigError) as e:
        read_document(path)
    (error,) = e.value.errors
    assert "not valid YAML" in error and "line 2" in error
    assert "sk-live" not in error and "aws_secret" not in error
