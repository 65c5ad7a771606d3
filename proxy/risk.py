"""Risk class of an upstream tool (read / write / destructive), the reasons for it, and the argument values
that make a call destructive.

Annotations win when present (``readOnlyHint``, ``destructiveHint``; camelCase or snake_case keys).
Otherwise these signals decide, and each can only raise the class:

1. the verbs in the tool's name (the most dangerous wins: ``list-and-delete`` is destructive); when the
   name has none, the verbs of the description;
2. words in the description that say something is lost: "permanently", "irreversible", "overwrites",
   "replaces the full set", "the previous output is removed", ...;
3. argument values: a value a property accepts (JSON Schema ``enum``, ``const``, ``oneOf``/``anyOf`` of
   consts, or a list in the property's description such as "one of: start, stop, terminate") that
   contains a destructive verb makes calls passing that value destructive. ``dangerous_values`` names
   the argument and the values, so a policy can gate just those calls.

A tool nothing identifies is ``write``: guessing ``read`` would let an unknown tool through a "reads
allowed" policy. docs/risk.md states these rules for users.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from proxy.policy_spec import parse_path

Risk = Literal["read", "write", "destructive"]


@dataclass(frozen=True, slots=True)
class Classification:
    """A tool's risk class, why, and which argument values (if any) make a call destructive."""

    risk: Risk  # the class of the tool's most dangerous call
    reasons: tuple[str, ...]
    # Argument path (as a policy condition writes it, e.g. "body.action") -> the values that make a call
    # destructive. Only set when the tool is otherwise `base`; empty when it is destructive anyway.
    dangerous_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The same paths -> the other values the schema lists there (they do not raise the class).
    other_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # With dangerous_values: the class of a call that passes none of them (None otherwise).
    base: Risk | None = None


def _verbs(text: str) -> frozenset[str]:
    return frozenset(text.split())


_DESTRUCTIVE = _verbs(
    "delete remove purge cancel terminate drop revoke stop kill destroy wipe truncate reset force "
    "erase evict abort unregister uninstall detach shutdown"
)
_WRITE = _verbs(
    "create update set put post run runsync deploy start restart scale write send exec execute apply "
    "patch add insert upload edit modify move rename copy install register attach enable disable "
    "trigger invoke submit publish push merge upsert save assign grant pause resume resize "
    "retry rerun requeue"
)
_READ = _verbs(
    "get list describe read search stream show fetch query view count health status find lookup "
    "inspect retrieve check ping logs watch head peek browse explain info"
)
_RANK: dict[Risk, int] = {"read": 0, "write": 1, "destructive": 2}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")
_SENTENCE_END = re.compile(r"[.!?\n]")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


def tokens(name: str) -> list[str]:
    """Split a tool name on ``-``, ``_``, ``.``, spaces and camelCase into lowercase words."""
    words: list[str] = []
    for part in _SEPARATORS.split(name):
        words += [w.lower() for w in _CAMEL_BOUNDARY.split(part) if w]
    return words


def classify(
    name: str,
    description: str | None,
    annotations: Mapping[str, Any] | None,
    input_schema: Mapping[str, Any] | None = None,
) -> Risk:
    """Return ``read``, ``write`` or ``destructive`` for an upstream tool (its most dangerous call)."""
    return explain(name, description, annotations, input_schema).risk


