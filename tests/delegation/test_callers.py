"""The one caller-authentication path: resource clients and admin workloads are SPIFFE IDs, so a workload
of another kind whose id happens to spell a configured SPIFFE ID is neither (docs/architecture.md)."""

from __future__ import annotations

import pytest

from delegation.callers import AdminRule, Callers
from delegation.resources import Resource, Resources
from tests.delegation.fakes import FakeActors, FakeStore, FakeUsers
from token_exchange.actors import VerifiedActor
from token_exchange.errors import AccessDenied
from token_exchange.scope import Scope

NOW = 1_800_000_000
CLIENT = "spiffe://example.org/rs/mail"
RESOURCES = Resources([Resource("https://mail.example.com", Scope(frozenset({"mail.read"})), 300,
                                frozenset({CLIENT}))])


def callers(actor: VerifiedActor) -> Callers:
    return Callers(actors=FakeActors({"token": actor}), users=FakeUsers({}),
                   credentials=FakeStore(), resources=RESOURCES, admins=AdminRule(workload_ids=frozenset({CLIENT})))


def spiffe(spiffe_id: str) -> VerifiedActor:
    return VerifiedActor(spiffe_id, "spiffe", "example.org", NOW + 300)


@pytest.mark.parametrize("kind", ["kubernetes", "oidc"])
async def test_a_workload_of_another_kind_named_like_a_client_is_no_resource_client(kind: str) -> None:
    impostor = VerifiedActor(CLIENT, kind, "https://issuer.example.com", NOW + 300)  # type: ignore[arg-type]
    with pytest.raises(AccessDenied):
        await callers(impostor).resource_client("token", now=NOW)
    with pytest.raises(AccessDenied):
        await callers(impostor).admin("token", now=NOW)


async def test_the_spiffe_workload_itself_is_a_resource_client_and_an_admin() -> None:
    assert (await callers(spiffe(CLIENT)).resource_client("token", now=NOW)).id == CLIENT
    assert await callers(spiffe(CLIENT)).admin("token", now=NOW) == CLIENT


async def test_another_spiffe_workload_is_neither() -> None:
    with pytest.raises(AccessDenied):
        await callers(spiffe("spiffe://example.org/agents/mail")).resource_client("token", now=NOW)
