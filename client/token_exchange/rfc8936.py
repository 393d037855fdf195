"""RFC 8936 poll-based SET delivery: the poll request (§2.2, §2.4) parsed strictly into a `PollRequest`, and the
response (§2.3). Members this version does not know are ignored; known ones of the wrong type are refused
with 400 `invalid_request` naming them (§2.5.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InvalidRequest

MAX_ACKS = 1000
MAX_JTI = 256
MAX_DESCRIPTION = 1024
_ABSENT: Any = object()  # a member not sent (null is sent, and refused as of the wrong type)


@dataclass(frozen=True, slots=True)
class SetError:
    """§2.4.3: why the receiver could not take a SET: an RFC 8935 §2.4 error code and a description."""

    err: str
    description: str


@dataclass(frozen=True, slots=True)
class PollRequest:
    """`max_events` None: no limit asked (§2.2); 0: acknowledge only. `return_immediately` False: long poll."""

    max_events: int | None = None
    return_immediately: bool = False
    ack: tuple[str, ...] = ()
    set_errs: Mapping[str, SetError] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> PollRequest:
        """§2.2: `maxEvents` a non-negative integer, `returnImmediately` a boolean, `ack` an array of `jti`
        strings, `setErrs` an object of `jti` → `{"err", "description"}`."""
        return cls(_max_events(document.get("maxEvents", _ABSENT)), _flag(document.get("returnImmediately", _ABSENT)),
                   _acks(document.get("ack", _ABSENT)), MappingProxyType(_set_errs(document.get("setErrs", _ABSENT))))


def _max_events(value: Any) -> int | None:
    if value is _ABSENT:
        return None
    if type(value) is not int or value < 0:
        raise InvalidRequest("maxEvents must be a non-negative integer")
    return value


def _flag(value: Any) -> bool:
    if value is _ABSENT:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest("returnImmediately must be true or false")
    return value


def _acks(value: Any) -> tuple[str, ...]:
    if value is _ABSENT:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ACKS:
        raise InvalidRequest(f"ack must be an array of at most {MAX_ACKS} jti strings")
    return tuple(_jti(item, "ack") for item in value)


def _set_errs(value: Any) -> dict[str, SetError]:
    if value is _ABSENT:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ACKS:
        raise InvalidRequest(f"setErrs must be an object of at most {MAX_ACKS} members")
    errors = {}
    for jti, error in value.items():
        if not isinstance(error, dict) or not isinstance(error.get("err"), str) or not error["err"]:
            raise InvalidRequest("each member of setErrs must be an object with an err string")
        description = error.get("description", "")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise InvalidRequest(f"a setErrs description must be a string of at most {MAX_DESCRIPTION} characters")
        errors[_jti(jti, "setErrs")] = SetError(error["err"][:64], description)
    return errors


def _jti(value: Any, member: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_JTI:
        raise InvalidRequest(f"{member} must name SETs by their jti: strings of 1 to {MAX_JTI} characters")
    return value


def response(sets: Mapping[str, str], *, more_available: bool) -> dict[str, Any]:
    """§2.3: `sets` (empty when nothing is waiting) and `moreAvailable`."""
    return {"sets": dict(sets), "moreAvailable": more_available}