def explain(
    name: str,
    description: str | None,
    annotations: Mapping[str, Any] | None = None,
    input_schema: Mapping[str, Any] | None = None,
) -> Classification:
    """Classify an upstream tool and say why, including the argument values that make it destructive."""
    read_only = _hint(annotations, "readonlyhint")
    destructive_hint = _hint(annotations, "destructivehint")
    if read_only is True:
        return Classification("read", ("annotations: readOnlyHint is true",))
    if destructive_hint is True:
        return Classification("destructive", ("annotations: destructiveHint is true",))
    if read_only is False:
        if destructive_hint is False:
            return Classification("write", ("annotations: readOnlyHint and destructiveHint are false",))
        # MCP: destructiveHint defaults to true for a tool that is not read-only
        return Classification("destructive", ("annotations: readOnlyHint is false, destructiveHint unset",))

    base, reasons = _from_name_and_description(name, description)
    listed = _listed_values(input_schema)
    dangerous = {path: _dangerous(values) for path, values in listed.items()}
    dangerous = {path: values for path, values in dangerous.items() if values}
    # A sentence that describes a dangerous value ("`terminate` permanently deletes the pod") says what
    # that value does, not what every call does.
    value_words = {w for values in dangerous.values() for v in values for w in tokens(v)}
    losses = _loss_phrases(description or "", value_words)
    if losses:
        base = "destructive"
        reasons.append("description: " + ", ".join(repr(p) for p in losses))

    if destructive_hint is False:
        # The server says it is not destructive; names and words only said how it sounds.
        capped: Risk = "write" if base == "destructive" else base
        return Classification(capped, (*reasons, "annotations: destructiveHint is false"))
    if not dangerous:
        return Classification(base, tuple(reasons))

    reasons += [f"argument {_show(path)} accepts {', '.join(values)}" for path, values in dangerous.items()]
    if base == "destructive" or None in dangerous:
        # Destructive anyway, or a value no policy condition can point at (inside an array or a map).
        return Classification("destructive", tuple(reasons))
    addressable = {path: values for path, values in dangerous.items() if path is not None}
    return Classification(
        "destructive",
        tuple(reasons),
        {path_text(path): values for path, values in addressable.items()},
        {
            path_text(path): tuple(v for v in listed[path] if v not in values)
            for path, values in addressable.items()
        },
        base,
    )


def call_risk(found: Classification, arguments: Mapping[str, Any] | None) -> Risk:
    """The class of one call: ``base`` unless it passes a dangerous value, or a value the schema does not
    list where a dangerous one could go (fail closed, as the starter policy does)."""
    if not found.dangerous_values or found.base is None:
        return found.risk
    for path, dangerous in found.dangerous_values.items():
        value = _argument(arguments, path)
        if value in dangerous or value not in found.other_values.get(path, ()):
            return found.risk
    return found.base


def _argument(arguments: Mapping[str, Any] | None, path: str) -> Any:
    current: Any = arguments
    for key, _index in parse_path(path):
        if not isinstance(current, Mapping) or key not in current:
            return None
        current = current[key]
    return current if isinstance(current, str) else None


# -- annotations ---------------------------------------------------------------------------------------


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


# -- verbs in the name and description -----------------------------------------------------------------


def _verb_class(word: str) -> Risk | None:
    if word in _DESTRUCTIVE:
        return "destructive"
    if word in _WRITE:
        return "write"
    if word in _READ:
        return "read"
    return None


def _from_words(words: list[str], stem: bool) -> tuple[Risk, str] | None:
    found: tuple[Risk, str] | None = None
    for word in words:
        risk = _verb_class(word)
        if risk is None and stem:
            risk = _verb_class(_singular(word))
        if risk is not None and (found is None or _RANK[risk] > _RANK[found[0]]):
            found = (risk, word)
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


def _prefix_verb(words: list[str]) -> tuple[Risk, str] | None:
    # "runsync", "deletepod": a glued name that starts with a write or destructive verb. Never read:
    # "listener" or "showcase_delete" must not be classified as harmless by a prefix guess.
    found: tuple[Risk, str] | None = None
    for word in words:
        for verb in _DESTRUCTIVE:
            if word.startswith(verb):
                return "destructive", word
        if found is None and any(word.startswith(verb) for verb in _WRITE if len(verb) >= 3):
            found = ("write", word)
    return found


def _from_name_and_description(name: str, description: str | None) -> tuple[Risk, list[str]]:
    words = tokens(name or "")
    hit = _from_words(words, stem=False) or _prefix_verb(words)
    if hit is not None:
        return hit[0], [f"name: {hit[1]!r} is a {hit[0]} verb"]
    if description:
        # The first sentence says what the tool does; later ones tend to mention other tools.
        first = _SENTENCE_END.split(description.strip(), maxsplit=1)[0]
        hit = _from_words(tokens(first), stem=True) or _from_words(tokens(description), stem=True)
        if hit is not None:
            return hit[0], [f"description: {hit[1]!r} is a {hit[0]} verb (the name has none)"]
    return "write", ["nothing identifies it: unknown is write, never read"]


