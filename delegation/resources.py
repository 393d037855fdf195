"""The protected resources Deputy mints tokens for, matched exactly by their audience (RFC 8707 §2)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from token_exchange.errors import InvalidTarget
from token_exchange.rfc8693 import Target
from token_exchange.scope import Scope


@dataclass(frozen=True, slots=True)
class Resource:
    audience: str
    scopes: Scope
    max_ttl: int
    clients: frozenset[str] = frozenset()
    require_dpop: bool = False  # RFC 9449 §5.2, per resource: only DPoP-bound access tokens are issued for it


class Resources:
    def __init__(self, resources: Iterable[Resource]) -> None:
        self._by_audience = {r.audience: r for r in resources}
        clients = {c for r in self._by_audience.values() for c in r.clients}
        self._audiences_of = {c: frozenset(a for a, r in self._by_audience.items() if c in r.clients)
                              for c in clients}

    def resolve(self, target: Target) -> Resource:
        """Exact string match: no case folding, no trailing-slash or port normalization."""
        resource = self._by_audience.get(target.value)
        if resource is None:
            raise InvalidTarget(f"{target.kind} is not a resource this gateway issues tokens for")
        return resource

    def resolve_audience(self, audience: str) -> Resource:
        return self.resolve(Target("audience", audience))

    def is_client(self, spiffe_id: str) -> bool:
        """Whether this SPIFFE ID is listed in some resource's `clients` (may read the revocation feed)."""
        return spiffe_id in self._audiences_of

    def clients(self) -> frozenset[str]:
        """Every SPIFFE ID listed in some resource's `clients`."""
        return frozenset(self._audiences_of)

    def audiences_of(self, spiffe_id: str) -> frozenset[str]:
        """The audiences of the resources whose `clients` list this SPIFFE ID: what it may be told about."""
        return self._audiences_of.get(spiffe_id, frozenset())

    def all_scopes(self) -> list[str]:
        return sorted({s for r in self._by_audience.values() for s in r.scopes.values})
