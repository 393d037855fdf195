"""The PostgreSQL store's rows: the domain's records as statement parameters, and back from `dict_row`s."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from psycopg.types.json import Jsonb

from token_exchange.actors import ActorRef
from token_exchange.scope import Scope
from token_exchange.txn_tokens import TaskContext

from ..audit import AuditEvent
from ..records import IssuedTokenRecord
from ..tasks import Task

AUDIT_COLUMNS = tuple(AuditEvent.__dataclass_fields__)
TOKEN_COLUMNS = tuple(IssuedTokenRecord.__dataclass_fields__)
TASK_COLUMNS = ("id", "parent_id", "root_id", "chain", "agent", "agent_domain", "user_issuer", "user_subject",
                "scope", "audiences", "purpose", "context", "created_at", "deadline", "implicit", "state", "ended_at")


def row_insert(table: str, columns: tuple[str, ...], document: str, source: str = "") -> str:
    """INSERT of a row given as one JSON object, `document` (a parameter, or a member of a batch's row): psycopg
    caches the parsing of statements of at most 50 parameters, and dumps one JSON document faster than a
    parameter per column."""
    return (f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(f'x.{c}' for c in columns)}"
            f" FROM {source}jsonb_populate_record(NULL::{table}, {document}) AS x")


def written_records(event: AuditEvent, *, token: IssuedTokenRecord | None = None, task: Task | None = None
                    ) -> dict[str, dict[str, Any]]:
    """What a checked write inserts (`postgres_writes.checked_row`): the audit event, and the token and the
    task it brings, if any."""
    return {"audit": audit_row(event), **({"token": token_row(token)} if token is not None else {}),
            **({"task": task_row(task)} if task is not None else {})}


def audit_params(event: AuditEvent) -> dict[str, Any]:
    return {"audit": Jsonb(audit_row(event))}


def audit_row(event: AuditEvent) -> dict[str, Any]:
    return {c: list(event.reasons) if c == "reasons" else getattr(event, c) for c in AUDIT_COLUMNS}


def token_row(token: IssuedTokenRecord) -> dict[str, Any]:
    return {c: getattr(token, c) for c in TOKEN_COLUMNS}


def task_row(task: Task) -> dict[str, Any]:
    context = task.context
    return {
        "id": task.id, "parent_id": task.parent_id, "root_id": task.root_id,
        "chain": [{"id": a.id, "kind": a.kind, "domain": a.domain} for a in task.chain],
        "agent": task.agent.id, "agent_domain": task.agent.domain, "user_issuer": task.user_issuer,
        "user_subject": task.user_subject, "scope": str(task.scope), "audiences": list(task.audiences),
        "purpose": task.purpose,
        "context": {"details": dict(context.details), "environment": dict(context.environment)}
        if context.details or context.environment else None,
        "created_at": task.created_at, "deadline": task.deadline, "implicit": task.implicit, "state": task.state,
        "ended_at": task.ended_at,
    }


def audit_event(row: Mapping[str, Any]) -> AuditEvent:
    return AuditEvent(**{**{c: row[c] for c in AUDIT_COLUMNS}, "reasons": tuple(row["reasons"])})


def token_record(row: Mapping[str, Any]) -> IssuedTokenRecord:
    return IssuedTokenRecord(*(row[c] for c in TOKEN_COLUMNS))


def task(row: Mapping[str, Any]) -> Task:
    context = row["context"] or {}
    return Task(
        id=row["id"], parent_id=row["parent_id"], root_id=row["root_id"],
        chain=tuple(ActorRef(a["id"], a["kind"], a["domain"]) for a in row["chain"]),
        user_issuer=row["user_issuer"], user_subject=row["user_subject"], scope=Scope.from_claim(row["scope"]),
        audiences=tuple(row["audiences"]), created_at=row["created_at"], deadline=row["deadline"],
        context=TaskContext(row["purpose"], MappingProxyType(context.get("details", {})),
                            MappingProxyType(context.get("environment", {}))),
        implicit=row["implicit"], state=row["state"], ended_at=row["ended_at"],
    )
