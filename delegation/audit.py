"""The audit trail: one typed record for every decision, granted or refused, with its reasons."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who asked, for whom, for what, the outcome and why. Never a token: at most its `jti` or digest."""

    decision_id: str
    at: int
    action: str
    outcome: str  # "granted" | "refused"
    error: str | None = None
    agent: str | None = None
    user_issuer: str | None = None
    user_subject: str | None = None
    audience: str | None = None
    requested_scope: str | None = None
    granted_scope: str | None = None
    reasons: tuple[str, ...] = field(default=())
    policy_revision: str | None = None
    jti: str | None = None
    task_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
