"""The audit trail: one typed record for every decision, granted or refused, with its reasons."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from token_exchange.rfc9068 import new_id


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
    agent_domain: str | None = None  # the agent's trust domain or workload issuer (its id is unique within it)
    policy_engine: str | None = None  # the decision log (docs/policy.md): which engine decided, how fast,
    policy_latency_us: int | None = None  # on what input and with what result (JSON text, never a token)
    policy_input: str | None = None
    policy_result: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: reasons a list, the decision log's input and result objects."""
        plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        for name in _JSON_FIELDS:
            if isinstance(text := plain[name], str):
                plain[name] = json.loads(text)
        return plain


_JSON_FIELDS = ("policy_input", "policy_result")


@dataclass(slots=True)
class AuditDraft:
    """The facts of one token request, filled in as each step learns them; sealed into an `AuditEvent`
    when the request is granted or refused."""

    at: int
    policy_revision: str | None
    decision_id: str = field(default_factory=new_id)
    action: str = "exchange"
    agent: str | None = None
    user_issuer: str | None = None
    user_subject: str | None = None
    audience: str | None = None
    requested_scope: str | None = None
    granted_scope: str | None = None
    reasons: tuple[str, ...] = ()
    jti: str | None = None
    task_id: str | None = None
    agent_domain: str | None = None
    policy_engine: str | None = None
    policy_latency_us: int | None = None
    policy_input: str | None = None
    policy_result: str | None = None

    def granted(self, *, scope: str, jti: str, task_id: str, audience: str) -> AuditEvent:
        self.granted_scope, self.jti, self.task_id, self.audience = scope, jti, task_id, audience
        return self._seal("granted", None, self.reasons)

    def refused(self, error: str, description: str) -> AuditEvent:
        return self._seal("refused", error, self.reasons or (description,))

    def _seal(self, outcome: str, error: str | None, reasons: tuple[str, ...]) -> AuditEvent:
        facts = {name: getattr(self, name) for name in _DRAFTED}
        return AuditEvent(outcome=outcome, error=error, reasons=reasons, **facts)


_DRAFTED = tuple(name for name in AuditEvent.__dataclass_fields__ if name not in ("outcome", "error", "reasons"))
"""The event's fields a draft holds under the same names (a field added to one and not the other fails
the first seal, in every test that audits)."""
