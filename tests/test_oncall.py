"""On-call-native approvals: only the person on call in PagerDuty decides, and a request nobody decides
in time pages someone — once, across replicas — until it ends.

Gateways are real processes deciding through the approvals API as people do; PagerDuty (and, in one
test, Slack) are fakes on 127.0.0.1 served from this test's event loop, so gateways are started and
stopped from a thread.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from sqlalchemy import text

from bot import blocks
from proxy.approvers import Allowed, ApproverDirectory, Refused
from proxy.config import ApproverGroupConfig, ConfigError, PagerDutyConfig, PersonConfig, parse_config
from proxy.escalation import trigger_event
from proxy.pagerduty import PagerDuty
from proxy.people import People
from proxy.policy_native import native_spec
from proxy.policy_spec import PolicyError
from proxy.records import Approval, utcnow
from proxy.store import MIGRATIONS, Store
from tests.conftest import DECISION, PEOPLE, Admin, executions, gateway_config
from tests.fakepagerduty import API_TOKEN, ROUTING_KEY, FakePagerDuty
from tests.fakeslack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, block_action_payload, post_signed
from tests.procs import Gateway, start_gateway
from tests.test_approvals import call_held

pytestmark = pytest.mark.usefixtures("no_proxy")

SCHEDULE = "P1ABCDE"
ENV = {"PAGERDUTY_TOKEN": API_TOKEN, "PAGERDUTY_ROUTING_KEY": ROUTING_KEY}
ONCALL = {"people": ["alice", "bob", "carol"], "pagerduty_schedule": SCHEDULE, "on_call_only": True}


def hold(approvers: str = "oncall", **approval: Any) -> dict[str, Any]:
    return {
        "name": "deletes need the on-call",
        "tools": "delete_thing",
        "action": "require_approval",
        "approval": {"approvers": approvers, "timeout": "30s", **approval},
    }


def pd_section(pd: FakePagerDuty) -> dict[str, Any]:
    return {
        "api_token_env": "PAGERDUTY_TOKEN",
        "api_url": pd.base_url,
        "events_url": pd.base_url,
        "routing_key_env": "PAGERDUTY_ROUTING_KEY",
    }


def on_call_config(
    exec_log: Path, tmp_path: Path, pd: FakePagerDuty, *rules: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    extra.setdefault("approvers", {"oncall": ONCALL})
    extra.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    return gateway_config(
        exec_log,
        {"default": "allow", "rules": list(rules) or [hold()]},
        pagerduty=pd_section(pd),
        **extra,
    )


def slack_on_call_config(
    exec_log: Path, tmp_path: Path, pd: FakePagerDuty, slack: FakeSlack, rule: dict[str, Any]
) -> dict[str, Any]:
    """`on_call_config` with the fake Slack as the channel (HTTP mode, requests signed)."""
    slack_section = {
        "bot_token": BOT_TOKEN,
        "channel": "C0123",
        "api_url": slack.api_url,
        "mode": "http",
        "signing_secret": SIGNING_SECRET,
    }
    return on_call_config(exec_log, tmp_path, pd, rule, slack=slack_section)


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty() as fake:
        yield fake


@asynccontextmanager
async def gateway(config: dict[str, Any], tmp_path: Path, name: str = "gateway") -> AsyncIterator[Gateway]:
    # From a thread: starting and stopping block while the gateway talks to fakes living in this loop.
    gw = await asyncio.to_thread(start_gateway, config, tmp_path, env=ENV, name=name)
    try:
        yield gw
    finally:
        await asyncio.to_thread(gw.stop)


async def refusals(admin: Admin, n: int) -> set[tuple[str, str]]:
    found = await admin.audit_for(lambda r: r["decision"] == "refused_click", n=n)
    return {(r["approvers"], r["reason"]) for r in found}


# -- who decides ----------------------------------------------------------------------------------


async def test_only_the_person_on_call_decides_and_the_others_are_told_who_is(
    tmp_path: Path, exec_log: Path, pd: FakePagerDuty
) -> None:
    pd.set_on_call(SCHEDULE, "carol@example.com")
    config = on_call_config(exec_log, tmp_path, pd, hold(escalate_after="20s"))
    async with gateway(config, tmp_path) as gw, Client(gw.mcp_url, mode="legacy") as client:
        admin = Admin(gw.control_url)
        task = asyncio.create_task(call_held(client, "db1"))
        [pending] = await admin.pending()

        status, body = await admin.decide(pending["id"], "approve", "alice")  # in the group, not on call
        assert (status, body["message"]) == (403, "Only the person on call may decide: carol is on call now.")
        status, body = await admin.decide(pending["id"], "approve", "dave")  # not in the group at all
        assert status == 403 and "not an approver" in body["message"]
        assert not task.done() and executions(exec_log) == []

        status, body = await admin.decide(pending["id"], "approve", "carol")
        assert (status, body["status"]) == (200, "approved")
        result, _ = await asyncio.wait_for(task, 10)
        assert not result.is_error and result.content[0].text == "deleted db1"
        assert await refusals(admin, 2) == {("alice", "not on call"), ("dave", "not an approver")}

    assert len(executions(exec_log, "delete_thing")) == 1
    # PagerDuty was asked the documented way, with the REST key as `Token token=`.
    assert pd.oncall_requests and all(
        r.status == 200
        and r.authorization == f"Token token={API_TOKEN}"
        and r.query["schedule_ids[]"] == [SCHEDULE]
        and r.query["include[]"] == ["users"]
        for r in pd.oncall_requests
    )
    assert pd.events == []  # decided before `escalate_after`: nobody was paged, nothing to resolve


async def test_a_handover_between_two_clicks_is_judged_by_the_new_schedule(
    tmp_path: Path, exec_log: Path, pd: FakePagerDuty
) -> None:
    pd.set_on_call(SCHEDULE, "carol@example.com")
    async with gateway(on_call_config(exec_log, tmp_path, pd), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client, "db2"))
            [pending] = await admin.pending()
            status, body = await admin.decide(pending["id"], "approve", "bob")
            assert (status, body["message"]) == (
                403,
                "Only the person on call may decide: carol is on call now.",
            )

            pd.set_on_call(SCHEDULE, "bob@example.com")  # carol hands over to bob
            status, body = await admin.decide(pending["id"], "approve", "bob")
            assert (status, body["status"]) == (200, "approved"), body
            result, _ = await asyncio.wait_for(task, 10)
            assert not result.is_error


async def test_pagerduty_down_refuses_the_click_unless_the_group_prefers_on_call(
    tmp_path: Path, exec_log: Path, pd: FakePagerDuty
) -> None:
    soft = hold("oncall-soft") | {
        "name": "soft deletes prefer the on-call",
        "when": [{"path": "name", "op": "regex", "value": "^soft-"}],
    }
    approvers = {"oncall": ONCALL, "oncall-soft": ONCALL | {"on_call_only": "prefer"}}
    pd.set_on_call(SCHEDULE, "carol@example.com")
    config = on_call_config(exec_log, tmp_path, pd, soft, hold(), approvers=approvers)
    async with gateway(config, tmp_path) as gw, Client(gw.mcp_url, mode="legacy") as client:
        admin = Admin(gw.control_url)
        strict = asyncio.create_task(call_held(client, "hard-1"))
        [hard] = await admin.pending()
        preferring = asyncio.create_task(call_held(client, "soft-1"))
        [_, soft_one] = await admin.pending(2)
        assert (hard["approvers"], soft_one["approvers"]) == ("oncall", "oncall-soft")

        pd.fail(500, api="rest")
        status, body = await admin.decide(hard["id"], "approve", "alice")
        assert status == 403
        assert body["message"].startswith("Only the person on call may decide, and PagerDuty cannot say who")
        assert "HTTP 500" in body["message"]
        await pd.refuse_connections()
        status, body = await admin.decide(hard["id"], "approve", "carol")  # even the on-call person: unknown
        assert status == 403 and "cannot reach PagerDuty" in body["message"]
        assert not strict.done()

        # `prefer`: PagerDuty cannot say who is on call, so the group's members decide.
        status, body = await admin.decide(soft_one["id"], "approve", "alice")
        assert (status, body["status"]) == (200, "approved"), body
        result, _ = await asyncio.wait_for(preferring, 10)
        assert not result.is_error

        await pd.recover()
        status, body = await admin.decide(hard["id"], "approve", "carol")
        assert status == 200, body
        result, _ = await asyncio.wait_for(strict, 10)
        assert not result.is_error
        reasons = await refusals(admin, 2)
        assert reasons == {
            ("alice", "on call unknown: PagerDuty unavailable"),
            ("carol", "on call unknown: PagerDuty unavailable"),
        }
    assert sorted(e["args"]["name"] for e in executions(exec_log, "delete_thing")) == ["hard-1", "soft-1"]


async def test_who_is_on_call_is_remembered_for_seconds_and_a_refusal_always_asks_again(
    pd: FakePagerDuty,
) -> None:
    clock = [1000.0]
    client = PagerDuty(
        PagerDutyConfig(api_token_env="X", api_url=pd.base_url, on_call_cache=10.0),
        API_TOKEN,
        None,
        clock=lambda: clock[0],
    )
    people = People.from_config({name: PersonConfig(**fields) for name, fields in PEOPLE.items()})
    groups = {
        "strict": ApproverGroupConfig(**ONCALL),
        "prefer": ApproverGroupConfig(**(ONCALL | {"on_call_only": "prefer"})),
        "policy": ApproverGroupConfig(people=["alice", "dave"], pagerduty_escalation_policy="PEP1"),
    }
    directory = ApproverDirectory(groups, people, client)
    alice, bob, carol, dave = (people.get(n) for n in ("alice", "bob", "carol", "dave"))
    assert alice and bob and carol and dave
    try:
        pd.set_on_call(SCHEDULE, "carol@example.com")
        assert await directory.check("strict", carol) == Allowed()
        pd.set_on_call(SCHEDULE, "bob@example.com")
        # carol's shift ended a moment ago: within the cache she still counts (seconds, not minutes)…
        assert await directory.check("strict", carol) == Allowed()
        # …but bob, refused by the remembered answer, is judged by a fresh one.
        assert await directory.check("strict", bob) == Allowed()
        clock[0] += 10.0
        assert await directory.check("strict", carol) == Refused(
            "Only the person on call may decide: bob is on call now.", "not on call"
        )

        # `prefer` with PagerDuty up: the person on call decides…
        assert isinstance(await directory.check("prefer", alice), Refused)
        # …unless nobody of the group is on call; then its members decide.
        pd.set_on_call(SCHEDULE, "zed@example.com")
        assert await directory.check("prefer", alice) == Allowed()
        refused = await directory.check("strict", alice)
        assert isinstance(refused, Refused) and refused.why.endswith("Zed is on call now.")

        # An escalation policy: everyone on call at any level, named in order of level.
        pd.set_on_call("PEP1", "dave@example.com", level=2)
        pd.on_call["PEP1"].append(("alice@example.com", 1))
        assert [p.name for p in await directory.on_call("policy") or []] == ["alice", "dave"]
        assert pd.oncall_requests[-1].query["escalation_policy_ids[]"] == ["PEP1"]
        pd.set_on_call("PEP1")
        clock[0] += 10.0
        assert await directory.check("policy", dave) == Refused(
            "Only the person on call may decide, and nobody is on call now in PagerDuty escalation policy PEP1.",
            "not on call",
        )
    finally:
        await client.close()


# -- escalation -----------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_escalation_pages_once_across_two_replicas_and_resolves_on_the_decision(
    tmp_path: Path, exec_log: Path, pd: FakePagerDuty, pg: Any
) -> None:
    db = pg.new_database()
    pd.set_on_call(SCHEDULE, "carol@example.com")

    def replica(name: str) -> dict[str, Any]:
        return on_call_config(
            exec_log,
            tmp_path,
            pd,
            hold(escalate_after="1s"),
            database_url=db,
            replica=name,
            approvals={"progress_interval": "1s", "heartbeat_timeout": "2s"},
        )

    async with (
        gateway(replica("a"), tmp_path, "a") as a,
        gateway(replica("b"), tmp_path, "b") as b,
        Client(a.mcp_url, mode="legacy") as client,
    ):
        admin_b = Admin(b.control_url)
        task = asyncio.create_task(call_held(client, "db3"))
        [pending] = await admin_b.pending()
        [trigger] = await pd.wait_for_events(1, "trigger")
        assert trigger["routing_key"] == ROUTING_KEY and trigger["dedup_key"] == pending["id"]
        summary = trigger["payload"]["summary"]
        assert "delete_thing requested by anonymous" in summary
        assert f"/approvals?approval={pending['id']}" in summary
        assert trigger["links"][0]["href"] in summary and trigger["payload"]["severity"] == "warning"
        assert not task.done()  # paging changes nothing about the request itself

        status, body = await admin_b.decide(pending["id"], "approve", "carol")
        assert status == 200, body
        result, _ = await asyncio.wait_for(task, 10)
        assert not result.is_error
        resolves = await pd.wait_for_events(1, "resolve")
        assert {e["dedup_key"] for e in resolves} == {pending["id"]}
    assert len(pd.events_for(pending["id"], "trigger")) == 1


@pytest.mark.postgres
async def test_a_restarted_replica_still_escalates_overdue_requests_once(
    tmp_path: Path, exec_log: Path, pd: FakePagerDuty, pg: Any
) -> None:
    """Pending mode: the request outlives the replica that created it (and that replica's timer)."""
    db = pg.new_database()
    pd.set_on_call(SCHEDULE, "carol@example.com")

    def replica(name: str) -> dict[str, Any]:
        rule = hold(escalate_after="3s", mode="pending")
        return on_call_config(exec_log, tmp_path, pd, rule, database_url=db, replica=name)

    async with gateway(replica("b"), tmp_path, "b") as b:
        async with gateway(replica("a"), tmp_path, "a") as a, Client(a.mcp_url, mode="legacy") as client:
            first = await client.call_tool("delete_thing", {"name": "db4"})
            assert first.is_error and first.meta[DECISION]["reason"] == "approval_pending"
        assert pd.events == []  # `a` stopped before the request was due, its timer gone with it
        async with gateway(replica("a"), tmp_path, "a-again"):
            [trigger] = await pd.wait_for_events(1, "trigger")
            [pending] = await Admin(b.control_url).pending()
            assert trigger["dedup_key"] == pending["id"]
            status, _ = await Admin(b.control_url).decide(pending["id"], "deny", "carol", "not today")
            assert status == 200
            await pd.wait_for_events(1, "resolve")
    assert len(pd.events_for(pending["id"], "trigger")) == 1


async def test_an_escalated_request_that_expires_resolves_its_incident(
    tmp_path: Path, exec_log: Path, pd: FakePagerDuty
) -> None:
    pd.fail(500, api="events", times=2)  # PagerDuty stumbles: the trigger is retried, the call unaffected
    rule = hold(timeout="4s", escalate_after="1s")
    async with gateway(on_call_config(exec_log, tmp_path, pd, rule), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client, "db5"))
            [pending] = await Admin(gw.control_url).pending()
            [trigger] = await pd.wait_for_events(1, "trigger")
            assert trigger["dedup_key"] == pending["id"]
            result, _ = await asyncio.wait_for(task, 15)
            assert result.is_error and result.meta[DECISION]["reason"] == "expired"
            resolves = await pd.wait_for_events(1, "resolve")
            assert resolves[0] == {
                "routing_key": ROUTING_KEY,
                "event_action": "resolve",
                "dedup_key": pending["id"],
            }
        assert "PagerDuty event trigger: HTTP 500" in gw.output()  # retried, and said so
    assert executions(exec_log) == []


