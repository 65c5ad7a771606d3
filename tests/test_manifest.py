"""manifest.yml is a valid Slack app manifest that asks for no more than signoff uses.

Validated against SchemaStore's `slack-app-manifest.json` (vendored as
tests/fixtures/slack-app-manifest.schema.json from SchemaStore/schemastore,
src/schemas/json/slack-app-manifest.json), plus the documented rules the schema does not encode.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.procs import ROOT

SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "slack-app-manifest.schema.json").read_text())
# Every Web API method bot/slack.py calls (slack_sdk names) and the bot scope it needs.
SCOPES: dict[str, str | None] = {
    "auth_test": None,
    "apps_connections_open": None,  # uses the app-level token (connections:write), not a bot scope
    "views_open": None,  # needs only a fresh trigger_id
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_postEphemeral": "chat:write",
    "usergroups_users_list": "usergroups:read",
}


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def http_variant(manifest: dict[str, Any]) -> dict[str, Any]:
    """The HTTP-mode manifest as docs/slack.md describes it."""
    variant = json.loads(json.dumps(manifest))
    variant["settings"]["socket_mode_enabled"] = False
    variant["settings"]["interactivity"]["request_url"] = "https://signoff.example.com/slack/events"
    return variant


def test_manifest_matches_the_schema() -> None:
    manifest = load(ROOT / "manifest.yml")
    jsonschema.validate(manifest, SCHEMA)
    jsonschema.validate(http_variant(manifest), SCHEMA)


def test_socket_mode_with_interactivity_and_no_request_url() -> None:
    settings = load(ROOT / "manifest.yml")["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"] == {"is_enabled": True}
    assert "event_subscriptions" not in settings  # buttons and modals are interactivity, not events


def test_least_scopes() -> None:
    called = set(re.findall(r"self\.client\.(\w+)\(", (ROOT / "bot" / "slack.py").read_text()))
    assert called <= set(SCOPES), f"add {called - set(SCOPES)} and its scope to SCOPES"
    needed = {SCOPES[method] for method in called} - {None}
    scopes = load(ROOT / "manifest.yml")["oauth_config"]["scopes"]
    assert sorted(scopes["bot"]) == sorted(needed) and "user" not in scopes


def test_display_rules_the_schema_leaves_out() -> None:
    info = load(ROOT / "manifest.yml")["display_information"]
    # Slack's UI refuses a long_description under 174 characters; we leave it out instead.
    assert "long_description" not in info or len(info["long_description"]) >= 174
    assert len(info["description"]) <= 140
