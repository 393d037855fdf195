"""Subject identifiers (RFC 9493 §3; SSF 1.0 §3.2-§3.5): the `sub_id` of a Security Event Token.

A subject identifier is a JSON object with a `format` and exactly the members that format describes, each
a non-empty string (RFC 9493 §3: it MUST contain every member the format requires and MUST NOT contain
others). SSF adds `jwt_id`, `saml_assertion_id`, `ip-addresses` and the `complex` subject, whose members
(`user`, `session`, ... or other names, §3.3) are each one simple subject identifier.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

SIMPLE_FORMATS: Mapping[str, tuple[str, ...]] = {
    "account": ("uri",),  # RFC 9493 §3.2.1
    "email": ("email",),  # §3.2.2
    "iss_sub": ("iss", "sub"),  # §3.2.3
    "opaque": ("id",),  # §3.2.4
    "phone_number": ("phone_number",),  # §3.2.5
    "did": ("url",),  # §3.2.6
    "uri": ("uri",),  # §3.2.7
    "jwt_id": ("iss", "jti"),  # SSF §3.5.1
    "saml_assertion_id": ("issuer", "assertion_id"),  # SSF §3.5.2
}
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")  # RFC 9493 §3.2.5: E.164, a leading + and at most 15 digits
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:.+")  # RFC 3986 §3.1


class SubjectError(ValueError):
    """A `sub_id` that is not a subject identifier; the message names the member, never its value."""


def check_subject(value: Any) -> Mapping[str, Any]:
    """`value` as a subject identifier of a known format, simple or `complex` (SSF §3.3); raises SubjectError."""
    if isinstance(value, dict) and value.get("format") == "complex":
        members = {name: member for name, member in value.items() if name != "format"}
        if not members:
            raise SubjectError("a complex subject needs at least one member (SSF section 3.3)")
        for name, member in members.items():
            _check_simple(member, f"sub_id.{name}" if _is_name(name) else "a sub_id member")
        return value
    return _check_simple(value, "sub_id")


def _check_simple(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SubjectError(f"{where} is not a JSON object")
    kind = value.get("format")
    if kind == "aliases":  # RFC 9493 §3.2.8
        return _check_aliases(value, where)
    if kind == "ip-addresses":  # SSF §3.5.3
        return _check_ip_addresses(value, where)
    if not isinstance(kind, str) or kind not in SIMPLE_FORMATS:
        raise SubjectError(f"{where} has no format, or one not known here (RFC 9493 section 3)")
    required = SIMPLE_FORMATS[kind]
    if set(value) != {"format", *required}:
        raise SubjectError(f"{where} of format {kind} must have exactly the members {', '.join(required)}")
    for name in required:
        if not isinstance(value[name], str) or not value[name]:
            raise SubjectError(f"{where}.{name} must be a non-empty string")
    _check_shape(kind, value, where)
    return value


def _check_shape(kind: str, value: Mapping[str, Any], where: str) -> None:
    if kind == "account" and not value["uri"].startswith("acct:"):
        raise SubjectError(f"{where}.uri must be an acct: URI (RFC 9493 section 3.2.1)")
    if kind == "phone_number" and not _E164.fullmatch(value["phone_number"]):
        raise SubjectError(f"{where}.phone_number must be an E.164 number (RFC 9493 section 3.2.5)")
    if kind == "did" and not value["url"].startswith("did:"):
        raise SubjectError(f"{where}.url must be a DID URL (RFC 9493 section 3.2.6)")
    if kind == "uri" and not _URI_SCHEME.fullmatch(value["uri"]):
        raise SubjectError(f"{where}.uri must be an absolute URI (RFC 9493 section 3.2.7)")
    if kind == "email" and "@" not in value["email"]:
        raise SubjectError(f"{where}.email must be an email address (RFC 9493 section 3.2.2)")


def _check_aliases(value: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    identifiers = value.get("identifiers")
    if set(value) != {"format", "identifiers"} or not isinstance(identifiers, list) or not identifiers:
        raise SubjectError(f"{where} of format aliases needs exactly a non-empty identifiers array")
    for identifier in identifiers:
        if isinstance(identifier, dict) and identifier.get("format") in ("aliases", "complex"):
            raise SubjectError(f"{where}.identifiers must not nest aliases (RFC 9493 section 3.2.8)")
        _check_simple(identifier, f"{where}.identifiers")
    return value


def _check_ip_addresses(value: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    addresses = value.get("ip-addresses")
    if set(value) != {"format", "ip-addresses"} or not isinstance(addresses, list) or not addresses:
        raise SubjectError(f"{where} of format ip-addresses needs exactly a non-empty ip-addresses array")
    for address in addresses:
        try:
            if not isinstance(address, str):
                raise TypeError(address)
            ipaddress.ip_address(address)  # RFC 4001 text forms
        except (ValueError, TypeError) as exc:
            raise SubjectError(f"{where}.ip-addresses holds a value that is not an IP address") from exc
    return value


def _is_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name))