async def test_slack_names_who_is_on_call_refuses_the_others_and_escalates_to_the_leads(
    tmp_path: Path, exec_log: Path, pd: FakePagerDuty
) -> None:
    pd.set_on_call(SCHEDULE, "carol@example.com")
    rule = hold(escalate_after="1s", escalate_to={"channel": "C0ESCALATE", "usergroup": "S0LEADS"})
    async with FakeSlack() as slack:
        config = slack_on_call_config(exec_log, tmp_path, pd, slack, rule)
        async with gateway(config, tmp_path) as gw, Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client, "db6"))
            await slack.wait_for("chat.postMessage")
            channel, ts = next(iter(slack.messages))
            approval_id = await slack.wait_until(lambda: _approve_value(slack.message(channel, ts)), 10)
            assert ":pager: On call now: <@U_CAROL>" in json.dumps(slack.message(channel, ts))

            async def click(user: str) -> None:
                payload = block_action_payload(
                    user=user, action_id=blocks.APPROVE, value=approval_id, channel=channel, message_ts=ts
                )
                status, _ = await post_signed(gw.control_url + "/slack/events", payload, SIGNING_SECRET)
                assert status == 200

            await click("U_BOB")
            [refused] = await slack.wait_until(
                lambda: [e for e in slack.ephemerals if e["user"] == "U_BOB"] or None, 10
            )
            assert refused["text"] == "Only the person on call may decide: carol is on call now."

            escalated = await slack.wait_until(
                lambda: [m for (c, _), m in slack.messages.items() if c == "C0ESCALATE"] or None, 10
            )
            text_ = json.dumps(escalated[0])
            assert "<!subteam^S0LEADS>" in text_ and "Still undecided after" in text_
            assert f"https://fake-team.slack.com/archives/{channel}/p{ts.replace('.', '')}" in text_
            [trigger] = await pd.wait_for_events(1, "trigger")
            assert trigger["dedup_key"] == approval_id

            await click("U_CAROL")
            result, _ = await asyncio.wait_for(task, 10)
            assert not result.is_error
            await pd.wait_for_events(1, "resolve")


