"""The database: approvals, their votes, the audit log, and replica heartbeats (SQLModel, async).

SQLite (WAL) by default; PostgreSQL (asyncpg) when several replicas share state. Every decision
is an `UPDATE … WHERE status = 'pending'`, so the first one wins whatever process makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import JSON, Column, Index, case, delete, event, func, insert, inspect, or_, text, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from proxy.auditrows import AuditInserts, Row
from proxy.records import APPROVED, EXPIRED, PENDING, WITHDRAWN, Approval, AuditRecord, Grant, ToolPin, utcnow
from proxy.secretfiles import make_private, sqlite_path

log = logging.getLogger("signoff.store")

R = TypeVar("R")


class ApprovalRow(SQLModel, table=True):
    """The `approval` table: one row per `proxy.records.Approval`."""

    __tablename__ = "approval"
    id: str = Field(primary_key=True)
    status: str = Field(default=PENDING, index=True)
    mode: str = "hold"  # hold: the call waits; pending: the agent calls again after approval
    identity: str = Field(index=True)
    acts_for: str | None = None  # the Slack user the identity acts for (cannot self-approve)
    session_id: str = ""
    client_name: str | None = None
    upstream: str = ""
    tool: str = Field(index=True)  # public (namespaced) name
    arguments: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )  # redacted
    args_hash: str = Field(index=True)
    risk: str = "write"
    rule: str = ""
    rule_reason: str | None = None
    approvers: str | None = None  # approver group name
    channel: str | None = None
    quorum: int = 1
    allow_self_approval: bool = False
    policy_revision: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    # Escalation (schema version 2): when a still-undecided request pages someone, where it is
    # re-posted, and when it did escalate (set once, by whichever process claimed it).
    escalate_at: datetime | None = None
    escalate_channel: str | None = None
    escalate_usergroup: str | None = None
    escalated_at: datetime | None = None
    decided_at: datetime | None = Field(default=None, index=True)
    decided_by: str | None = None
    decision_reason: str | None = None
    holder: str = Field(default="", index=True)  # process instance holding the waiting call (hold mode)
    replica: str = ""  # replica name, for people
    message_channel: str | None = None
    message_ts: str | None = None
    outcome: str | None = None  # after execution: ok / tool_error / upstream error text
    executed_at: datetime | None = None
    reported: bool = False  # pending mode: the agent has been told the final state
    # Approving for a while and editing (proxy.grants, proxy.edits); added in schema version 3.
    input_schema: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # to check edits
    identity_groups: list[str] | None = Field(default=None, sa_column=Column(JSON))  # to re-decide edits
    grant_offer: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # proxy.grants.offer_of
    grant_id: str | None = None  # the grant this approval created
    # The exact arguments an approver changed the call to (the database is private: see `open`).
    edited_arguments: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    edited_hash: str | None = None
    edited_paths: list[str] | None = Field(default=None, sa_column=Column(JSON))
    # The context probe's answer about the target (proxy.context): what approvers were shown.
    context: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Vote(SQLModel, table=True):
    """One approver's approve vote (quorum counts distinct approvers)."""

    __table_args__ = (Index("ux_vote_approval_user", "approval_id", "user", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    approval_id: str = Field(index=True)
    user: str
    at: datetime = Field(default_factory=utcnow)
    grant_for: float | None = None  # seconds: this approver approved for a while (schema version 3)


class AuditRow(SQLModel, table=True):
    """The `audit` table: one row per `proxy.records.AuditRecord`."""

    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    call_id: str = Field(index=True)
    identity: str = Field(index=True)
    session_id: str = ""
    client_name: str | None = None
    upstream: str = ""
    tool: str = Field(index=True)
    arguments: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    decision: str = Field(index=True)  # allow / deny / require_approval / rate_limited / hidden / unknown
    enforced: bool = True  # False in shadow mode
    rule: str | None = None
    approval_id: str | None = None
    approvers: str | None = None  # who decided (comma separated)
    reason: str | None = None
    latency_ms: float = 0.0
    outcome: str = ""  # ok / tool_error / denied / expired / upstream_unavailable / …
    replica: str = ""
    policy_revision: str = ""
    grant_id: str | None = None  # the call ran under this grant, without asking (schema version 3)
    edited_hash: str | None = None  # the call ran with arguments an approver edited (schema version 3)


class GrantRow(SQLModel, table=True):
    """The `grant` table: one row per `proxy.records.Grant`."""

    __tablename__ = "grant"
    __table_args__ = (Index("ix_grant_lookup", "identity", "tool", "values_hash"),)
    id: str = Field(primary_key=True)
    identity: str
    upstream: str = ""
    tool: str  # public (namespaced) name
    rule: str = ""  # the rule that offered it: a call under another rule is not covered
    same: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    values: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # masked
    values_hash: str  # of the exact values
    created_by: str  # the person (or, with a quorum, the people) who approved for a while
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    approval_id: str = Field(index=True)


class Replica(SQLModel, table=True):
    """A live gateway process (its heartbeat tells others whether its held calls still wait)."""

    instance: str = Field(primary_key=True)
    name: str = ""
    host: str = ""
    pid: int = 0
    front: str = ""  # "http" or "stdio"
    started_at: datetime = Field(default_factory=utcnow)
    seen_at: datetime = Field(default_factory=utcnow, index=True)


class RateEvent(SQLModel, table=True):
    """One counted call under a rate-limit key (the shared limiter used with several replicas)."""

    __tablename__ = "rate_event"
    __table_args__ = (Index("ix_rate_event_key_at", "key", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str
    at: float  # epoch seconds


class WebSession(SQLModel, table=True):
    """A browser signed in to the approvals page (or on its way through an OpenID Connect sign-in)."""

    __tablename__ = "web_session"
    id: str = Field(primary_key=True)  # SHA-256 of the cookie value; the value itself is never stored
    person: str = ""  # who signed in; "" while an OpenID Connect sign-in is under way
    admin: bool = False  # signed in with the admin token: may view, never decide
    csrf: str = ""
    via: str = ""  # token / oidc / admin
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    seen_at: datetime = Field(default_factory=utcnow, index=True)


class ToolPinRow(SQLModel, table=True):
    """The `tool_pin` table: one row per `proxy.records.ToolPin`."""

    __tablename__ = "tool_pin"
    upstream: str = Field(primary_key=True)
    tool: str = Field(primary_key=True)  # the upstream's own name
    definition: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    digest: str = ""
    pinned_at: datetime = Field(default_factory=utcnow)
    pinned_by: str = "(first seen)"
    # The definition the upstream serves now, when it differs from the pinned one (not yet accepted).
    pending: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    pending_digest: str | None = None
    pending_at: datetime | None = None


class SchemaVersion(SQLModel, table=True):
    """Which of `MIGRATIONS` this database has had."""

    __tablename__ = "signoff_schema"
    version: int = Field(primary_key=True)


# Schema changes after the first release, in order: (version, SQL statements). `create_all` makes
# new tables; these alter existing ones. Every replica runs them at start, under a lock on PostgreSQL.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, []),  # the first release's schema, as the models above define it
    (
        2,
        [  # escalation: when a request is due, where it is re-posted, and that it was (once)
            "ALTER TABLE approval ADD COLUMN escalate_at TIMESTAMP WITH TIME ZONE",
            "ALTER TABLE approval ADD COLUMN escalate_channel VARCHAR",
            "ALTER TABLE approval ADD COLUMN escalate_usergroup VARCHAR",
            "ALTER TABLE approval ADD COLUMN escalated_at TIMESTAMP WITH TIME ZONE",
        ],
    ),
    (
        3,
        [  # approving for a while and editing (the `grant` table itself comes from create_all)
            "ALTER TABLE approval ADD COLUMN input_schema JSON",
            "ALTER TABLE approval ADD COLUMN identity_groups JSON",
            "ALTER TABLE approval ADD COLUMN grant_offer JSON",
            "ALTER TABLE approval ADD COLUMN grant_id VARCHAR",
            "ALTER TABLE approval ADD COLUMN edited_arguments JSON",
            "ALTER TABLE approval ADD COLUMN edited_hash VARCHAR",
            "ALTER TABLE approval ADD COLUMN edited_paths JSON",
            "ALTER TABLE vote ADD COLUMN grant_for FLOAT",
            "ALTER TABLE audit ADD COLUMN grant_id VARCHAR",
            "ALTER TABLE audit ADD COLUMN edited_hash VARCHAR",
        ],
    ),
    (4, ["ALTER TABLE approval ADD COLUMN context JSON"]),  # the context probe's answer (proxy.context)
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class Store:
    """Async access to the tables; one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgres = url.startswith("postgresql")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs.update(connect_args={"timeout": 30}, pool_size=20, max_overflow=20)
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # SQLite allows one writer at a time; queueing our own writes here is far cheaper than letting
        # them collide in SQLite's busy handler, which sleeps between retries.
        self._write_lock = asyncio.Lock()
        self._audit = AuditInserts(self.engine, AuditRow.__table__, _AUDIT_COLUMNS)  # type: ignore[attr-defined]

    def _writing(self) -> Any:
        return self._write_lock if self.is_sqlite else contextlib.nullcontext()

    async def open(self) -> None:
        """Create missing tables and apply pending migrations (safe when several replicas start at once)."""
        path = sqlite_path(self.url)
        if path is not None:
            # It holds who asked for what and who decided; SQLite gives its -wal/-shm files the same mode.
            make_private(path)
        async with _schema_lock(path), self.engine.begin() as conn:
            if self.is_postgres:
                await conn.execute(text("SELECT pg_advisory_xact_lock(7120411)"))
            fresh = not await conn.run_sync(lambda c: inspect(c).has_table("approval"))
            await conn.run_sync(SQLModel.metadata.create_all)
            current = (await conn.execute(text("SELECT max(version) FROM signoff_schema"))).scalar()
            if current is None:
                current = SCHEMA_VERSION if fresh else 0
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        await conn.execute(text(statement))
                    log.info("database migrated to schema version %d", version)
            await conn.execute(text("DELETE FROM signoff_schema"))
            await conn.execute(
                text("INSERT INTO signoff_schema (version) VALUES (:v)").bindparams(v=SCHEMA_VERSION)
            )

    async def close(self) -> None:
        """Close every open connection (the audit writer's too); a later use opens new ones."""
        await self._audit.close()
        await self.engine.dispose()

    # -- approvals ---------------------------------------------------------------------------

    async def add_approval(self, approval: Approval) -> None:
        async with self._writing(), self.sessions() as s:
            s.add(ApprovalRow(**_fields(approval)))
            await s.commit()

    async def approval(self, approval_id: str) -> Approval | None:
        # Core, not the ORM: a decision reads and writes its row several times, and the ORM's
        # identity map and attribute events were most of the cost of each (py-spy, 3,000 held calls).
        async with self.engine.connect() as conn:
            result = await conn.execute(sa_select(_APPROVAL).where(_APPROVAL.c.id == approval_id))
            return _approval_or_none(result.mappings().first())

    async def approvals(
        self, status: str | None = None, limit: int = 100, ids: Sequence[str] = ()
    ) -> list[Approval]:
        async with self.sessions() as s:
            q = select(ApprovalRow).order_by(col(ApprovalRow.created_at).desc()).limit(limit)
            if status is not None:
                q = q.where(ApprovalRow.status == status)
            if ids:
                q = q.where(col(ApprovalRow.id).in_(list(ids)))
            return [_record(Approval, row) for row in (await s.exec(q)).all()]

    async def transition(
        self, approval_id: str, from_status: str | Sequence[str], to_status: str, **values: Any
    ) -> Approval | None:
        """Atomically move an approval from one state to another.

        Returns the updated row, or None if someone else moved it first (the caller lost the race).
        """
        froms = [from_status] if isinstance(from_status, str) else list(from_status)
        async with self._writing(), self.engine.begin() as conn:
            return _approval_or_none(await self._move(conn, approval_id, froms, status=to_status, **values))

    async def _move(self, conn: AsyncConnection, approval_id: str, froms: list[str], **values: Any) -> Any:
        """UPDATE … RETURNING the row if its status is still one of `froms`; wakes other replicas."""
        result = await conn.execute(
            update(_APPROVAL)
            .where(_APPROVAL.c.id == approval_id, _APPROVAL.c.status.in_(froms))
            .values(**values)
            .returning(*_APPROVAL.c)
        )
        row = result.mappings().first()
        if row is not None and self.is_postgres:
            await conn.execute(text("SELECT pg_notify('signoff_decided', :id)").bindparams(id=approval_id))
        return row

    async def set_fields(self, approval_id: str, **values: Any) -> None:
        async with self._writing(), self.engine.begin() as conn:
            await conn.execute(update(_APPROVAL).where(_APPROVAL.c.id == approval_id).values(**values))

    async def vote(
        self,
        approval_id: str,
        user: str,
        quorum: int,
        *,
        grant_for: float | None = None,
        grant: Callable[[list[str], list[float | None]], Grant | None] | None = None,
        **approve_values: Any,
    ) -> tuple[int | None, Approval | None]:
        """Record `user`'s approve vote and, if it completes the quorum, approve — in one transaction.

        Returns (distinct approvers so far, the approved row if this vote approved it). The count is None
        when `user` already voted or the request is no longer pending. A failure anywhere leaves no vote
        behind, so the click can simply be repeated. `grant_for` is how long this voter approved for;
        when the quorum completes, `grant(voters, their durations)` may return a grant to create with it.
        """
        async with self._writing(), self.sessions() as s:
            # Locks the row on PostgreSQL, so concurrent voters count each other's votes.
            status = (
                await s.exec(
                    select(ApprovalRow.status).where(ApprovalRow.id == approval_id).with_for_update()
                )
            ).first()
            if status != PENDING:
                await s.rollback()
                return None, None
            already = await s.exec(select(Vote.id).where(Vote.approval_id == approval_id, Vote.user == user))
            if already.first() is not None:
                await s.rollback()
                return None, None
            s.add(Vote(approval_id=approval_id, user=user, grant_for=grant_for))
            await s.flush()
            count = int(
                (
                    await s.exec(
                        select(func.count()).select_from(Vote).where(Vote.approval_id == approval_id)
                    )
                ).one()
            )
            row = None
            if count >= quorum:
                voters = (
                    await s.exec(
                        select(Vote.user).where(Vote.approval_id == approval_id).order_by(col(Vote.at))
                    )
                ).all()
                granted = None
                if grant is not None:
                    durations = (
                        await s.exec(select(Vote.grant_for).where(Vote.approval_id == approval_id))
                    ).all()
                    granted = grant(list(voters), list(durations))
                    if granted is not None:
                        approve_values["grant_id"] = granted.id
                result = await s.exec(
                    update(ApprovalRow)
                    .where(col(ApprovalRow.id) == approval_id, col(ApprovalRow.status) == PENDING)
                    .values(decided_by=",".join(voters), **approve_values)
                    .returning(ApprovalRow)
                )
                row = result.scalars().first()
                if row is not None and granted is not None:
                    s.add(GrantRow(**_fields(granted)))
                if row is not None and self.is_postgres:
                    await s.exec(text("SELECT pg_notify('signoff_decided', :id)").bindparams(id=approval_id))
            await s.commit()
            return count, _optional(Approval, row)

    async def voters(self, approval_id: str) -> list[str]:
        async with self.sessions() as s:
            rows = await s.exec(
                select(Vote.user).where(Vote.approval_id == approval_id).order_by(col(Vote.at))
            )
            return list(rows.all())

    async def latest_for(self, identity: str, tool: str, args_hash: str) -> Approval | None:
        """The newest approval for exactly this identity, tool and arguments (pending mode's call-again)."""
        async with self.sessions() as s:
            q = (
                select(ApprovalRow)
                .where(
                    ApprovalRow.identity == identity,
                    ApprovalRow.tool == tool,
                    ApprovalRow.args_hash == args_hash,
                )
                .order_by(col(ApprovalRow.created_at).desc())
                .limit(1)
            )
            return _optional(Approval, (await s.exec(q)).first())

    async def transition_granting(
        self, approval_id: str, from_status: str, to_status: str, grant: Grant, **values: Any
    ) -> Approval | None:
        """`transition` that, when it wins, also creates `grant` — in one transaction, so a grant never
        exists for a request someone else decided differently."""
        async with self._writing(), self.engine.begin() as conn:
            row = await self._move(
                conn, approval_id, [from_status], status=to_status, grant_id=grant.id, **values
            )
            if row is not None:
                await conn.execute(insert(GrantRow.__table__).values(**_fields(grant)))  # type: ignore[attr-defined]
            return _approval_or_none(row)

    # -- grants ------------------------------------------------------------------------------

    async def live_grant(
        self, identity: str, tool: str, rule: str, values_hash: str, now: datetime, longest: float
    ) -> Grant | None:
        """A grant covering this call now: not revoked, not expired, and no older than the rule's
        current `max` (a policy that shortened it shortens the grants it gave)."""
        async with self.sessions() as s:
            q = (
                select(GrantRow)
                .where(
                    GrantRow.identity == identity,
                    GrantRow.tool == tool,
                    GrantRow.values_hash == values_hash,
                    GrantRow.rule == rule,
                    col(GrantRow.revoked_at).is_(None),
                    col(GrantRow.expires_at) > now,
                    col(GrantRow.created_at) > now - timedelta(seconds=longest),
                )
                .order_by(col(GrantRow.expires_at).desc())
                .limit(1)
            )
            return _optional(Grant, (await s.exec(q)).first())

    async def grant(self, grant_id: str) -> Grant | None:
        async with self.sessions() as s:
            return _optional(Grant, await s.get(GrantRow, grant_id))

    async def grants(self, *, live_at: datetime | None = None, limit: int = 100) -> list[Grant]:
        """Grants, newest first; with `live_at`, only those neither revoked nor expired then."""
        async with self.sessions() as s:
            q = select(GrantRow).order_by(col(GrantRow.created_at).desc()).limit(limit)
            if live_at is not None:
                q = q.where(col(GrantRow.revoked_at).is_(None), col(GrantRow.expires_at) > live_at)
            return [_record(Grant, row) for row in (await s.exec(q)).all()]

    async def revoke_grant(self, grant_id: str, by: str, now: datetime) -> Grant | None:
        """End a live grant at once; None when it is unknown, already revoked or already expired."""
        async with self._writing(), self.sessions() as s:
            result = await s.exec(
                update(GrantRow)
                .where(
                    col(GrantRow.id) == grant_id,
                    col(GrantRow.revoked_at).is_(None),
                    col(GrantRow.expires_at) > now,
                )
                .values(revoked_at=now, revoked_by=by)
                .returning(GrantRow)
            )
            row = result.scalars().first()
            await s.commit()
            return _optional(Grant, row)

    async def expire_overdue(self, now: datetime | None = None) -> list[str]:
        """Expire every pending approval past its deadline; returns the ids this call expired."""
        now = now or utcnow()
        async with self._writing(), self.sessions() as s:
            rows = await s.exec(
                update(ApprovalRow)
                .where(col(ApprovalRow.status) == PENDING, col(ApprovalRow.expires_at) <= now)
                .values(status=EXPIRED, decided_at=now, decided_by="(timeout)")
                .returning(col(ApprovalRow.id))
            )
            ids = [r[0] for r in rows.all()]
            if ids and self.is_postgres:
                for approval_id in ids:
                    await s.exec(text("SELECT pg_notify('signoff_decided', :id)").bindparams(id=approval_id))
            await s.commit()
            return ids

    async def withdraw_orphans(self, live_instances: Sequence[str], reason: str) -> list[str]:
        """Withdraw held (hold-mode) pending approvals whose holding process is gone."""
        now = utcnow()
        async with self._writing(), self.sessions() as s:
            rows = await s.exec(
                update(ApprovalRow)
                .where(
                    # An approved hold request whose holder died before claiming it will never run either.
                    col(ApprovalRow.status).in_([PENDING, APPROVED]),
                    col(ApprovalRow.mode) == "hold",
                    col(ApprovalRow.holder).not_in(list(live_instances)),
                )
                .values(
                    status=WITHDRAWN,
                    decision_reason=reason,
                    # Keep who approved (and when) on a request that was approved before its holder died.
                    decided_at=case(
                        (col(ApprovalRow.status) == PENDING, now), else_=col(ApprovalRow.decided_at)
                    ),
                    decided_by=case(
                        (col(ApprovalRow.status) == PENDING, "(restart)"), else_=col(ApprovalRow.decided_by)
                    ),
                )
                .returning(col(ApprovalRow.id))
            )
            ids = [r[0] for r in rows.all()]
            await s.commit()
            return ids

    async def decided_since(self, holder: str, since: datetime) -> list[tuple[str, str]]:
        """(id, status) of this holder's approvals decided since `since` (SQLite's cross-process wake-up)."""
        async with self.sessions() as s:
            rows = await s.exec(
                select(ApprovalRow.id, ApprovalRow.status).where(
                    ApprovalRow.holder == holder, col(ApprovalRow.decided_at) >= since
                )
            )
            return [(r[0], r[1]) for r in rows.all()]

    async def claim_escalation(self, approval_id: str, now: datetime) -> Approval | None:
        """Mark a pending, not yet escalated request as escalated; the row if this call did it.

        Atomic, so exactly one caller wins whichever replica's timer or sweep gets there first.
        """
        async with self._writing(), self.sessions() as s:
            result = await s.exec(
                update(ApprovalRow)
                .where(
                    col(ApprovalRow.id) == approval_id,
                    col(ApprovalRow.status) == PENDING,
                    col(ApprovalRow.escalated_at).is_(None),
                )
                .values(escalated_at=now)
                .returning(ApprovalRow)
            )
            row = result.scalars().first()
            await s.commit()
            return _optional(Approval, row)

    async def escalations_waiting(self, due_by: datetime | None = None) -> list[tuple[str, datetime]]:
        """(id, escalate_at) of pending requests that will escalate and have not yet (due by `due_by`)."""
        async with self.sessions() as s:
            q = select(ApprovalRow.id, ApprovalRow.escalate_at).where(
                ApprovalRow.status == PENDING,
                col(ApprovalRow.escalate_at).is_not(None),
                col(ApprovalRow.escalated_at).is_(None),
            )
            if due_by is not None:
                q = q.where(col(ApprovalRow.escalate_at) <= due_by)
            return [(r[0], r[1]) for r in (await s.exec(q)).all() if r[1] is not None]

    async def pending_ids(self) -> list[tuple[str, datetime]]:
        async with self.sessions() as s:
            rows = await s.exec(
                select(ApprovalRow.id, ApprovalRow.expires_at).where(ApprovalRow.status == PENDING)
            )
            return [(r[0], r[1]) for r in rows.all()]

    async def recent_decisions(
        self, identity: str, tool: str, *, exclude: str = "", limit: int = 5
    ) -> list[Approval]:
        """The latest decided requests of `identity` for `tool`, newest first (the request's history)."""
        async with self.sessions() as s:
            q = (
                select(ApprovalRow)
                .where(
                    ApprovalRow.identity == identity,
                    ApprovalRow.tool == tool,
                    ApprovalRow.status != PENDING,
                    ApprovalRow.id != exclude,
                )
                .order_by(col(ApprovalRow.created_at).desc())
                .limit(limit)
            )
            return [_record(Approval, row) for row in (await s.exec(q)).all()]

    # -- tool pins ---------------------------------------------------------------------------

    async def tool_pins(self, upstream: str | None = None) -> list[ToolPin]:
        async with self.sessions() as s:
            q = select(ToolPinRow).order_by(col(ToolPinRow.upstream), col(ToolPinRow.tool))
            if upstream is not None:
                q = q.where(ToolPinRow.upstream == upstream)
            return [_record(ToolPin, row) for row in (await s.exec(q)).all()]

    async def add_tool_pins(self, pins: Sequence[ToolPin]) -> None:
        """Pin tools seen for the first time; a pin another process wrote meanwhile stays as it is."""
        # In one order whoever inserts: two replicas inserting the same keys in opposite orders
        # deadlock on PostgreSQL.
        ordered = sorted(pins, key=lambda p: (p.upstream, p.tool))
        for _ in range(3):  # another replica pinned some meanwhile: theirs stand, the rest are ours
            if not ordered:
                return
            async with self._writing(), self.sessions() as s:
                with s.no_autoflush:
                    for pin in ordered:
                        if await s.get(ToolPinRow, (pin.upstream, pin.tool)) is None:
                            s.add(ToolPinRow(**_fields(pin)))
                try:
                    await s.commit()
                    return
                except IntegrityError:
                    await s.rollback()

    async def note_tool_change(
        self, upstream: str, tool: str, definition: dict[str, Any], digest: str
    ) -> bool:
        """Record that `tool` differs from its pin; True only for the first process to notice the change."""
        async with self._writing(), self.sessions() as s:
            result = await s.exec(
                update(ToolPinRow)
                .where(
                    col(ToolPinRow.upstream) == upstream,
                    col(ToolPinRow.tool) == tool,
                    col(ToolPinRow.digest) != digest,
                    or_(col(ToolPinRow.pending_digest).is_(None), col(ToolPinRow.pending_digest) != digest),
                )
                .values(pending=definition, pending_digest=digest, pending_at=utcnow())
            )
            await s.commit()
            return bool(result.rowcount)

    async def forget_tool_change(self, upstream: str, tool: str) -> None:
        """The upstream serves the pinned definition again: nothing is waiting for an admin."""
        async with self._writing(), self.sessions() as s:
            await s.exec(
                update(ToolPinRow)
                .where(
                    col(ToolPinRow.upstream) == upstream,
                    col(ToolPinRow.tool) == tool,
                    col(ToolPinRow.pending_digest).is_not(None),
                )
                .values(pending=None, pending_digest=None, pending_at=None)
            )
            await s.commit()

    async def accept_tool_change(self, upstream: str, tool: str, by: str, digest: str) -> ToolPin | None:
        """Pin the changed definition `digest`; None when that is not the change waiting for `tool`."""
        async with self._writing(), self.sessions() as s:
            result = await s.exec(
                update(ToolPinRow)
                .where(
                    col(ToolPinRow.upstream) == upstream,
                    col(ToolPinRow.tool) == tool,
                    col(ToolPinRow.pending_digest) == digest,
                )
                .values(
                    definition=col(ToolPinRow.pending),
                    digest=col(ToolPinRow.pending_digest),
                    pinned_at=utcnow(),
                    pinned_by=by,
                    pending=None,
                    pending_digest=None,
                    pending_at=None,
                )
                .returning(ToolPinRow)
            )
            row = result.scalars().first()
            await s.commit()
            return _optional(ToolPin, row)

    # -- page sign-ins -----------------------------------------------------------------------

    async def add_web_session(self, row: WebSession) -> None:
        async with self._writing(), self.sessions() as s:
            s.add(row)
            await s.commit()

    async def web_session(self, session_id: str) -> WebSession | None:
        async with self.sessions() as s:
            return await s.get(WebSession, session_id)

    async def touch_web_session(self, session_id: str, at: datetime) -> None:
        async with self._writing(), self.sessions() as s:
            await s.exec(update(WebSession).where(col(WebSession.id) == session_id).values(seen_at=at))
            await s.commit()

    async def drop_web_sessions(
        self, *, session_id: str | None = None, idle_since: datetime | None = None
    ) -> None:
        """End one sign-in, or every sign-in unused since `idle_since`."""
        async with self._writing(), self.sessions() as s:
            q = delete(WebSession)
            if session_id is not None:
                q = q.where(col(WebSession.id) == session_id)
            if idle_since is not None:
                q = q.where(col(WebSession.seen_at) < idle_since)
            await s.exec(q)
            await s.commit()

    # -- audit -------------------------------------------------------------------------------

    def audit_params(self, fields: dict[str, Any]) -> Row:
        """An audit record (the `audit` columns; those left out take their defaults) as a row to insert."""
        row = {**_AUDIT_DEFAULTS, **fields}
        if "at" not in row:
            row["at"] = utcnow()
        return self._audit.params(row)

    async def insert_audit(self, rows: Sequence[Row]) -> None:
        """Insert rows made by `audit_params` in one statement, at the driver (see `proxy.auditrows`)."""
        async with self._writing():
            await self._audit.insert(rows)

    async def audit(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        identity: str | None = None,
        tool: str | None = None,
        decision: str | None = None,
        outcome: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        async with self.sessions() as s:
            q = select(AuditRow)
            if since is not None:
                q = q.where(AuditRow.at >= since)
            if until is not None:
                q = q.where(AuditRow.at <= until)
            if identity:
                q = q.where(AuditRow.identity == identity)
            if tool:
                q = q.where(col(AuditRow.tool).like(tool.replace("*", "%")))
            if decision:
                q = q.where(AuditRow.decision == decision)
            if outcome:
                q = q.where(AuditRow.outcome == outcome)
            q = q.order_by(col(AuditRow.id).desc()).limit(limit)
            return [_record(AuditRecord, row) for row in reversed((await s.exec(q)).all())]

    async def decided_among(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        """(id, status) of the given approvals that are no longer pending."""
        out: list[tuple[str, str]] = []
        async with self.sessions() as s:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                rows = await s.exec(
                    select(ApprovalRow.id, ApprovalRow.status).where(
                        col(ApprovalRow.id).in_(chunk), ApprovalRow.status != PENDING
                    )
                )
                out += [(r[0], r[1]) for r in rows.all()]
        return out

    # -- shared rate limits (PostgreSQL) --------------------------------------------------------

    async def rate_acquire(self, key: str, limit: int, window: float, now: float) -> float | None:
        """Count a call under `key` unless `limit` calls happened in the last `window` seconds.

        Serialised per key by a transaction-scoped advisory lock, so concurrent replicas cannot both
        take the last slot. Returns None when counted, else the seconds until a slot frees.
        """
        async with self.sessions() as s:
            await s.exec(text("SELECT pg_advisory_xact_lock(hashtext(:k))").bindparams(k=key))
            await s.exec(
                text("DELETE FROM rate_event WHERE key = :k AND at <= :cut").bindparams(
                    k=key, cut=now - window
                )
            )
            row = (
                await s.exec(
                    text("SELECT count(*), min(at) FROM rate_event WHERE key = :k").bindparams(k=key)
                )
            ).one()
            if row[0] >= limit:
                await s.commit()
                return max(0.001, row[1] + window - now) if row[1] is not None else window
            s.add(RateEvent(key=key, at=now))
            await s.commit()
            return None

    async def rate_release(self, key: str) -> None:
        async with self.sessions() as s:
            await s.exec(
                text(
                    "DELETE FROM rate_event WHERE id = (SELECT id FROM rate_event WHERE key = :k "
                    "ORDER BY at DESC LIMIT 1)"
                ).bindparams(k=key)
            )
            await s.commit()

    # -- replicas ----------------------------------------------------------------------------

    async def heartbeat(
        self, instance: str, name: str, host: str = "", pid: int = 0, front: str = ""
    ) -> None:
        async with self._writing(), self.sessions() as s:
            row = await s.get(Replica, instance)
            if row is None:
                s.add(Replica(instance=instance, name=name, host=host, pid=pid, front=front))
            else:
                row.seen_at = utcnow()
                s.add(row)
            await s.commit()

    async def live_replicas(self, stale_after: float) -> list[Replica]:
        """Replicas whose heartbeat is fresher than `stale_after` seconds."""
        cutoff = utcnow() - timedelta(seconds=stale_after)
        async with self.sessions() as s:
            return list((await s.exec(select(Replica).where(Replica.seen_at >= cutoff))).all())

    async def forget_instance(self, instance: str) -> None:
        async with self._writing(), self.sessions() as s:
            row = await s.get(Replica, instance)
            if row is not None:
                await s.delete(row)
                await s.commit()


_AUDIT_DEFAULTS = {
    "session_id": "",
    "client_name": None,
    "upstream": "",
    "arguments": {},
    "enforced": True,
    "rule": None,
    "approval_id": None,
    "approvers": None,
    "reason": None,
    "latency_ms": 0.0,
    "outcome": "",
    "replica": "",
    "policy_revision": "",
    "grant_id": None,
    "edited_hash": None,
}
# executemany needs every row to name the same columns: the required ones and those with defaults.
_AUDIT_COLUMNS = ("at", "call_id", "identity", "tool", "decision", *_AUDIT_DEFAULTS)


def _fields(record: Approval | Grant | ToolPin) -> dict[str, Any]:
    """A record's fields by name, to build its row (shallow: the row is written and dropped)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _record(kind: type[R], row: SQLModel) -> R:
    """The plain record of a row (a table and its record have the same fields: tests/unit check it)."""
    return kind(**{f.name: getattr(row, f.name) for f in dataclasses.fields(kind)})  # type: ignore[arg-type]


def _optional(kind: type[R], row: SQLModel | None) -> R | None:
    return None if row is None else _record(kind, row)


_APPROVAL = ApprovalRow.__table__  # type: ignore[attr-defined]
_APPROVAL_FIELDS = tuple(f.name for f in dataclasses.fields(Approval))


def _approval_or_none(row: Any) -> Approval | None:
    """The record of a Core result row of the approval table (None for no row)."""
    return None if row is None else Approval(**{name: row[name] for name in _APPROVAL_FIELDS})


@contextlib.asynccontextmanager
async def _schema_lock(db: Path | None) -> Any:
    """Serialise schema changes between processes on one SQLite file (PostgreSQL uses an advisory lock).

    Several stdio gateways start at once on one machine; without this, two both find no table and
    the second's CREATE TABLE fails.
    """
    if db is None:
        yield
        return
    lock = db.with_name(db.name + ".lock")
    make_private(lock)
    fd = os.open(lock, os.O_RDWR)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=ON"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()
