"""RFC 8693 §2.1: one token-exchange form in, one typed `ExchangeRequest` out; §2.2.1: the response.

Parameters follow RFC 6749 §3.2: empty values count as absent, unknown ones are ignored, and only
`resource` and `audience` may repeat (RFC 8707 §2, RFC 8693 §2.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidClient, InvalidRequest, InvalidTarget, UnsupportedGrantType, shown
from .jws import MAX_TOKEN_BYTES
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
_REPEATABLE = frozenset({"resource", "audience"})
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
            or any(c.isspace() or ord(c) < 0x21 for c in value)
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

    def single_target(self) -> Target:
        """Deputy mints each access token for exactly one target (RFC 8693 §2.1.1, RFC 8707 §2)."""
        if len(self.targets) != 1:
            raise InvalidTarget("exactly one resource or audience is required")
        return self.targets[0]


def parse(pairs: Iterable[tuple[str, str]]) -> ExchangeRequest:
    """RFC 8693 §2.1: validate a token-exchange form; raises the OAuthError that fits the first problem."""
    params, repeated = _collect(pairs)
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required")
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantType(f"only {GRANT_TYPE} is supported")
    if present := [name for name in _CLIENT_CREDENTIALS if params.get(name) is not None]:
        raise InvalidClient(f"{present[0]} is not accepted: agents authenticate with actor_token")
    subject = _presented(params, "subject_token", SUBJECT_TOKEN_TYPES)
    actor = _presented(params, "actor_token", ACTOR_TOKEN_TYPES)
    targets = tuple(Target.resource(v) for v in repeated.get("resource", ())) + tuple(
        Target.audience(v) for v in repeated.get("audience", ())
    )
    if any(len(t.value) > MAX_TARGET_CHARS for t in targets):
        raise InvalidTarget(f"resource and audience values are limited to {MAX_TARGET_CHARS} characters")
    requested = params.get("requested_token_type") or ACCESS_TOKEN_TYPE
    if requested not in ISSUABLE_TOKEN_TYPES:
        raise InvalidRequest("requested_token_type must be the access_token or txn_token URI")
    scope = Scope.parse(params.get("scope"))
    purpose = params.get("purpose")
    if purpose is not None and (len(purpose) > MAX_PURPOSE_CHARS or not purpose.isprintable()):
        raise InvalidRequest(f"purpose must be printable text of at most {MAX_PURPOSE_CHARS} characters")
    task_ttl = params.get("task_ttl")
    if task_ttl is not None and not (task_ttl.isascii() and task_ttl.isdigit() and 0 < int(task_ttl) <= 86400 * 7):
        raise InvalidRequest("task_ttl must be a positive number of seconds")
    return ExchangeRequest(subject, actor, targets, scope, requested, params.get("client_id"), purpose,
                           int(task_ttl) if task_ttl else None)


def _collect(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Single-valued and repeatable parameters; a repeated single-valued one is invalid (RFC 6749 §3.2)."""
    params: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for name, value in pairs:
        if not value:
            continue  # RFC 6749 §3.1: sent without a value = omitted
        if name in _REPEATABLE:
            repeated.setdefault(name, []).append(value)
        elif name in params:
            raise InvalidRequest(f"{shown(name, 40, otherwise='a parameter')} is repeated")
        else:
            params[name] = value
    return params, repeated


def _presented(params: dict[str, str], name: str, types: frozenset[str]) -> PresentedToken:
    token, token_type = params.get(name), params.get(f"{name}_type")
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