async def test_a_request_slow_to_post_escalates_only_once_posted_with_its_link(
    tmp_path: Path, exec_log: Path, pd: FakePagerDuty
) -> None:
    """Who is on call takes longer than `escalate_after` to learn: the escalation still follows the
    request's message and links to it."""
    pd.set_on_call(SCHEDULE, "carol@example.com")
    pd.slow_oncalls(1.5)  # within the post's wait for PagerDuty (2 s), beyond the escalation (0.5 s)
    rule = hold(escalate_after="0.5s", escalate_to={"channel": "C0ESCALATE"})
    async with FakeSlack() as slack:
        config = slack_on_call_config(exec_log, tmp_path, pd, slack, rule)
        async with gateway(config, tmp_path) as gw, Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client, "db7"))
            escalated = await slack.wait_until(
                lambda: [m for (c, _), m in slack.messages.items() if c == "C0ESCALATE"] or None, 10
            )
            posted = [key for key in slack.messages if key[0] == "C0123"]
            assert len(posted) == 1, "the request is posted before its escalation"
            [(channel, ts)] = posted
            assert ts < escalated[0]["ts"]
            assert f"archives/{channel}/p{ts.replace('.', '')}" in json.dumps(escalated[0])
            assert ":pager: On call now: <@U_CAROL>" in json.dumps(slack.message(channel, ts))
            [pending] = await Admin(gw.control_url).pending()
            status, _ = await Admin(gw.control_url).decide(pending["id"], "approve", "carol")
            assert status == 200
            result, _ = await asyncio.wait_for(task, 10)
            assert not result.is_error


