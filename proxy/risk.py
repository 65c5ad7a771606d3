"""Risk class of an upstream tool (read / write / destructive) from MCP annotations, else its name.

Annotations win when present (``readOnlyHint``, ``destructiveHint``; camelCase or snake_case keys).
Otherwise the verbs in the tool's name decide (the most dangerous verb wins: ``list-and-delete`` is
destructive); the description is read only when the name has no known verb. A tool nothing identifies
is ``write``: guessing ``read`` would let an unknown tool through a "reads allowed" policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

Risk = Literal["read", "write", "destructive"]


def _verbs(text: str) -> frozenset[str]:
    return frozenset(text.split())


_DESTRUCTIVE = _verbs(
    "delete remove purge cancel terminate drop revoke stop kill destroy wipe truncate reset force "
    "erase evict abort unregister uninstall detach shutdown"
)
_WRITE = _verbs(
    "create update set put post run runsync deploy start restart scale write send exec execute apply "
    "patch add insert upload edit modify move rename copy install register attach enable disable "
    "trigger invoke submit publish push merge upsert save assign grant pause resume resize"
)
_READ = _verbs(
    "get list describe read search stream show fetch query view count health status find lookup "
    "inspect retrieve check ping logs watch head peek browse explain info"
)
_RANK: dict[Risk, int] = {"read": 0, "write": 1, "destructive": 2}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")
_SENTENCE_END = re.compile(r"[.!?\n]")


def tokens(name: str) -> list[str]:
    """Split a tool name on ``-``, ``_``, ``.``, spaces and camelCase into lowercase words."""
    words: list[str] = []
    for part in _SEPARATORS.split(name):
        words += [w.lower() for w in _CAMEL_BOUNDARY.split(part) if w]
    return words


def _verb_class(word: str) -> Risk | None:
    if word in _DESTRUCTIVE:
        return "destructive"
    if word in _WRITE:
        return "write"
    if word in _READ:
        return "read"
    return None


def _from_words(words: list[str], stem: bool) -> Risk | None:
    found: Risk | None = None
    for word in words:
        risk = _verb_class(word)
        if risk is None and stem:
            risk = _verb_class(_singular(word))
        if risk is not None and (found is None or _RANK[risk] > _RANK[found]):
            found = risk
    return found


def _singular(word: str) -> str:
    # Descriptions say "Deletes a pod" / "Queries logs"; names say "delete-pod".
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def _prefix_verb(words: list[str]) -> Risk | None:
    # "runsync", "deletepod": a glued name that starts with a write or destructive verb. Never read:
    # "listener" or "showcase_delete" must not be classified as harmless by a prefix guess.
    found: Risk | None = None
    for word in words:
        for verb in _DESTRUCTIVE:
            if word.startswith(verb):
                return "destructive"
        if found is None and any(word.startswith(verb) for verb in _WRITE if len(verb) >= 3):
            found = "write"
    return found


def _hint(annotations: Any, name: str) -> bool | None:
    if annotations is None:
        return None
    if not isinstance(annotations, Mapping):
        # an SDK object (mcp.types.ToolAnnotations) rather than a dict
        dump = getattr(annotations, "model_dump", None)
        annotations = dump(exclude_none=True) if callable(dump) else {}
    for key, value in annotations.items():
        if isinstance(key, str) and key.replace("_", "").lower() == name and isinstance(value, bool):
            return value
    return None


def classify(name: str, description: str | None, annotations: Mapping[str, Any] | None) -> Risk:
    """Return ``read``, ``write`` or ``destructive`` for an upstream tool."""
    read_only = _hint(annotations, "readonlyhint")
    destructive = _hint(annotations, "destructivehint")
    if read_only is True:
        return "read"
    if destructive is True:
        return "destructive"
    if read_only is False:
        # MCP: destructiveHint defaults to true for a tool that is not read-only
        return "write" if destructive is False else "destructive"

    guess = _guess(name, description)
    if destructive is False and guess == "destructive":
        return "write"  # the server says it is not destructive; the name only said how it sounds
    return guess


def _guess(name: str, description: str | None) -> Risk:
    words = tokens(name or "")
    risk = _from_words(words, stem=False) or _prefix_verb(words)
    if risk is None and description:
        # The first sentence says what the tool does; later ones tend to mention other tools.
        first = _SENTENCE_END.split(description.strip(), maxsplit=1)[0]
        risk = _from_words(tokens(first), stem=True) or _from_words(tokens(description), stem=True)
    return risk or "write"
