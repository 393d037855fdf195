"""What a validated SET means for Deputy's tokens (docs/resource-servers.md, "SSF"; CAEP 1.0 §3.1, §3.3).

- `session-revoked` naming a session (`complex`, `session` an `opaque` id): that task id is revoked, so
  every token whose `txn` is it is refused. Naming a token (`jwt_id` with Deputy's issuer): that jti.
  Naming a user and no session (a simple subject, or `complex` without `session`): every session of the
  user, so the user's tokens issued at or before `event_timestamp` (SSF §8.1.3.1: a subject matches every
  session it does not narrow).
- `credential-change` with `change_type` `revoke` or `delete`: the credential's holder is cut off, so its
  tokens issued at or before `event_timestamp` are refused (Deputy also ends every task the credential
  reaches, with a session-revoked each; the cutoff keeps the verifier safe on its own). An agent is named
  by its SPIFFE ID, a trust domain by `spiffe://<domain>`, a Kubernetes or OIDC agent by `iss_sub`, a
  workload issuer by its `uri`, a user by `iss_sub` or `opaque` (any issuer). Deputy's access tokens do not
  name the user's issuer, so a user cutoff applies to that `sub` at every issuer: broader, never narrower.
  `create` and `update` revoke nothing.
- `verification` and `stream-updated` must name this stream (`opaque`, its id) and go to the receiver.
- Anything else, and subjects of other formats, change nothing (SSF §4.2.3, §9.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .caep import CREDENTIAL_CHANGE, SESSION_REVOKED, STREAM_UPDATED, VERIFICATION
from .revocations import Cutoff
from .sets import ReceivedSet, SetRejected

PROCESSED_MEMBERS = frozenset({"session", "user"})  # of a complex subject (SSF §3.6)
AGENT_CREDENTIAL, WORKLOAD_CREDENTIAL, USER_CREDENTIAL = "spiffe-jwt-svid", "workload-token", "user-token"


@dataclass(frozen=True, slots=True)
class Revoke:
    jtis: frozenset[str] = frozenset()
    task_ids: frozenset[str] = frozenset()
    cutoffs: Mapping[Cutoff, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verified:
    state: str | None


@dataclass(frozen=True, slots=True)
class StatusChanged:
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Ignored:
    why: str


Effect = Revoke | Verified | StatusChanged | Ignored


def effect_of(received: ReceivedSet, *, issuer: str, stream_id: str,
              critical: frozenset[str] = frozenset()) -> Effect:
    """What `received` asks of the receiver of stream `stream_id`; raises SetRejected for a stream event
    about another stream. `critical` is the transmitter's `critical_subject_members` (SSF §3.6, §7.1)."""
    subject, event = received.subject, received.event
    if received.event_type in (VERIFICATION, STREAM_UPDATED):
        if subject != {"format": "opaque", "id": stream_id}:
            raise SetRejected("invalid_request", "a stream event must name this stream (SSF section 8.1.4.1)")
        if received.event_type == VERIFICATION:
            return Verified(event.get("state"))
        return StatusChanged(event["status"], event.get("reason"))
    if subject.get("format") == "complex" and (critical & subject.keys()) - PROCESSED_MEMBERS:
        return Ignored("a critical subject member is not processed here (SSF section 3.6)")
    at = event.get("event_timestamp", received.iat)
    if received.event_type == SESSION_REVOKED:
        return _session_revoked(subject, issuer=issuer, at=at)
    if received.event_type == CREDENTIAL_CHANGE:
        if event["change_type"] not in ("revoke", "delete"):
            return Ignored(f"credential {event['change_type']} revokes nothing")
        return _cutoff(_credential_holders(subject, event["credential_type"]), at)
    return Ignored("event type not acted on")


def _session_revoked(subject: Mapping[str, Any], *, issuer: str, at: float) -> Effect:
    if subject.get("format") == "jwt_id":
        if subject["iss"] != issuer:
            return Ignored("a token of another issuer")
        return Revoke(jtis=frozenset({subject["jti"]}))
    if subject.get("format") == "complex":
        if (session := subject.get("session")) is not None:
            if session.get("format") != "opaque":
                return Ignored("a session not named by an opaque task id")
            return Revoke(task_ids=frozenset({session["id"]}))
        subject = subject.get("user", {})
    return _cutoff(_users(subject), at)


def _credential_holders(subject: Mapping[str, Any], credential_type: str) -> list[Cutoff]:
    kind = subject.get("format")
    if kind == "uri" and subject["uri"].startswith("spiffe://"):
        domain, _, path = subject["uri"].removeprefix("spiffe://").partition("/")
        return [Cutoff("agent", subject["uri"]) if path else Cutoff("trust_domain", domain)]
    if kind == "uri":
        return [Cutoff("agent_issuer", subject["uri"])]
    agents = [Cutoff("agent", subject["sub"], subject["iss"])] if kind == "iss_sub" else []
    if credential_type == WORKLOAD_CREDENTIAL:
        return agents
    if credential_type == USER_CREDENTIAL:
        return _users(subject)
    return agents + _users(subject)  # a credential type not Deputy's: whichever it may name


def _users(subject: Mapping[str, Any]) -> list[Cutoff]:
    kind = subject.get("format")
    if kind == "iss_sub":
        return [Cutoff("user", subject["sub"])]
    if kind == "opaque":
        return [Cutoff("user", subject["id"])]
    if kind == "email":
        return [Cutoff("user", subject["email"])]
    return []


def _cutoff(parties: list[Cutoff], at: float) -> Effect:
    if not parties:
        return Ignored("a subject Deputy's tokens do not name")
    return Revoke(cutoffs=dict.fromkeys(parties, at))
