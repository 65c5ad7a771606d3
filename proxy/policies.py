"""The policies in force: the top-level one and any per-upstream ones, hot-reloaded from their files.

A reload swaps compiled policy objects; a call already being decided keeps the one it started with.
An invalid file is refused with every error listed, and the old policy keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config import Config, ConfigError, read_document
from proxy.identity import Identity
from proxy.naming import Names
from proxy.policy import CompiledPolicy, compile_policy, matches_any
from proxy.policy_spec import ApprovalSpec, Decision, PolicyError

log = logging.getLogger("signoff.policy")

ALLOW_ALL = compile_policy({"default": "allow"})


@dataclass(frozen=True)
class Source:
    """Where one policy comes from: a file (watched) or inline config."""

    label: str  # "policy" or "upstreams.<name>.policy", for messages
    path: Path | None
    inline: dict[str, Any] | None


@dataclass(frozen=True)
class Verdict:
    """A decision together with the policy revision that made it."""

    decision: Decision
    revision: str
    enforced: bool  # False in shadow mode


def load_source(source: Source) -> CompiledPolicy:
    """Read and compile one policy; raises ConfigError listing every problem with its path."""
    try:
        data = read_document(source.path) if source.path is not None else source.inline
        return compile_policy(data or {})
    except PolicyError as e:
        raise ConfigError(
            [f"{source.label}: {err}" for err in e.errors], str(source.path or source.label)
        ) from None


class PolicySet:
    """Decides calls with the right policy for the upstream, and reloads policies when their files change."""

    def __init__(self, config: Config, names: Names) -> None:
        self.names = names
        self.sources: dict[str | None, Source] = {}  # None = top level, else upstream name
        if config.policy is not None:
            self.sources[None] = _source("policy", config.policy, config.base_dir)
        for name, up in config.upstreams.items():
            if up.policy is not None:
                self.sources[name] = _source(f"upstreams.{name}.policy", up.policy, config.base_dir)
        errors: list[str] = []
        self.policies: dict[str | None, CompiledPolicy] = {}
        for key, source in self.sources.items():
            try:
                self.policies[key] = load_source(source)
            except ConfigError as e:
                errors.extend(e.errors)
        if errors:
            raise ConfigError(errors)
        self._mtimes = {key: _mtime(s.path) for key, s in self.sources.items()}
        self.on_change: list[Callable[[], Any]] = []
        self._task: asyncio.Task[None] | None = None

    def approver_groups(self) -> set[str]:
        return set().union(*(p.approver_groups() for p in self.policies.values())) if self.policies else set()

    # -- deciding ------------------------------------------------------------------------------

    def _policy_for(self, upstream: str) -> tuple[CompiledPolicy, bool]:
        """The policy for a tool of `upstream`, and whether it names tools by their own names."""
        own = self.policies.get(upstream)
        if own is not None:
            return own, True
        return self.policies.get(None, ALLOW_ALL), False

    def _candidates(self, upstream: str, tool: str, own_names: bool) -> tuple[str, ...]:
        if own_names:
            return (tool,)
        public = self.names.public(upstream, tool)
        # With one upstream the top-level policy may use the upstream's own names, prefixed or not.
        if len(self.names.upstreams) == 1 and public != tool:
            return (public, tool)
        return (public,)

    def is_hidden(self, upstream: str, tool: str) -> bool:
        """Whether the tool is removed from the client's view (never in shadow mode: it enforces nothing)."""
        policy, own = self._policy_for(upstream)
        return policy.mode != "shadow" and any(
            policy.is_hidden(name) for name in self._candidates(upstream, tool, own)
        )

    def decide(
        self,
        identity: Identity,
        upstream: str,
        tool: str,
        arguments: dict[str, Any],
        annotations: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """Evaluate a call of `tool` (the upstream's own name) on `upstream`, given its MCP annotations."""
        policy, own = self._policy_for(upstream)
        names = self._candidates(upstream, tool, own)
        decision = policy.decide(identity, names[0], arguments)
        if len(names) > 1 and decision.rule.startswith("(") and decision.action != "hidden":
            # Nothing named the public form: let a rule naming the upstream's own name decide.
            decision = policy.decide(identity, names[1], arguments)
        if annotations is not None and not any(policy.names(name) for name in names):
            decision = policy.for_annotations(decision, annotations)
        return Verdict(decision, policy.revision, policy.mode != "shadow")

    def approval_defaults(self, upstream: str) -> ApprovalSpec:
        """The approval defaults of the policy for `upstream` (for approvals no rule asked for)."""
        return self._policy_for(upstream)[0].approval_defaults()

    def unmatched(self, tools: Mapping[str, Sequence[str]]) -> list[str]:
        """Tool patterns that match no listed tool (a typo leaves the tool it meant ungoverned).

        `tools` maps each upstream to its own tool names; every upstream must be listed.
        """
        problems = []
        for key, policy in self.policies.items():
            if key is not None:
                names = set(tools.get(key, ()))
            else:
                names = {
                    n for up, own in tools.items() for tool in own for n in self._candidates(up, tool, False)
                }
            for where, glob in policy.patterns():
                if glob == "*" or matches_any(glob, names):
                    continue
                close = difflib.get_close_matches(glob, sorted(names), n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(
                    f"{self.sources[key].label}: {where} names {glob!r}, which matches no upstream tool{hint}"
                )
        return problems

    def would_hold(
        self,
        identity: Identity,
        upstream: str,
        tool: str,
        arguments: dict[str, Any],
        annotations: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether a call would wait for a human (an enforced `require_approval`)."""
        verdict = self.decide(identity, upstream, tool, arguments, annotations)
        return verdict.enforced and verdict.decision.action == "require_approval"

    def revision(self, upstream: str) -> str:
        return self._policy_for(upstream)[0].revision

    # -- reloading -----------------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        """Watch the policy files and reload on change."""
        if any(s.path is not None for s in self.sources.values()):
            self._task = asyncio.create_task(self._watch(interval), name="policy-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload_changed()

    def reload_changed(self) -> bool:
        """Reload every policy file whose modification time changed; True if anything new took effect."""
        changed = False
        for key, source in self.sources.items():
            mtime = _mtime(source.path)
            if source.path is None or mtime == self._mtimes.get(key):
                continue
            self._mtimes[key] = mtime
            try:
                new = load_source(source)
            except ConfigError as e:
                log.error(
                    "policy reload refused, the previous policy stays in force:\n  %s", "\n  ".join(e.errors)
                )
                continue
            old = self.policies.get(key)
            if old is not None and old.revision == new.revision:
                continue
            self.policies[key] = new
            changed = True
            log.info(
                "%s reloaded (revision %s → %s): %s",
                source.label if source.label != "policy" else "the policy",
                old.revision if old else "-",
                new.revision,
                summarize_change(old, new),
            )
        if changed:
            for callback in self.on_change:
                callback()
        return changed


def summarize_change(old: CompiledPolicy | None, new: CompiledPolicy) -> str:
    """A one-line summary of what a reload changed (rules added/removed/changed, default, hide, mode)."""
    if old is None:
        return f"{len(new.spec.rules)} rules"
    parts = []
    before = {r.name: r for r in old.spec.rules}
    after = {r.name: r for r in new.spec.rules}
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    modified = [n for n in after if n in before and after[n] != before[n]]
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    if modified:
        parts.append("changed " + ", ".join(modified))
    if [r.name for r in old.spec.rules if r.name in after] != [
        r.name for r in new.spec.rules if r.name in before
    ]:
        parts.append("reordered rules")
    if old.spec.default != new.spec.default:
        parts.append(f"default {old.spec.default} → {new.spec.default}")
    if set(old.spec.hide) != set(new.spec.hide):
        parts.append(f"hide {sorted(old.spec.hide)} → {sorted(new.spec.hide)}")
    if old.mode != new.mode:
        parts.append(f"mode {old.mode} → {new.mode}")
    return "; ".join(parts) or "no visible change"


def _source(label: str, value: str | dict[str, Any], base_dir: Path) -> Source:
    if isinstance(value, str):
        return Source(label, (base_dir / value).resolve(), None)
    return Source(label, None, value)


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
