"""The plain records and the tables the store keeps them in."""

from __future__ import annotations

from dataclasses import fields

from proxy.records import Approval, AuditRecord, Grant, ToolPin
from proxy.store import ApprovalRow, AuditRow, GrantRow, ToolPinRow


def test_the_records_and_their_tables_have_the_same_fields() -> None:
    # The store copies a row into its record field by field: a column added to one and not the
    # other would be silently dropped (or fail only when that row is read).
    pairs = ((Approval, ApprovalRow), (Grant, GrantRow), (ToolPin, ToolPinRow), (AuditRecord, AuditRow))
    for record, row in pairs:
        assert {f.name for f in fields(record)} == set(row.model_fields), record.__name__
