"""Properties of the evaluator over generated policies, tools and arguments."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.identity import Identity
from proxy.policy import compile_policy
from proxy.policy_spec import glob_escape

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("ab0") | st.text(max_size=3), inner)
    ),
    max_leaves=12,
)
# arguments that reach the generated paths often, and anything else some of the time
arguments = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "args", "0"]), json_values, max_size=4),
    json_values,
)
tool_names = st.one_of(
    st.sampled_from(["runpod.list-pods", "runpod.delete-pod", "a", "ab", "a.b", "[", "*", ""]),
    st.text(max_size=12),
)
globs = st.one_of(
    st.sampled_from(["*", "runpod.*", "*.delete-*", "a", "a*", "?", "[ab]*", "[!a]*", "a.b"]),
    st.text(alphabet="ab.*?-", min_size=1, max_size=5),
)
identities = st.builds(
    Identity,
    name=st.sampled_from(["alice", "bob", "ci-bot"]),
    groups=st.frozensets(st.sampled_from(["oncall", "agents", "sre"]), max_size=2),
)

PATHS = ["a", "a.b", "a[0]", "$.a.b", "args.a", "b.0.c", "$['a']", "0"]
REGEXES = ["^SELECT", "x", "a|b", r"\d+", ".*", "^$"]


def condition_values(op: str) -> st.SearchStrategy[Any]:
    if op in ("in", "not_in"):
        return st.lists(json_values, max_size=3)
    if op in ("lt", "lte", "gt", "gte"):
        return st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    if op == "regex":
        return st.sampled_from(REGEXES)
    if op == "exists":
        return st.booleans()
    if op == "contains":
        return json_values.filter(lambda value: value is not None)
    return json_values


conditions = st.sampled_from(
    ["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists"]
).flatmap(
    lambda op: st.fixed_dictionaries(
        {"path": st.sampled_from(PATHS), "op": st.just(op), "value": condition_values(op)}
    )
)
rate_limits = st.fixed_dictionaries(
    {
        "max": st.integers(1, 100),
        "window": st.sampled_from([1, 60, "10m", "1h30m"]),
        "per": st.sampled_from(["identity", "session", "global"]),
    }
)


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    action = draw(st.sampled_from(["allow", "deny", "require_approval", "rate_limit"]))
    rule: dict[str, Any] = {"tools": draw(st.lists(globs, min_size=1, max_size=3)), "action": action}
    if draw(st.booleans()):
        rule["when"] = draw(st.lists(conditions, max_size=3))
    if draw(st.booleans()):
        rule["unless"] = draw(st.lists(conditions, max_size=2))
    if draw(st.booleans()):
        rule["identities"] = draw(st.lists(st.sampled_from(["alice", "ci-bot"]), min_size=1, max_size=2))
    if draw(st.booleans()):
        rule["groups"] = draw(st.lists(st.sampled_from(["oncall", "agents"]), min_size=1, max_size=2))
    if action == "rate_limit" or (action != "deny" and draw(st.booleans())):
        rule["rate_limit"] = draw(rate_limits)
    if action == "require_approval" and draw(st.booleans()):
        rule["approval"] = {"quorum": draw(st.integers(1, 3)), "timeout": "5m"}
    return rule


policies = st.fixed_dictionaries(
    {
        "default": st.sampled_from(["allow", "deny", "require_approval"]),
        "hide": st.lists(globs, max_size=2),
        "rules": st.lists(rules(), max_size=8),
    }
)


@settings(max_examples=200, deadline=None)
@given(policy=policies, identity=identities, tool=tool_names, args=arguments)
def test_decide_never_raises_and_answers_sanely(
    policy: dict[str, Any], identity: Identity, tool: str, args: Any
) -> None:
    compiled = compile_policy(policy)
    decision = compiled.decide(identity, tool, args)
    assert decision.action in ("allow", "deny", "require_approval", "hidden")
    assert (decision.action == "hidden") == compiled.is_hidden(tool)
    assert (decision.approval is not None) == (decision.action == "require_approval")
    if decision.action in ("deny", "hidden"):
        assert decision.rate_limits == ()
    # deterministic: the per-tool cache does not change the answer
    assert compiled.decide(identity, tool, args) == decision


@settings(max_examples=200, deadline=None)
@given(policy=policies, identity=identities, tool=tool_names, args=arguments)
def test_hide_always_wins_over_allow(
    policy: dict[str, Any], identity: Identity, tool: str, args: Any
) -> None:
    # Whatever else the policy says, an explicit allow-everything rule first, and the tool hidden:
    policy = {
        **policy,
        "default": "allow",
        "hide": [*policy["hide"], glob_escape(tool) or "*"],
        "rules": [{"tools": "*", "action": "allow"}, *policy["rules"]],
    }
    compiled = compile_policy(policy)
    assert compiled.is_hidden(tool)
    assert compiled.decide(identity, tool, args).action == "hidden"


@settings(max_examples=200, deadline=None)
@given(tool=tool_names, listed=st.lists(tool_names, max_size=3), args=arguments)
def test_policylayer_hide_wins_over_a_listed_tool(tool: str, listed: list[str], args: Any) -> None:
    name = tool if tool.strip() else "x"  # both formats refuse blank names
    others = {other: {} for other in listed if other.strip()}
    for policy in (
        {"version": "1", "default": "allow", "hide": [name], "tools": {name: {}, **others}},
        {"version": "1", "default": "allow", "hide": [name], "tools": {name: {"rules": []}}},
    ):
        compiled = compile_policy(policy)
        assert compiled.decide(Identity("alice"), name, args).action == "hidden"
