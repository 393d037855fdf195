"""RFC 9711 (Entity Attestation Token) claims in a JSON token: which ones reach the policy as posture, and
the shapes they must have (the RFC's JSON CDDL, §4; binary values as base64url, §7.2.2).

Posture is an allow-list: the EAT claims by their JSON names (§4) and Deputy's `image_digest`; every other
claim of an attestation (its `cnf` above all) is ignored, as unknown claims must be (§4). A listed claim
with a malformed value refuses the attestation, with a reason that names the claim and the rule; its
value is never shown. Values are already bounded by `jws.check_claim_values` (types, depth, 64-bit
integers) and by the token's size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from .jws import TokenError

IMAGE_DIGEST = "image_digest"
"""Deputy's claim for the OCI image the workload runs: `sha256:` and 64 lowercase hex digits (the OCI
image spec's digest of its manifest), e.g. as a container runtime or an attester's verifier reports it."""

DEBUG_STATES = ("enabled", "disabled", "disabled-since-boot", "disabled-permanently", "disabled-fully-and-permanently")
"""§4.2.9: `dbgstat` in a JSON token is one of these strings (the CBOR integers 0-4 are not JSON values)."""

MEASUREMENT_RESULTS = ("success", "fail", "not-run", "absent")  # §4.2.17
NESTED_TOKEN_TYPES = ("JWT", "CBOR", "BUNDLE", "DIGEST")  # §4.2.18.3 (JSON-Selector)
MAX_SUBMODULE_DEPTH = 4
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))*")
_LOCATION_NUMBERS = ("latitude", "longitude", "altitude", "accuracy", "altitude-accuracy", "heading", "speed")
_NEEDS = (("hwmodel", "oemid", "4.2.4"), ("hwversion", "hwmodel", "4.2.5"), ("swversion", "swname", "4.2.7"),
          ("oemboot", "oemid", "4.2.8"))

Check = Callable[[Any], str | None]


def posture_claims(claims: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """The allow-listed claims of one claims-set (a token's, or a submodule's, §4.2.18), each checked;
    raises TokenError naming the first malformed one."""
    kept: dict[str, Any] = {}
    for name, check in CLAIMS.items():
        if name in claims:
            if (problem := check(claims[name])) is not None:
                raise TokenError(f"{name} claim {problem}")
            kept[name] = claims[name]
    if "submods" in claims:
        kept["submods"] = _submodules(claims["submods"], depth)
    for claim, needed, section in _NEEDS:
        if claim in kept and needed not in kept:
            raise TokenError(f"{claim} claim needs an {needed} claim (RFC 9711 section {section})")
    return kept


def _submodules(value: Any, depth: int) -> dict[str, Any]:
    """§4.2.18: named submodules, each a claims-set (kept through the same allow-list) or a nested token
    ([type, token]), which Deputy has not verified: the policy gets its type and the SHA-256 of its text,
    never the token itself (it would reach the audit trail and the decision log)."""
    if not isinstance(value, dict) or not value:
        raise TokenError("submods claim is not a non-empty object (RFC 9711 section 4.2.18)")
    if depth >= MAX_SUBMODULE_DEPTH:
        raise TokenError(f"submods claim nests more than {MAX_SUBMODULE_DEPTH} levels of submodules")
    kept: dict[str, Any] = {}
    for name, submodule in value.items():
        if isinstance(submodule, dict):
            kept[name] = posture_claims(submodule, depth + 1)
        elif _pair(submodule, lambda t: t in NESTED_TOKEN_TYPES, _is_text):
            kept[name] = {"nested_token": submodule[0],
                          "sha256": hashlib.sha256(submodule[1].encode()).hexdigest()}
        else:
            raise TokenError("submods claim holds a submodule that is neither a claims-set nor a nested token "
                             "(RFC 9711 section 4.2.18)")
    return kept


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _decoded_size(value: Any) -> int | None:
    """The byte length of base64url text without padding (RFC 9711 §7.2.2), or None if it is not that."""
    if not isinstance(value, str) or not _BASE64URL.fullmatch(value) or len(value) % 4 == 1:
        return None
    try:
        return len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError):
        return None


def _pair(value: Any, first: Callable[[Any], bool], second: Callable[[Any], bool], *, optional: bool = False) -> bool:
    """A JSON array [first, second], or [first] alone when the second element is optional."""
    if not isinstance(value, list) or not (1 if optional else 2) <= len(value) <= 2:
        return False
    return first(value[0]) and (len(value) == 1 or second(value[1]))


def _non_empty_list(value: Any, item: Callable[[Any], bool]) -> bool:
    return isinstance(value, list) and bool(value) and all(item(v) for v in value)


def _nonce(value: Any) -> str | None:
    def one(v: Any) -> bool:
        return isinstance(v, str) and 8 <= len(v.encode()) <= 88

    if one(value) or (isinstance(value, list) and len(value) >= 2 and all(one(v) for v in value)):
        return None
    return "is not a text of 8 to 88 bytes, or an array of two or more (RFC 9711 section 4.1)"


def _ueid(value: Any) -> str | None:
    size = _decoded_size(value)
    if size is None or not 7 <= size <= 33:
        return "is not base64url of 7 to 33 bytes (RFC 9711 section 4.2.1)"
    return None


def _sueids(value: Any) -> str | None:
    if not isinstance(value, dict) or not value or any(_ueid(v) for v in value.values()):
        return "is not an object of UEIDs, each base64url of 7 to 33 bytes (RFC 9711 section 4.2.2)"
    return None


def _oemid(value: Any) -> str | None:
    if _is_uint(value) or _decoded_size(value) in (3, 16):
        return None
    return ("is not an IANA enterprise number, nor base64url of a 3-byte IEEE OUI or of 16 random bytes "
            "(RFC 9711 section 4.2.3)")


def _check(rule: Callable[[Any], bool], problem: str) -> Check:
    return lambda value: None if rule(value) else problem


def _version(value: Any) -> bool:
    """[version, ?version-scheme]: a text, and a CoSWID version scheme (an integer or a text, RFC 9393)."""
    return _pair(value, _is_text, lambda s: type(s) is int or _is_text(s), optional=True)


def _location(value: Any) -> str | None:
    problem = "is not an object with numeric latitude and longitude (RFC 9711 section 4.2.10)"
    if not isinstance(value, dict) or not {"latitude", "longitude"} <= value.keys():
        return problem
    for name, item in value.items():
        if name in _LOCATION_NUMBERS:
            if not _is_number(item):
                return problem
        elif name in ("timestamp", "age"):
            if not _is_uint(item):
                return f"{name} member is not a non-negative integer (RFC 9711 section 4.2.10)"
        else:
            return "has a member RFC 9711 section 4.2.10 does not define"
    return None


def _content(value: Any) -> bool:
    """[CoAP content-format, body]: a format number up to 65535 and a base64url body (§4.2.15, §4.2.16)."""
    return _pair(value, lambda f: _is_uint(f) and f <= 65535, lambda b: _decoded_size(b) is not None)


def _measurement_results(value: Any) -> bool:
    """§4.2.17: [+ [measurement-system, [+ [result-id, result]]]]."""

    def result(item: Any) -> bool:
        return _pair(item, _is_text, lambda r: r in MEASUREMENT_RESULTS)

    return _non_empty_list(value, lambda group: _pair(group, _is_text, lambda rs: _non_empty_list(rs, result)))


def _dloa(value: Any) -> bool:
    """§4.2.14: [registrar URI, platform label, ?application label]."""
    return isinstance(value, list) and len(value) in (2, 3) and all(_is_text(v) for v in value)


CLAIMS: dict[str, Check] = {
    "eat_nonce": _nonce,
    "ueid": _ueid,
    "sueids": _sueids,
    "oemid": _oemid,
    "hwmodel": _check(lambda v: (_decoded_size(v) or 0) in range(1, 33),
                      "is not base64url of 1 to 32 bytes (RFC 9711 section 4.2.4)"),
    "hwversion": _check(_version, "is not [version, ?scheme] (RFC 9711 section 4.2.5)"),
    "swname": _check(_is_text, "is not a non-empty text (RFC 9711 section 4.2.6)"),
    "swversion": _check(_version, "is not [version, ?scheme] (RFC 9711 section 4.2.7)"),
    "oemboot": _check(lambda v: type(v) is bool, "is not a boolean (RFC 9711 section 4.2.8)"),
    "dbgstat": _check(lambda v: v in DEBUG_STATES, f"is not one of {', '.join(DEBUG_STATES)} (RFC 9711 section 4.2.9)"),
    "location": _location,
    "uptime": _check(_is_uint, "is not a non-negative integer (RFC 9711 section 4.2.11)"),
    "bootcount": _check(_is_uint, "is not a non-negative integer (RFC 9711 section 4.2.12)"),
    "bootseed": _check(lambda v: _decoded_size(v) is not None, "is not base64url (RFC 9711 section 4.2.13)"),
    "dloas": _check(lambda v: _non_empty_list(v, _dloa),
                    "is not a list of [registrar, platform label, ?application label] (RFC 9711 section 4.2.14)"),
    "manifests": _check(lambda v: _non_empty_list(v, _content),
                        "is not a list of [content-format, base64url manifest] (RFC 9711 section 4.2.15)"),
    "measurements": _check(lambda v: _non_empty_list(v, _content),
                           "is not a list of [content-format, base64url measurement] (RFC 9711 section 4.2.16)"),
    "measres": _check(_measurement_results,
                      "is not a list of [measurement system, [[result id, result], ...]] (RFC 9711 section 4.2.17)"),
    "eat_profile": _check(lambda v: _is_text(v) and (":" in v or _OID.fullmatch(v) is not None),
                          "is not a URI or an OID (RFC 9711 section 4.3.2)"),
    "intuse": _check(_is_text, "is not a non-empty text (RFC 9711 section 4.3.3)"),
    IMAGE_DIGEST: _check(lambda v: isinstance(v, str) and _IMAGE_DIGEST.fullmatch(v) is not None,
                         "is not sha256: and 64 lowercase hex digits (Deputy's image_digest claim)"),
}
"""The claims that reach the policy, each with its check (None: well formed; else what is wrong); and
`submods` (§4.2.18), whose claims-sets pass through the same allow-list."""

POSTURE_CLAIMS = frozenset({*CLAIMS, "submods"})
