"""The token endpoint (RFC 6749 §3.2) as request → dispatch → flow → response, fosite's shape.

The gateway hands in a `TokenRequest`; the endpoint reads `grant_type`, lets the grant parse its form,
and gives the request to the first of the grant's flows that can handle it. Every outcome, granted or
refused, is one audit event (the flow writes a grant's with what it issued; the endpoint a refusal's),
then told to the `Observer` (the metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from token_exchange.errors import InvalidRequest, OAuthError, UnsupportedGrantType
from token_exchange.rfc6749 import FormParams, TokenRequest
from token_exchange.rfc8693 import ExchangeRequest, TokenResponse

from .audit import AuditDraft
from .observe import NoObserver, Observer
from .policy import PolicyEngine
from .records import StoreError
from .store import AuditLog

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlowContext:
    """One token request on its way through a flow: as received, as parsed, its time and its audit facts."""

    request: TokenRequest
    exchange: ExchangeRequest
    now: int
    audit: AuditDraft


class TokenFlow(Protocol):
    """One way to answer a token request (fosite's TokenEndpointHandler): it says whether it can, then does."""

    action: ClassVar[str]  # the audit action: exchange, open_task, delegate

    def can_handle(self, exchange: ExchangeRequest) -> bool: ...

    async def handle(self, ctx: FlowContext) -> TokenResponse: ...


@dataclass(frozen=True, slots=True)
class Grant:
    """A `grant_type` the endpoint serves: how its form is parsed, and its flows in the order they are tried."""

    grant_type: str
    parse: Callable[[FormParams], ExchangeRequest]
    flows: tuple[TokenFlow, ...]


class TokenEndpoint:
    def __init__(self, grants: Sequence[Grant], *, audit: AuditLog, policy: PolicyEngine,
                 observer: Observer | None = None) -> None:
        self._grants = {grant.grant_type: grant for grant in grants}
        self._audit = audit
        self._policy = policy
        self._observer = observer or NoObserver()

    @property
    def grant_types(self) -> list[str]:
        """For `grant_types_supported` (RFC 8414 §2)."""
        return list(self._grants)

    async def handle(self, request: TokenRequest, *, now: int) -> TokenResponse:
        """Dispatch one request; every refusal raises its OAuthError after it is audited."""
        draft = AuditDraft(at=now, policy_revision=self._policy.revision)
        try:
            form = FormParams.parse(request.pairs)
            grant = self._grant(form)
            exchange = grant.parse(form)
            draft.requested_scope = str(exchange.scope)
            draft.audience = " ".join(t.value for t in exchange.targets)[:2048] or None
            flow = next((f for f in grant.flows if f.can_handle(exchange)), None)
            if flow is None:
                raise InvalidRequest("no flow accepts this subject_token_type and requested_token_type")
            draft.action = flow.action
            return await flow.handle(FlowContext(request, exchange, now, draft))
        except OAuthError as exc:
            await self._audit_refusal(exc, draft)
            raise

    async def refuse(self, exc: OAuthError, *, now: int) -> None:
        """Audit a refusal that happened before the form could be read (size, type, client auth)."""
        await self._audit_refusal(exc, AuditDraft(at=now, policy_revision=self._policy.revision))

    def _grant(self, form: FormParams) -> Grant:
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise InvalidRequest("grant_type is required")
        grant = self._grants.get(grant_type)
        if grant is None:
            raise UnsupportedGrantType(f"only {', '.join(self._grants)} is supported")
        return grant

    async def _audit_refusal(self, exc: OAuthError, draft: AuditDraft) -> None:
        event = draft.refused(exc.error, exc.description)
        if log.isEnabledFor(logging.INFO):
            log.info(f"{draft.action}.refused", extra={"decision": event.as_dict()})
        try:
            await self._audit.append_audit(event)
        except StoreError as error:
            log.error("audit.store_failed", extra={"error": str(error)})
            self._observer.store_failed("append_audit")
        self._observer.decided(event)