def _approve_value(message: dict[str, Any]) -> str | None:
    for block in message.get("blocks", []):
        for element in block.get("elements", []):
            if element.get("action_id") == blocks.APPROVE:
                return str(element["value"])
    return None


# -- the database ---------------------------------------------------------------------------------


def _approval(n: int, **fields: Any) -> Approval:
    now = utcnow()
    return Approval(
        id=f"apr_claim{n:04d}",
        identity="agent",
        tool="delete_thing",
        args_hash="0" * 64,
        expires_at=now + timedelta(minutes=5),
        escalate_at=now - timedelta(seconds=1),
        **fields,
    )


@pytest.mark.postgres
async def test_the_escalation_claim_is_won_exactly_once_by_concurrent_replicas(pg: Any) -> None:
    url = pg.new_database()
    stores = [Store(url), Store(url)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        for n in range(20):
            await stores[0].add_approval(_approval(n))
        claims = [
            stores[k % 2].claim_escalation(f"apr_claim{n:04d}", utcnow()) for n in range(20) for k in range(6)
        ]
        won = [row.id for row in await asyncio.gather(*claims) if row is not None]
        assert sorted(won) == [f"apr_claim{n:04d}" for n in range(20)]
        assert await stores[1].escalations_waiting() == []
    finally:
        for s in stores:
            await s.close()


async def test_migration_2_adds_the_escalation_columns_to_an_older_database(db_url: str) -> None:
    store = Store(db_url)
    try:
        await store.open()
        async with store.engine.begin() as conn:  # make it look like a version-1 database
            for version, statements in MIGRATIONS:
                for statement in statements if version > 1 else ():
                    table, column = re.match(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", statement).groups()  # type: ignore[union-attr]
                    await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            await conn.execute(text("UPDATE signoff_schema SET version = 1"))
        await store.open()
        await store.add_approval(_approval(1, escalate_channel="C0ESCALATE"))
        assert [i for i, _ in await store.escalations_waiting()] == ["apr_claim0001"]
        assert [i for i, _ in await store.escalations_waiting(due_by=utcnow())] == ["apr_claim0001"]
        assert await store.escalations_waiting(due_by=utcnow() - timedelta(minutes=1)) == []
        row = await store.claim_escalation("apr_claim0001", utcnow())
        assert row is not None and row.escalated_at is not None and row.escalate_channel == "C0ESCALATE"
        assert await store.claim_escalation("apr_claim0001", utcnow()) is None
    finally:
        await store.close()


# -- configuration and rendering (pure) -----------------------------------------------------------


def _config_errors(approvers: dict[str, Any], **extra: Any) -> list[str]:
    doc = {"upstreams": {"e": {"command": "x"}}, "people": PEOPLE, "approvers": approvers, **extra}
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    return e.value.errors


def test_on_call_config_mistakes_are_named() -> None:
    assert _config_errors({"g": {"people": ["alice"], "on_call_only": True}}) == [
        "approvers.g: `on_call_only` needs `pagerduty_schedule` or `pagerduty_escalation_policy`"
    ]
    assert _config_errors({"g": {"people": ["alice"], "pagerduty_schedule": "P1"}}) == [
        "approvers.g.pagerduty_schedule: needs `pagerduty.api_token_env` "
        "(a PagerDuty REST API key, to ask who is on call)"
    ]
    people = PEOPLE | {"erin": {"slack_user": "U_ERIN"}}
    assert _config_errors(
        {"g": {"people": ["erin"], "pagerduty_schedule": "P1"}},
        people=people,
        pagerduty={"api_token_env": "T", "api_url": "http://pagerduty.example.com"},
    ) == ["pagerduty.api_url: must use https (plain http is accepted only for 127.0.0.1 / localhost)"]
    assert _config_errors(
        {"g": {"people": ["erin"], "pagerduty_schedule": "P1"}},
        people=people,
        pagerduty={"api_token_env": "T"},
    ) == [
        "approvers.g.people: 'erin' has no `email` in `people`; PagerDuty's on-call users are matched by email"
    ]
    assert _config_errors(
        {"g": {"people": ["alice"], "pagerduty_schedule": "P1", "on_call_only": "maybe"}}
    ) == ["approvers.g.on_call_only: Input should be True, False or 'prefer'"]
    ok = {"g": {"people": ["alice"], "pagerduty_schedule": "P1", "on_call_only": "prefer"}}
    config = parse_config(
        {
            "upstreams": {"e": {"command": "x"}},
            "people": PEOPLE,
            "approvers": ok,
            "pagerduty": {"api_token_env": "T"},
        }
    )
    assert config.approvers["g"].on_call_rule == "prefer" and config.pagerduty is not None
    assert ApproverGroupConfig(people=["a"], pagerduty_schedule="P1").on_call_rule == "only"  # fail closed
    with pytest.raises(ConfigError, match="environment variable T is not set"):
        config.pagerduty.api_token({})


def test_escalation_policy_mistakes_are_named() -> None:
    rule = {"name": "r", "tools": "x", "action": "require_approval"}
    spec = native_spec(
        {"rules": [rule | {"approval": {"escalate_after": "5m", "escalate_to": {"channel": "C0ESCALATE"}}}]}
    )
    approval = spec.rules[0].approval
    assert approval is not None and approval.escalate_after == 300.0
    assert approval.escalate_to is not None and approval.escalate_to.channel == "C0ESCALATE"
    with pytest.raises(PolicyError) as e:
        native_spec({"rules": [rule | {"approval": {"escalate_to": {"usergroup": "S0LEADS"}}}]})
    assert e.value.errors == [
        "rules.0.approval.escalate_to: needs escalate_after (how long a request waits first)"
    ]
    with pytest.raises(PolicyError) as e:
        native_spec({"rules": [rule | {"approval": {"timeout": "5m", "escalate_after": "5m"}}]})
    assert "not shorter than the timeout" in e.value.errors[0]


def test_the_on_call_line_and_the_escalation_notice_render_safely() -> None:
    assert (
        blocks.on_call_line(["U_CAROL", "<!channel> eve"])
        == ":pager: On call now: <@U_CAROL>, &lt;!channel&gt; eve"
    )
    assert blocks.on_call_line([]) == ":pager: On call now: nobody"
    created = datetime(2026, 1, 5, 14, 0, tzinfo=UTC)
    approval = _approval(7)
    approval.created_at, approval.expires_at = created, created + timedelta(minutes=10)
    link = blocks.permalink("https://fake-team.slack.com/", "C0123", "1700000001.000100")
    assert link == "https://fake-team.slack.com/archives/C0123/p1700000001000100"
    assert blocks.permalink("https://x.slack.com/|evil", "C0123", "1.2") is None
    notice = json.dumps(
        blocks.escalation_message(
            approval, now=created + timedelta(minutes=5), usergroup="S0LEADS", link=link
        )
    )
    assert "<!subteam^S0LEADS> :rotating_light: Still undecided after 5m" in notice
    assert f"<{link}|Open the request>" in notice and "expires in 5m" in notice
    hostile = json.dumps(blocks.escalation_message(approval, now=created, usergroup="<!here>", link=None))
    assert "<!here>" not in hostile and "&lt;!here&gt;" in hostile


def test_the_incident_names_the_tool_the_caller_and_the_request_but_not_its_arguments() -> None:
    approval = _approval(8, client_name="claude-code", upstream="runpod", arguments={"token": "s3cret"})
    event = trigger_event(
        approval, "http://127.0.0.1:8766/approvals", approval.created_at + timedelta(minutes=5)
    )
    assert event["event_action"] == "trigger" and event["dedup_key"] == approval.id
    assert event["payload"]["summary"] == (
        "Approval waiting 5m: delete_thing requested by agent via claude-code — "
        f"http://127.0.0.1:8766/approvals?approval={approval.id}"
    )
    assert "s3cret" not in json.dumps(event)