# -- words that say something is lost -------------------------------------------------------------------

_LOSS = re.compile(
    r"""\b(?:
        permanently | permanent\s+(?:deletion|removal|loss) | irreversibl[ey] | irrevocabl[ey]
      | unrecoverabl[ey] | (?:cannot|can't|can\ not)\s+be\s+(?:undone|recovered|restored|reversed)
      | destructive | data\ loss | wholesale | not\ a\ merge | (?:complete|full|entire|whole)\ replacement
      | overwrit(?:e|es|ing|ten)
      | replac(?:e|es|ed|ing)\s+(?:(?:the|its|their|your|of|[\w-]+'s)\s+){0,3}
            (?:all|every|whole|entire|full|complete|existing)
      | (?:is|are|be|been|gets?)\s+(?:also\s+|then\s+|permanently\s+)?
            (?:removed|deleted|erased|wiped|discarded|lost|destroyed|purged|dropped|truncated)
      | (?:deletes|removes|erases|wipes|destroys|purges|discards|terminates)\s+
            (?:the|all|any|every|everything|its|their|existing|previous|your)
    )\b""",
    re.IGNORECASE | re.VERBOSE,
)
# "never overwrites", "non-destructive", "until it is deleted": the loss is denied or someone else's.
_NEGATED = re.compile(
    r"(?:\b(?:not|never|no|non|nothing|without)|n't)\W+(?:\w+\W+)?$"
    r"|\b(?:until|unless|before|after|once)\s+(?:\w+\s+){0,2}$",
    re.IGNORECASE,
)


def _loss_phrases(description: str, ignore_words: set[str]) -> list[str]:
    found: list[str] = []
    for sentence in _SENTENCES.split(description):
        if ignore_words and ignore_words & set(tokens(sentence)):
            continue
        for match in _LOSS.finditer(sentence):
            if not _NEGATED.search(sentence[: match.start()]):
                phrase = " ".join(match.group(0).split()).lower()
                if phrase not in found:
                    found.append(phrase)
    return found


# -- argument values ------------------------------------------------------------------------------------

# A property's path from the arguments' root; None when no policy condition can point at it (an array
# item or a free-form map entry).
Path = tuple[str, ...] | None
_MAX_DEPTH = 24


def _dangerous(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v for v in values if any(w in _DESTRUCTIVE for w in tokens(v)))


def _listed_values(schema: Mapping[str, Any] | None) -> dict[Path, tuple[str, ...]]:
    """Every string value the schema lists for a property, by the property's path."""
    found: dict[Path, list[str]] = {}
    if isinstance(schema, Mapping):
        for path, value in _walk(schema, schema, (), 0, frozenset()):
            values = found.setdefault(path, [])
            if value not in values:
                values.append(value)
    return {path: tuple(values) for path, values in found.items()}


def _walk(
    node: Any, root: Mapping[str, Any], path: Path, depth: int, refs: frozenset[str]
) -> Iterator[tuple[Path, str]]:
    if depth > _MAX_DEPTH or not isinstance(node, Mapping):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and ref not in refs:  # a schema may refer to itself
        yield from _walk(_resolve(root, ref), root, path, depth + 1, refs | {ref})
    if path != ():
        enum = node.get("enum")
        if isinstance(enum, list):
            yield from ((path, v) for v in enum if isinstance(v, str))
        if isinstance(node.get("const"), str):
            yield path, node["const"]
        if isinstance(node.get("description"), str):
            yield from ((path, v) for v in _values_in_text(node["description"]))
    # `not` is left out on purpose: the values it names are the ones the argument refuses.
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key) or ():
            yield from _walk(sub, root, path, depth + 1, refs)
    for key in ("if", "then", "else"):
        yield from _walk(node.get(key), root, path, depth + 1, refs)
    properties = node.get("properties")
    if isinstance(properties, Mapping):
        for name, sub in properties.items():
            yield from _walk(sub, root, _child(path, name), depth + 1, refs)
    for key in ("items", "additionalItems", "contains", "additionalProperties", "unevaluatedProperties"):
        yield from _walk(node.get(key), root, None, depth + 1, refs)
    for key in ("prefixItems", "items"):
        if isinstance(node.get(key), list):
            for sub in node[key]:
                yield from _walk(sub, root, None, depth + 1, refs)
    pattern_properties = node.get("patternProperties")
    if isinstance(pattern_properties, Mapping):
        for sub in pattern_properties.values():
            yield from _walk(sub, root, None, depth + 1, refs)


