"""RFC 8693 §2.1: one token-exchange form in, one typed `ExchangeRequest` out; §2.2.1: the response.

Also the transaction-token request parameters `request_context` and `request_details` (draft
§11.1), JSON objects that become the task token's `rctx` and `tctx`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InvalidClient, InvalidRequest, InvalidTarget
from .jws import MAX_TOKEN_BYTES
from .rfc6749 import FormParams
from .scope import Scope

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
TXN_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:txn_token"
SUBJECT_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, JWT_TYPE, ID_TOKEN_TYPE, TXN_TOKEN_TYPE})
ACTOR_TOKEN_TYPES = frozenset({JWT_TYPE})
ISSUABLE_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, TXN_TOKEN_TYPE})
MAX_PURPOSE_CHARS = 200
MAX_CONTEXT_BYTES = 2048
MAX_CONTEXT_DEPTH = 4
_CLIENT_CREDENTIALS = ("client_secret", "client_assertion", "client_assertion_type")
MAX_TARGET_CHARS = 2048


@dataclass(frozen=True, slots=True)
class PresentedToken:
    token: str
    token_type: str


@dataclass(frozen=True, slots=True)
class Target:
    """A `resource` (RFC 8707: absolute URI, no fragment) or an `audience` (a logical name)."""

    kind: str
    value: str

    @classmethod
    def resource(cls, value: str) -> Target:
        scheme, colon, rest = value.partition(":")
        if (
            not colon
            or not scheme[:1].isalpha()
            or not all(c.isalnum() or c in "+-." for c in scheme)
            or not rest
            or "#" in value
            or not value.isascii()
            or any(c.isspace() or ord(c) < 0x21 or c == "\x7f" for c in value)
        ):
            raise InvalidTarget("resource must be an absolute URI without a fragment (RFC 8707 section 2)")
        return cls("resource", value)

    @classmethod
    def audience(cls, value: str) -> Target:
        if not value.isprintable():
            raise InvalidTarget("audience contains control characters")
        return cls("audience", value)


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    subject: PresentedToken
    actor: PresentedToken
    targets: tuple[Target, ...]
    scope: Scope
    requested_token_type: str
    client_id: str | None
    purpose: str | None = None
    task_ttl: int | None = None
    context: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # request_context
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # request_details

    def single_target(self) -> Target:
        """Deputy mints each access token for exactly one target (RFC 8693 §2.1.1, RFC 8707 §2)."""
        if len(self.targets) != 1:
            raise InvalidTarget("exactly one resource or audience is required")
        return self.targets[0]


def parse(form: FormParams) -> ExchangeRequest:
    """RFC 8693 §2.1: validate a token-exchange form (its `grant_type` already matched); raises the
    OAuthError that fits the first problem."""
    if present := [name for name in _CLIENT_CREDENTIALS if form.get(name) is not None]:
        raise InvalidClient(f"{present[0]} is not accepted: agents authenticate with actor_token")
    subject = _presented(form, "subject_token", SUBJECT_TOKEN_TYPES)
    actor = _presented(form, "actor_token", ACTOR_TOKEN_TYPES)
    targets = tuple(Target.resource(v) for v in form.all("resource")) + tuple(
        Target.audience(v) for v in form.all("audience")
    )
    if any(len(t.value) > MAX_TARGET_CHARS for t in targets):
        raise InvalidTarget(f"resource and audience values are limited to {MAX_TARGET_CHARS} characters")
    requested = form.get("requested_token_type") or ACCESS_TOKEN_TYPE
    if requested not in ISSUABLE_TOKEN_TYPES:
        raise InvalidRequest("requested_token_type must be the access_token or txn_token URI")
    scope = Scope.parse(form.get("scope"))
    details = _json_object(form, "request_details")
    if "purpose" in details:
        raise InvalidRequest("request_details must not hold purpose: send the purpose parameter")
    return ExchangeRequest(subject, actor, targets, scope, requested, form.get("client_id"), _purpose(form),
                           _task_ttl(form), _json_object(form, "request_context"), details)


def _purpose(form: FormParams) -> str | None:
    purpose = form.get("purpose")
    if purpose is not None and (len(purpose) > MAX_PURPOSE_CHARS or not purpose.isprintable()):
        raise InvalidRequest(f"purpose must be printable text of at most {MAX_PURPOSE_CHARS} characters")
    return purpose


def _task_ttl(form: FormParams) -> int | None:
    task_ttl = form.get("task_ttl")
    # at most 7 digits before int(): Python refuses to convert a string of more than 4,300 digits
    if task_ttl is not None and not (task_ttl.isascii() and task_ttl.isdigit() and len(task_ttl) <= 7
                                     and 0 < int(task_ttl) <= 86400 * 7):
        raise InvalidRequest("task_ttl must be a positive number of seconds")
    return int(task_ttl) if task_ttl else None


def _json_object(form: FormParams, name: str) -> Mapping[str, Any]:
    """A transaction-token context parameter: a JSON object of bounded size and depth, no U+0000."""
    text = form.get(name)
    if text is None:
        return MappingProxyType({})
    if len(text.encode()) > MAX_CONTEXT_BYTES:
        raise InvalidRequest(f"{name} is longer than {MAX_CONTEXT_BYTES} bytes")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's own limit
        raise InvalidRequest(f"{name} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"{name} must be a JSON object")
    _check_context_value(name, value, 0)
    return MappingProxyType(value)


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _check_context_value(name: str, value: Any, depth: int) -> None:
    """Strings without U+0000, exact integers, finite numbers, and at most MAX_CONTEXT_DEPTH containers deep."""
    if isinstance(value, dict | list):
        if depth >= MAX_CONTEXT_DEPTH:
            raise InvalidRequest(f"{name} is nested deeper than {MAX_CONTEXT_DEPTH} levels")
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            _check_context_value(name, key, depth + 1)
            _check_context_value(name, item, depth + 1)
    elif isinstance(value, str) and ("\0" in value or not _is_unicode(value)):
        raise InvalidRequest(f"{name} holds a string with U+0000 or a lone surrogate")
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**53) < value < 2**53:
        raise InvalidRequest(f"{name} holds an integer beyond 2^53")
    elif isinstance(value, float) and not math.isfinite(value):  # 1e400 parses as infinity
        raise InvalidRequest(f"{name} holds a number beyond the range of a double")


def _is_unicode(text: str) -> bool:
    """Whether `text` is Unicode text: a JSON escape such as \\ud800 decodes to a lone surrogate, which is not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _presented(form: FormParams, name: str, types: frozenset[str]) -> PresentedToken:
    token, token_type = form.get(name), form.get(f"{name}_type")
    if token is None:
        raise InvalidRequest(f"{name} is required")
    if token_type is None:
        raise InvalidRequest(f"{name}_type is required with {name}")
    if token_type not in types:
        raise InvalidRequest(f"{name}_type must be one of: {', '.join(sorted(types))}")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidRequest(f"{name} is longer than {MAX_TOKEN_BYTES} bytes")
    return PresentedToken(token, token_type)


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """RFC 8693 §2.2.1; `scope` always present, so a narrowed grant is never silent (RFC 6749 §3.3)."""

    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int
    scope: Scope
    extra: tuple[tuple[str, str], ...] = ()

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "issued_token_type": self.issued_token_type,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": str(self.scope),
            **dict(self.extra),
        }
