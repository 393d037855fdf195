"""What Deputy tells SSF receivers (CAEP 1.0): the SETs one revocation-feed event becomes, and the SSF control
events (verification, stream updated).

- Each task a revocation ended (the one named and each descendant the cascade reached): `session-revoked`,
  subject the task as a session of its user, `txn` the task whose ending started the cascade. Every token
  Deputy mints carries its task id in `txn`, so a receiver that marks the session revoked refuses them all.
- An access token revoked on its own (RFC 7009): `session-revoked` about that token (`jwt_id`), `txn` its task.
- An admin's revocation of an agent, a domain of agents or a user: first `credential-change` (`revoke`) about
  the credential, then the `session-revoked` of the tasks it ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from token_exchange.rfc9068 import new_id
from token_exchange.ssf import (
    CREDENTIAL_CHANGE,
    SESSION_REVOKED,
    STREAM_UPDATED,
    VERIFICATION,
    SubjectId,
    complex_subject,
    credential_change,
    iss_sub,
    jwt_id,
    opaque,
    session_revoked,
    stream_updated,
    uri,
    verification,
)

from ..records import Party
from ..tasks import EndedTask, Revocation

SPIFFE_JWT_SVID, WORKLOAD_TOKEN, USER_TOKEN = "spiffe-jwt-svid", "workload-token", "user-token"
"""Deputy's `credential_type` values (CAEP §3.3 allows values both sides agree on; none of CAEP's fits): a
SPIFFE JWT-SVID, a Kubernetes or OIDC workload token, a user's identity-provider tokens."""


@dataclass(frozen=True, slots=True)
class SetDraft:
    """One SET to sign: whom it is about, its one event and `txn`."""

    subject: SubjectId
    event: str
    payload: Mapping[str, Any]
    txn: str


def revocation_drafts(revocation: Revocation, *, issuer: str, task_of_token: Mapping[str, str]) -> list[SetDraft]:
    """The SETs of one feed event, as narrowed for a stream. `task_of_token` gives the task of each token
    revoked on its own (an event without tasks), for its `txn`."""
    drafts = [] if revocation.party is None else [_credential_draft(revocation.party, revocation)]
    drafts += [_task_draft(task, revocation) for task in revocation.tasks]
    if not revocation.task_ids:  # tokens revoked on their own (RFC 7009)
        fallback = f"revocation-{revocation.seq}"
        drafts += [SetDraft(jwt_id(issuer, jti), SESSION_REVOKED, _session_payload(revocation),
                            task_of_token.get(jti, fallback)) for jti in revocation.jtis]
    return drafts


def _session_payload(revocation: Revocation) -> dict[str, Any]:
    return session_revoked(at=revocation.at, initiator=revocation.initiator, why=revocation.reason)


def _task_draft(task: EndedTask, revocation: Revocation) -> SetDraft:
    """SSF §3.3 complex subject: the task as a session, and its user (a receiver that only added the user
    still matches, §8.1.3.1)."""
    members = {"session": opaque(task.id)}
    if task.user_issuer and task.user_subject:
        members["user"] = iss_sub(task.user_issuer, task.user_subject)
    return SetDraft(complex_subject(**members), SESSION_REVOKED, _session_payload(revocation), task.cause)


def _credential_draft(party: Party, revocation: Revocation) -> SetDraft:
    kind, subject = credential(party)
    payload = credential_change(credential_type=kind, at=revocation.at, why=revocation.reason)
    return SetDraft(subject, CREDENTIAL_CHANGE, payload, f"revocation-{revocation.seq}")


def credential(party: Party) -> tuple[str, SubjectId]:
    """The `credential_type` and subject of what an admin revoked: a SPIFFE agent or trust domain (by URI), a
    Kubernetes or OIDC agent (by issuer and id) or workload issuer (by URI), a user at an issuer, or a user
    at every issuer (opaque: its `sub`)."""
    if party.kind == "agent":
        if party.id.startswith("spiffe://"):
            return SPIFFE_JWT_SVID, uri(party.id)
        return WORKLOAD_TOKEN, iss_sub(party.domain, party.id) if party.domain else opaque(party.id)
    if party.kind == "domain":
        return (WORKLOAD_TOKEN, uri(party.id)) if "://" in party.id else (SPIFFE_JWT_SVID, uri(f"spiffe://{party.id}"))
    return USER_TOKEN, iss_sub(party.domain, party.id) if party.domain else opaque(party.id)


def verification_draft(stream_id: str, state: str | None) -> SetDraft:
    """SSF §8.1.4.1: about the stream itself."""
    return SetDraft(opaque(stream_id), VERIFICATION, verification(state), new_id())


def stream_updated_draft(stream_id: str, status: str, why: str | None) -> SetDraft:
    """SSF §8.1.5: a status the transmitter changed."""
    return SetDraft(opaque(stream_id), STREAM_UPDATED, stream_updated(status, why), new_id())


CONTROL_EVENTS = frozenset({VERIFICATION, STREAM_UPDATED})
"""Delivered whatever the stream's status (SSF §8.1.2.1 holds back the events about subjects only)."""
