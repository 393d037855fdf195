"""Event types a Security Event Token may carry, and their payloads: CAEP 1.0 §2-§3, SSF 1.0 §8.1.4, §8.1.5.

`check_event` refuses a payload that breaks its type's definition (a REQUIRED claim missing, a value
outside its enumeration). Claims a type does not define are ignored (SSF §4.2.3), and so is an event
type not known here: it passes unchecked, and the receiver acts on neither.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"
SESSION_REVOKED = CAEP + "session-revoked"
CREDENTIAL_CHANGE = CAEP + "credential-change"
VERIFICATION = SSF + "verification"
STREAM_UPDATED = SSF + "stream-updated"

INITIATING_ENTITIES = frozenset({"admin", "user", "policy", "system"})  # CAEP §2
CHANGE_TYPES = frozenset({"create", "revoke", "update", "delete"})  # CAEP §3.3
STREAM_STATUSES = frozenset({"enabled", "paused", "disabled"})  # SSF §8.1.2.1
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*")  # BCP 47, in its general shape


class EventError(ValueError):
    """An event payload that breaks its type's definition; the message names the claim."""


def check_event(event_type: str, payload: Mapping[str, Any]) -> None:
    """Check `payload` against the definition of `event_type`, when that type is known here."""
    if event_type.startswith(CAEP):
        _check_common(payload)
    if (check := _CHECKS.get(event_type)) is not None:
        check(payload)


def _check_common(payload: Mapping[str, Any]) -> None:
    """CAEP §2: the optional claims every CAEP event may carry."""
    timestamp = payload.get("event_timestamp", 0)
    if type(timestamp) not in (int, float) or timestamp < 0:
        raise EventError("event_timestamp must be a number of seconds since the epoch (CAEP section 2)")
    if payload.get("initiating_entity", "admin") not in INITIATING_ENTITIES:
        raise EventError("initiating_entity must be admin, user, policy or system (CAEP section 2)")
    for name in ("reason_admin", "reason_user"):
        reason = payload.get(name, {"en": "-"})
        if (not isinstance(reason, dict) or not reason
                or not all(_LANGUAGE_TAG.fullmatch(tag) and isinstance(text, str) for tag, text in reason.items())):
            raise EventError(f"{name} must map language tags to messages (CAEP section 2)")


def _one_of(payload: Mapping[str, Any], name: str, allowed: frozenset[str], section: str, *,
            required: bool = True) -> None:
    if name not in payload and not required:
        return
    if payload.get(name) not in allowed:
        raise EventError(f"{name} must be one of {', '.join(sorted(allowed))} ({section})")


def _text(payload: Mapping[str, Any], name: str, section: str, *, required: bool = True) -> None:
    if name not in payload and not required:
        return
    if not isinstance(payload.get(name), str) or not payload[name]:
        raise EventError(f"{name} must be a non-empty string ({section})")


def _credential_change(payload: Mapping[str, Any]) -> None:
    _text(payload, "credential_type", "CAEP section 3.3")
    _one_of(payload, "change_type", CHANGE_TYPES, "CAEP section 3.3")
    for name in ("friendly_name", "x509_issuer", "x509_serial", "fido2_aaguid"):
        _text(payload, name, "CAEP section 3.3", required=False)


def _token_claims_change(payload: Mapping[str, Any]) -> None:
    if not isinstance(payload.get("claims"), dict) or not payload["claims"]:
        raise EventError("claims must be an object of the changed claims (CAEP section 3.2)")


def _assurance_level_change(payload: Mapping[str, Any]) -> None:
    for name in ("namespace", "current_level"):
        _text(payload, name, "CAEP section 3.4")
    _text(payload, "previous_level", "CAEP section 3.4", required=False)
    _one_of(payload, "change_direction", frozenset({"increase", "decrease"}), "CAEP section 3.4", required=False)


def _device_compliance_change(payload: Mapping[str, Any]) -> None:
    for name in ("previous_status", "current_status"):
        _one_of(payload, name, frozenset({"compliant", "not-compliant"}), "CAEP section 3.5")


def _verification(payload: Mapping[str, Any]) -> None:
    _text(payload, "state", "SSF section 8.1.4.1", required=False)


def _stream_updated(payload: Mapping[str, Any]) -> None:
    _one_of(payload, "status", STREAM_STATUSES, "SSF section 8.1.5")
    _text(payload, "reason", "SSF section 8.1.5", required=False)


_CHECKS: Mapping[str, Callable[[Mapping[str, Any]], None]] = {
    CREDENTIAL_CHANGE: _credential_change,
    CAEP + "token-claims-change": _token_claims_change,
    CAEP + "assurance-level-change": _assurance_level_change,
    CAEP + "device-compliance-change": _device_compliance_change,
    VERIFICATION: _verification,
    STREAM_UPDATED: _stream_updated,
}
