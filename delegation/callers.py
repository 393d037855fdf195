"""Who is calling an authenticated endpoint (`/tasks`, `/revoke`, `/introspect`, `/revocations`, `/admin`):
one path for all of them, so the same checks hold at every door, admin cutoffs included.

Agents and resource servers authenticate with their workload identity token as a Bearer token; admins
with theirs, or with a user token for the admin API's own audience that holds the admin group (`users`
verifies for that audience only: an agent's `subject_token` never opens /admin, RFC 8725 §3.9). A task
token never authenticates anyone (transaction tokens §13.12): it fails workload verification.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from token_exchange.actors import ActorVerifier, VerifiedActor
from token_exchange.errors import AccessDenied, InvalidClient
from token_exchange.jws import TokenError
from token_exchange.user_tokens import SubjectVerifier, VerifiedSubject

from .records import CredentialRevoked, Presented
from .resources import Resources
from .store import Credentials, check_credentials

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AdminRule:
    """Who may use /admin: users whose token's `claim` holds `value`, or these workload ids."""

    claim: str = "groups"
    value: str | None = None
    workload_ids: frozenset[str] = frozenset()


class Callers:
    def __init__(self, *, actors: ActorVerifier, users: SubjectVerifier, credentials: Credentials,
                 resources: Resources, admins: AdminRule) -> None:
        self._actors = actors
        self._users = users
        self._credentials = credentials
        self._resources = resources
        self._admins = admins

    async def agent(self, token: str, *, now: int) -> VerifiedActor:
        """The calling agent, from its workload identity token (audience: this gateway)."""
        try:
            actor = await self._actors.verify(token, now=now)
        except TokenError as exc:
            raise InvalidClient(f"workload identity token rejected: {exc}") from exc
        await self._not_revoked(Presented(actor.ref, actor.issued_at), "workload identity token rejected", AFTER_BLOCKS)
        return actor

    async def resource_client(self, token: str, *, now: int) -> VerifiedActor:
        """An agent listed in some resource's `clients`: may introspect and read the revocation feed."""
        caller = await self.agent(token, now=now)
        if caller.kind != "spiffe" or not self._resources.is_client(caller.id):  # `clients` are SPIFFE IDs
            raise AccessDenied("this workload is not a client of any resource (clients are SPIFFE IDs)")
        return caller

    async def while_valid(self, caller: VerifiedActor, items: AsyncIterator[T], *,
                          clock: Callable[[], float] = time.time) -> AsyncIterator[T]:
        """`items` for a request that lasts (the feed's stream), each only while the caller's identity still
        holds: once its token has expired, or an admin revocation has cut it off since it was verified, the
        next item is not given and the iteration ends."""
        async for item in items:
            now = int(clock())
            if caller.expires_at <= now:
                return
            try:
                await check_credentials(self._credentials, Presented(caller.ref, caller.issued_at), now=now)
            except CredentialRevoked:
                return
            yield item

    async def admin(self, token: str, *, now: int) -> str:
        """An admin: a workload in the admin list, or a user whose token's admin claim holds the value."""
        try:
            actor = await self._actors.verify(token, now=now)
        except TokenError:
            return await self._admin_user(token, now)
        await self._not_revoked(Presented(actor.ref, actor.issued_at), "workload identity token rejected", AFTER_BLOCKS)
        if actor.kind == "spiffe" and actor.id in self._admins.workload_ids:  # `[admin] spiffe_ids`
            return actor.id
        raise AccessDenied("this workload is not an admin (admin workloads are SPIFFE IDs)")

    async def _admin_user(self, token: str, now: int) -> str:
        try:
            user = await self._users.verify(token, now=now)
        except TokenError as exc:
            raise InvalidClient(f"admin token rejected: {exc}") from exc
        await self._not_revoked(_presented_by(user), "admin token rejected", AFTER_BLOCKS)
        held = user.claims.get(self._admins.claim)
        values = held if isinstance(held, list) else [held]
        if self._admins.value is None or self._admins.value not in values:
            raise AccessDenied("this user is not in the admin group")
        return f"{user.issuer}#{user.subject}"

    async def _not_revoked(self, presented: Presented, rejected: str, now: int) -> None:
        try:
            await check_credentials(self._credentials, presented, now=now)
        except CredentialRevoked as exc:
            raise InvalidClient(f"{rejected}: {exc.reason()}") from exc


AFTER_BLOCKS = 2**40
"""Admins are checked as of a time after every block: a block refuses exchanges, it never locks an admin
out (of lifting it, say); their revocation cutoffs hold."""


def _presented_by(user: VerifiedSubject) -> Presented:
    """A user token alone: checked against the user's cutoff (no agent is involved)."""
    return Presented(None, None, (user.issuer, user.subject), user.issued_at)
