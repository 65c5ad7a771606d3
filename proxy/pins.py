"""Pinned tool definitions: an upstream that changes a tool after it was trusted is not served silently.

signoff records each upstream tool's definition (description, input schema, annotations) the first
time it sees it (table `tool_pin`). When the upstream later serves a different definition — a "rug
pull": a harmless tool turned harmful, or a description rewritten to steer the agent — the tool is
held back until an admin accepts the change (`signoff tools diff` / `signoff tools accept TOOL`):
per upstream, `on_tool_change: hide` removes it from the agents' view, `require_approval` (the
default) makes every call of it wait for a human. The change is announced in the approval channel
with a readable diff, once, by whichever gateway noticed it first.

The functions before `ToolPins` are pure.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import textwrap
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.naming import Names
from proxy.records import ToolPin
from proxy.store import Store

log = logging.getLogger("signoff.pins")

HIDE, REQUIRE_APPROVAL = "hide", "require_approval"
CHANGED_RULE = "(tool definition changed)"
_WIDTH = 96


def definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an MCP Tool that says what it does: description, input schema, annotations."""
    return {
        "description": tool.get("description"),
        "inputSchema": tool.get("inputSchema"),
        "annotations": tool.get("annotations"),
    }


def digest(defn: Mapping[str, Any]) -> str:
    """A stable hash of a definition (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(defn, option=orjson.OPT_SORT_KEYS)).hexdigest()


def readable(defn: Mapping[str, Any]) -> list[str]:
    """A definition as lines a person can diff: the description wrapped, the schemas as sorted JSON."""
    lines = ["description:"]
    for paragraph in str(defn.get("description") or "").splitlines() or [""]:
        lines += ["  " + line for line in textwrap.wrap(paragraph, _WIDTH) or [""]]
    for key, title in (("inputSchema", "input schema:"), ("annotations", "annotations:")):
        text = json.dumps(defn.get(key), indent=2, sort_keys=True, ensure_ascii=False)
        lines += [title, *("  " + line for line in text.splitlines())]
    return lines


def diff_text(old: Mapping[str, Any], new: Mapping[str, Any], name: str) -> str:
    """A unified diff from the pinned definition to the one served now."""
    return "\n".join(
        difflib.unified_diff(
            readable(old), readable(new), fromfile=f"{name} (pinned)", tofile=f"{name} (now)", lineterm=""
        )
    )


def action_text(mode: str) -> str:
    """What signoff does with a changed tool meanwhile, as a sentence."""
    if mode == HIDE:
        return "It is hidden from agents until an admin accepts the change."
    return "Every call of it needs approval until an admin accepts the change."


class ToolPins:
    """Pins each upstream tool on first sight and holds back tools whose definition has changed since."""

    def __init__(self, store: Store, names: Names, modes: Mapping[str, str], channel: Any = None) -> None:
        self.store = store
        self.names = names
        self.modes = dict(modes)  # upstream -> hide | require_approval
        self.channel = channel  # an ApprovalChannel: where changes are announced
        # (upstream, own tool name) -> digest of the definition served now, which no admin accepted yet.
        self.held: dict[tuple[str, str], str] = {}

    def mode(self, upstream: str) -> str:
        return self.modes.get(upstream, REQUIRE_APPROVAL)

    def is_held(self, upstream: str, tool: str) -> bool:
        """Whether the tool's current definition differs from its pin (whatever signoff does about it)."""
        return (upstream, tool) in self.held

    def hides(self, upstream: str, tool: str) -> bool:
        """Whether the tool is held back by being hidden (`on_tool_change: hide`)."""
        return (upstream, tool) in self.held and self.mode(upstream) == HIDE

    def needs_approval(self, upstream: str, tool: str) -> bool:
        """Whether every call of the tool needs approval meanwhile (`on_tool_change: require_approval`)."""
        return (upstream, tool) in self.held and self.mode(upstream) == REQUIRE_APPROVAL

    async def check(self, upstream: str, tools: Mapping[str, Mapping[str, Any]]) -> None:
        """Compare a freshly listed catalog with the pins: pin new tools, hold back changed ones."""
        pins = {p.tool: p for p in await self.store.tool_pins(upstream)}
        first_seen: list[ToolPin] = []
        for name, tool in tools.items():
            defn = definition(tool)
            now = digest(defn)
            pin = pins.get(name)
            key = (upstream, name)
            if pin is None:
                first_seen.append(ToolPin(upstream=upstream, tool=name, definition=defn, digest=now))
                self.held.pop(key, None)
            elif pin.digest == now:
                self.held.pop(key, None)
                if pin.pending_digest is not None:  # it changed and changed back: nothing to accept
                    await self.store.forget_tool_change(upstream, name)
            else:
                if key not in self.held:
                    log.warning(
                        "upstream %s changed the definition of %s. %s",
                        upstream,
                        name,
                        action_text(self.mode(upstream)),
                    )
                self.held[key] = now
                if await self.store.note_tool_change(upstream, name, defn, now):
                    await self._announce(
                        upstream, name, diff_text(pin.definition, defn, self.names.public(upstream, name))
                    )
        await self.store.add_tool_pins(first_seen)

    async def refresh(self) -> None:
        """Release held tools whose change an admin has accepted (`signoff tools accept`, any process)."""
        if not self.held:
            return
        for upstream in {u for u, _ in self.held}:
            for pin in await self.store.tool_pins(upstream):
                key = (upstream, pin.tool)
                if self.held.get(key) == pin.digest:
                    del self.held[key]
                    log.info(
                        "%s: the changed definition of %s was accepted by %s",
                        upstream,
                        pin.tool,
                        pin.pinned_by,
                    )

    async def _announce(self, upstream: str, tool: str, diff: str) -> None:
        announce = getattr(self.channel, "announce_tool_change", None)
        if announce is None:
            return
        try:
            await announce(upstream, self.names.public(upstream, tool), diff, self.mode(upstream))
        except Exception as e:  # the hold-back stands whether or not the announcement got out
            log.warning("could not announce the change of %s on %s: %s", tool, upstream, e)


async def changed_tools(store: Store) -> list[ToolPin]:
    """Every pinned tool whose upstream serves a changed definition not yet accepted."""
    return [p for p in await store.tool_pins() if p.pending_digest is not None]
