"""Policy evaluation speed: p50/p99 of `decide` on a 1,000-rule policy (the spec asks p99 <= 20 us).

Run `python bench/policy_bench.py`, or call `run()` (returns the figures as a dict).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from proxy.identity import Identity  # noqa: E402
from proxy.policy import CompiledPolicy, compile_policy  # noqa: E402

VERBS = ["list", "get", "create", "update", "delete", "start", "stop", "cancel"]
NOUNS = ["pods", "endpoints", "templates", "volumes", "jobs"]
SERVICES = 100


def build_policy(rule_count: int = 1000) -> dict[str, Any]:
    """A realistic large policy: exact names, per-service and cross-service globs, conditions, scopes."""
    rules: list[dict[str, Any]] = [
        # a few rules that see every call
        {"tools": "*", "action": "rate_limit", "rate_limit": {"max": 600, "window": "1m", "per": "global"}},
        {"tools": "*", "when": [{"path": "token", "op": "exists", "value": True}], "action": "deny"},
        {"tools": "*", "when": [{"path": "$.spec.replicas", "op": "gt", "value": 100}], "action": "deny"},
        {"tools": "*.delete-*", "groups": ["agents"], "action": "require_approval"},
    ]
    ops = [
        {"path": "action", "op": "eq", "value": "terminate"},
        {"path": "spec.replicas", "op": "gte", "value": 50},
        {"path": "region", "op": "in", "value": ["us-east-1", "eu-west-1", "ap-south-1"]},
        {"path": "query", "op": "regex", "value": "^(DROP|TRUNCATE|ALTER)"},
        {"path": "labels", "op": "contains", "value": "prod"},
        {"path": "spec.image", "op": "neq", "value": "trusted/image"},
        {"path": "items[0].id", "op": "exists", "value": True},
    ]
    i = 0
    while len(rules) < rule_count:
        service = f"svc{i % SERVICES}"
        verb, noun = VERBS[i % len(VERBS)], NOUNS[(i // len(VERBS)) % len(NOUNS)]
        kind = i % 5
        if kind == 0:  # exact name with a condition
            rule = {"tools": f"{service}.{verb}-{noun}", "when": [ops[i % len(ops)]], "action": "deny"}
        elif kind == 1:  # per-service glob with a condition, approval
            rule = {
                "tools": f"{service}.{verb}-*",
                "when": [ops[(i + 1) % len(ops)]],
                "action": "require_approval",
            }
        elif kind == 2:  # scoped to an identity or group
            rule = {
                "tools": f"{service}.*",
                "identities": [f"user{i % 37}"],
                "groups": ["contractors"],
                "action": "deny",
                "reason": "contractors may not touch this service",
            }
        elif kind == 3:  # a rate limit on a family of tools
            rule = {
                "tools": [f"{service}.{verb}-*", f"{service}.get-*"],
                "action": "rate_limit",
                "rate_limit": {"max": 10 + i % 50, "window": "1m", "per": "identity"},
            }
        else:  # unless-style requirement
            rule = {
                "tools": f"{service}.{verb}-{noun}",
                "unless": [{"path": "reason", "op": "exists", "value": True}],
                "action": "deny",
                "reason": "say why",
            }
        rules.append(rule)
        i += 1
    rules.append({"tools": "svc*.list-*", "action": "allow"})
    rules.append({"tools": "svc*.get-*", "action": "allow"})
    return {"default": "deny", "hide": ["*.purge-*", "admin.*"], "rules": rules[:rule_count]}


CALLS = [
    ("svc7.list-pods", {"namespace": "default"}),
    ("svc42.delete-endpoints", {"endpointId": "ep-1", "reason": "cleanup", "spec": {"replicas": 2}}),
    ("svc13.update-templates", {"templateId": "t1", "spec": {"image": "trusted/image", "replicas": 3}}),
    ("svc99.get-jobs", {"jobId": "j1", "labels": ["dev", "gpu"]}),
    ("svc3.cancel-jobs", {"jobId": "j2", "query": "SELECT 1", "items": [{"id": 1}]}),
    ("other.tool", {"x": 1}),
]


def candidates(policy: CompiledPolicy, tool: str) -> int:
    return len(policy._entry(tool)[1])


def run(calls: int = 20_000, rule_count: int = 1000) -> dict[str, Any]:
    """Compile a `rule_count`-rule policy, time `calls` decisions, and return the figures in microseconds."""
    started = time.perf_counter()
    policy = compile_policy(build_policy(rule_count))
    compile_ms = (time.perf_counter() - started) * 1000
    identity = Identity("user5", frozenset({"agents"}))
    for tool, args in CALLS:  # first sight of a tool builds its candidate list; measure steady state
        policy.decide(identity, tool, args)

    samples: list[float] = []
    clock = time.perf_counter_ns
    decide = policy.decide
    gc.collect()
    for n in range(calls):
        tool, args = CALLS[n % len(CALLS)]
        t0 = clock()
        decide(identity, tool, args)
        samples.append((clock() - t0) / 1000)
    samples.sort()
    return {
        "rules": rule_count,
        "calls": calls,
        "compile_ms": round(compile_ms, 1),
        "p50_us": round(statistics.median(samples), 2),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 2),
        "max_us": round(samples[-1], 2),
        "candidates_per_tool": {tool: candidates(policy, tool) for tool, _ in CALLS},
    }


if __name__ == "__main__":
    figures = run()
    print(f"policy: {figures['rules']} rules, compiled in {figures['compile_ms']} ms")
    print(
        f"decide: p50 {figures['p50_us']} us, p99 {figures['p99_us']} us, max {figures['max_us']} us "
        f"over {figures['calls']} calls (spec: p99 <= 20 us)"
    )
    print("candidate rules per tool:", figures["candidates_per_tool"])