def _child(path: Path, name: Any) -> Path:
    # A key with both kinds of quote cannot be written as a policy path.
    if path is None or not isinstance(name, str) or not name or ('"' in name and "'" in name):
        return None
    return (*path, name)


def _resolve(root: Mapping[str, Any], ref: str) -> Any:
    """Follow a local ``$ref`` (``#/$defs/X``); anything else resolves to nothing."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _show(path: Path) -> str:
    return "(inside a list or map)" if path is None else path_text(path)


_PLAIN_KEY = re.compile(r"[^.\[\]\"'\s$]+")


def path_text(path: tuple[str, ...]) -> str:
    """Write a property path the way a policy condition's ``path`` reads it (``body.action``)."""
    text = "".join(_segment(name) for name in path)
    # `args.x` means the argument x to the policy's path parser; `$` makes the root explicit.
    return text[1:] if text.startswith(".") and path[0] != "args" else "$" + text


def _segment(name: str) -> str:
    if _PLAIN_KEY.fullmatch(name):
        return "." + name
    return f'["{name}"]' if '"' not in name else f"['{name}']"


# A list of values in a property's description: "one of: start, stop, terminate", "either `a` or `b`",
# "(soft | hard)". Every item must be a single word, so prose ("create, update or delete records") is not
# read as a list unless it is quoted or introduced as one.
_ITEM = r"[A-Za-z][\w-]*"
_QUOTED = r"(?:`[A-Za-z][\w-]*`|'[A-Za-z][\w-]*'|\"[A-Za-z][\w-]*\")"
_SEP = r"(?:\s*,\s*(?:or\s+|and\s+)?|\s*\|\s*|\s*/\s*|\s+or\s+|\s+and\s+)"
_INTRO = (
    r"(?::|\(|\bone\s+of|\bany\s+of|\beither|\bvalues?(?:\s+are|\s+is)?|\boptions?(?:\s+are)?"
    r"|\bcan\s+be|\bmust\s+be|\baccepts?)"
)
_END = r"(?=\s*(?:$|[.;:)\n]|\s[-\u2013\u2014(]))"  # then a dash or "(" may explain
_LIST = re.compile(
    rf"{_INTRO}\s*(?P<plain>{_QUOTED}|{_ITEM})(?P<rest>(?:{_SEP}(?:{_QUOTED}|{_ITEM}))+){_END}"
    rf"|(?P<quoted>{_QUOTED}(?:{_SEP}{_QUOTED})+)",
    re.IGNORECASE,
)
_LIST_ITEM = re.compile(rf"{_QUOTED}|{_ITEM}")


# "e.g. 'vllm', 'comfyui'": examples of a free-form value, not the values it is limited to.
_EXAMPLES = re.compile(r"(?:\be\.\s?g\.?|\bfor example|\bsuch as|\blike)[\s,:(]*$", re.IGNORECASE)


@lru_cache(maxsize=1024)  # schemas repeat the same property descriptions across tools
def _values_in_text(text: str) -> tuple[str, ...]:
    values: list[str] = []
    for match in _LIST.finditer(text):
        if _EXAMPLES.search(text[: match.start()]):
            continue
        run = match.group("quoted") or (match.group("plain") + match.group("rest"))
        for item in _LIST_ITEM.findall(run):
            value = item.strip("`'\"")
            if value.lower() not in ("or", "and") and value not in values:
                values.append(value)
    return tuple(values)
