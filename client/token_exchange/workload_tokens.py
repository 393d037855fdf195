"""Kubernetes service-account tokens and other OIDC workload tokens (GitHub Actions, cloud workload
identity) as actor tokens: `reference/k8s-oidc-workload-tokens.md`, RFC 8725.

One verifier per configured issuer, chosen by `iss` (`actors.WorkloadVerifiers`), never by a header.
`iss` must be that issuer exactly and its keys verify the signature (RFC 8725 §3.8), each key with its
one algorithm (§3.1); `kid` is required and `jku`, `x5u`, `x5c`, `jwk` never select a key (§3.10).
`aud` must contain Deputy's audience (§3.9), so a token meant only for the kube-apiserver or for
GitHub's default owner URL is refused. `exp` and `iat` are required and `exp - iat` is capped
(`MAX_LIFETIME_S`). The workload's id (`id_claim`) is never a SPIFFE ID: only a JWT-SVID may name one,
or another issuer could claim a SPIFFE agent's grants, which the policy keys by id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .actors import VerifiedActor
from .errors import shown
from .jws import SignatureCache, TokenError, check_audience, check_time_claims, string_claim
from .keys import ASYMMETRIC_ALGORITHMS, KeySource

MAX_LIFETIME_S = 24 * 3600
"""The longest `exp - iat` accepted. The kubelet refreshes a projected token at 80 % of its lifetime or
after 24 hours (K8s-SA, Launch a Pod using service account token projection; reference item 13) and a
GitHub Actions token lives minutes; a token stated to live longer is a long-lived bearer credential that
offline verification cannot tie to a live Pod (reference, "these are bearer tokens")."""
MAX_ID_CHARS = 2048
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a namespace: RFC 1123 label, 63 at most
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a ServiceAccount: RFC 1123 subdomain
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN_TYPES = frozenset({"jwt", "application/jwt"})  # K8s tokens carry no typ, GitHub's "JWT" (GH, item 17)

WorkloadKind = Literal["kubernetes", "oidc"]


class WorkloadTokenError(TokenError):
    """A Kubernetes or OIDC workload token that is malformed, untrusted or not valid now."""


@dataclass(frozen=True, slots=True)
class WorkloadIssuer:
    """A configured issuer of workload tokens: whose keys verify them, the audience they must carry, their
    kind (`kubernetes` adds the service-account rules), and the claim that names the workload."""

    issuer: str
    audience: str
    keys: KeySource
    kind: WorkloadKind = "oidc"
    id_claim: str = "sub"


class WorkloadTokenVerifier:
    """Verifies the workload tokens of one issuer; the actor's `id` is its `id_claim`, its `domain` the
    issuer (an id is unique only within its issuer, so `act` carries `iss` too: RFC 8693 §4.1)."""

    def __init__(self, issuer: WorkloadIssuer) -> None:
        self._issuer = issuer
        self._cache = SignatureCache()

    async def verify(self, token: str, *, now: int) -> VerifiedActor:
        try:
            return await self._verify(token, now)
        except WorkloadTokenError:
            raise
        except TokenError as exc:
            raise WorkloadTokenError(str(exc)) from exc

    async def _verify(self, token: str, now: int) -> VerifiedActor:
        issuer = self._issuer
        claims = (await self._cache.verified(token, now=now, choose=self._keys_for)).claims
        expires_at = checked_lifetime(claims, now=now)
        check_audience(claims, issuer.audience)  # reference item 11: one of the recipient's own identifiers
        workload_id = workload_id_of(claims, issuer.id_claim)
        if issuer.kind == "kubernetes":
            service_account_of(claims)
        return VerifiedActor(workload_id, issuer.kind, issuer.issuer, expires_at, claims)

    def _keys_for(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> tuple[KeySource, frozenset[str]]:
        """This issuer's keys, for a token that names it exactly; an explicitly typed JWT of another kind
        (an access token, a task token, an attestation) is refused (RFC 8725 §3.11, §3.12)."""
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _PLAIN_TYPES):
            raise WorkloadTokenError(f"typ {shown(typ, 40)} is not a workload token's (JWT, or none)")
        if claims.get("iss") != self._issuer.issuer:
            raise WorkloadTokenError(f"iss is not {self._issuer.issuer}")
        return self._issuer.keys, ASYMMETRIC_ALGORITHMS


def checked_lifetime(claims: Mapping[str, Any], *, now: int) -> int:
    """`exp` and `iat` required, `exp`, `nbf`, `iat` checked against `now`, and `exp - iat` at most
    MAX_LIFETIME_S; returns `exp`. A token without `exp` never expires (a legacy Secret-based
    service-account token: K8s-Admin, Manual Secret management; reference item 15) and is refused."""
    if "exp" not in claims:
        raise WorkloadTokenError("exp claim missing: a token that never expires (such as a legacy "
                                 "Secret-based service-account token) is not accepted")
    if "iat" not in claims:
        raise WorkloadTokenError("iat claim missing: the token's lifetime cannot be checked")
    expires_at = check_time_claims(claims, now=now)
    lifetime = expires_at - int(claims["iat"])
    if lifetime <= 0:
        raise WorkloadTokenError("exp is not after iat")
    if lifetime > MAX_LIFETIME_S:
        raise WorkloadTokenError(f"lifetime (exp - iat) of {lifetime} s exceeds the cap of {MAX_LIFETIME_S} s")
    return expires_at


def workload_id_of(claims: Mapping[str, Any], name: str) -> str:
    """The workload's id: the `name` claim, a non-empty string of at most MAX_ID_CHARS without control
    characters, and not a SPIFFE ID in any letter case (reference, cross-kind confusion)."""
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise WorkloadTokenError(f"{name} claim (the workload's id) missing or not a non-empty string")
    if len(value) > MAX_ID_CHARS or _CONTROL.search(value):
        raise WorkloadTokenError(f"{name} claim (the workload's id) is longer than {MAX_ID_CHARS} characters "
                                 "or holds a control character")
    if value[:7].lower() == "spiffe:":
        raise WorkloadTokenError(f"{name} claim is a SPIFFE ID: only a JWT-SVID of a configured trust domain "
                                 "may name one")
    return value


def service_account_of(claims: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of a projected service-account token: `sub` is
    `system:serviceaccount:<namespace>:<name>` and agrees with the private `kubernetes.io` claim's
    `namespace` and `serviceaccount.name` (K8s-SA example payload; K8s-Admin, Bound service account
    tokens; reference items 6, 7)."""
    namespace, name = _service_account(string_claim(claims, "sub"))
    private = claims.get("kubernetes.io")
    if not isinstance(private, Mapping):
        raise WorkloadTokenError("kubernetes.io claim missing or not an object: not a projected "
                                 "service-account token")
    if private.get("namespace") != namespace:
        raise WorkloadTokenError("the namespace in sub does not match kubernetes.io.namespace")
    account = private.get("serviceaccount")
    if not isinstance(account, Mapping) or account.get("name") != name:
        raise WorkloadTokenError("the service account in sub does not match kubernetes.io.serviceaccount.name")
    return namespace, name


def _service_account(sub: str) -> tuple[str, str]:
    if not sub.startswith(SERVICE_ACCOUNT_PREFIX):
        raise WorkloadTokenError("sub is not system:serviceaccount:<namespace>:<name>")
    parts = sub.removeprefix(SERVICE_ACCOUNT_PREFIX).split(":")
    if len(parts) != 2 or not all(parts):
        raise WorkloadTokenError("sub must name a namespace and a service account: "
                                 "system:serviceaccount:<namespace>:<name>")
    namespace, name = parts
    if not _DNS_LABEL.fullmatch(namespace):
        raise WorkloadTokenError("the namespace in sub is not a DNS label (RFC 1123)")
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise WorkloadTokenError("the service account in sub is not a DNS subdomain name (RFC 1123)")
    return namespace, name
