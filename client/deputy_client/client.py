"""`DeputyClient`: an agent's side of Deputy. It finds the gateway by its RFC 8414 metadata, proves who it is
with its JWT-SVID (from an `IdentitySource`), opens tasks with a user's token and mints per-task tokens in
them by RFC 8693 token exchange, each exchange with a DPoP proof (RFC 9449 §5) of the agent's one key.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import httpx2
import jwt

from token_exchange.attestation import ATTESTATION_HEADER, POP_HEADER, POP_TYP
from token_exchange.dpop import HEADER, NONCE_HEADER, DpopKey

from .connection import Connection, Retries
from .grants import ACCESS_TOKEN, GRANT, JWT, TXN_TOKEN, AccessToken
from .handoff import Handoff
from .identity import IdentitySource, SvidCallable, as_identity
from .tasks import Task, TaskScope

Attestation = Callable[[dict[str, Any]], str] | Callable[[dict[str, Any]], Awaitable[str]]
"""Given the public JWK of the agent instance's DPoP key, the client attestation that binds it (`cnf.jwk`)."""


class DeputyClient:
    """`async with DeputyClient(url, identity=...) as deputy:`; the gateway's metadata is read on entering.
    `url`: the gateway's issuer, https (plain http on loopback only: SVIDs and user tokens are sent there).

    `dpop`: hold one DPoP key for this agent instance and prove possession of it at every exchange and, for
    DPoP-bound tokens, at every resource call. `attestation`: given the public JWK of that key, the
    OAuth-Client-Attestation an attester made for it (draft-ietf-oauth-attestation-based-client-auth-10 §4);
    it is sent with every exchange, with a fresh PoP (§5.1) signed by the same key. `transport`: the httpx2
    transport to the gateway (tests count with it). `retries`: the budget for transient failures (503,
    connection errors)."""

    def __init__(self, url: str, *, identity: IdentitySource | SvidCallable, dpop: bool = True,
                 attestation: Attestation | None = None, transport: httpx2.AsyncBaseTransport | None = None,
                 timeout: float = 10.0, retries: Retries | None = None) -> None:
        if attestation is not None and not dpop:
            raise ValueError("an attestation binds the agent instance's DPoP key: it needs dpop=True")
        self.issuer = url.rstrip("/")
        self.attestation = attestation
        self.identity = as_identity(identity)
        self.dpop_key = DpopKey() if dpop else None
        self._http = httpx2.AsyncClient(transport=transport, timeout=timeout)
        self.connection = Connection(self.issuer, self._http, retries or Retries())
        self._nonce: str | None = None  # the token endpoint's last DPoP-Nonce (§8)

    async def __aenter__(self) -> DeputyClient:
        await self.connection.metadata()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client, and the identity source if it can be closed."""
        await self._http.aclose()
        close = getattr(self.identity, "close", None)
        if close is not None:
            await close()

    def task(self, user_token: str, *, scope: Sequence[str], audiences: Sequence[str], purpose: str | None = None,
             ttl: int | None = None, user_token_type: str = ACCESS_TOKEN) -> TaskScope:
        """`async with deputy.task(...) as task:` opens a task for the user whose token this is (used to open it,
        then dropped) and completes it on leaving."""
        form = {"subject_token": user_token, "subject_token_type": user_token_type, "scope": " ".join(scope),
                "audience": list(audiences), "purpose": purpose, "task_ttl": ttl}

        async def opener() -> Task:
            return Task(self, await self._open(form), audiences=audiences)
        return TaskScope(opener)

    def join(self, handoff: Handoff) -> TaskScope:
        """On a sub-agent: open the child task a delegating agent handed over, with this agent's own identity."""
        if handoff.gateway != self.issuer:
            raise ValueError(f"the handoff is for the gateway {handoff.gateway}, not {self.issuer}")
        form = {"subject_token": handoff.task_token, "subject_token_type": TXN_TOKEN, "scope": " ".join(handoff.scope),
                "audience": list(handoff.audiences), "task_ttl": handoff.ttl}

        async def opener() -> Task:
            return Task(self, await self._open(form), audiences=handoff.audiences)
        return TaskScope(opener)

    async def exchange(self, user_token: str, *, resource: str, scope: Sequence[str],
                       user_token_type: str = ACCESS_TOKEN) -> AccessToken:
        """One access token for the user, in an implicit task that ends with it (docs/tasks.md)."""
        return await self.grant({"subject_token": user_token, "subject_token_type": user_token_type,
                                 "resource": resource, "scope": " ".join(scope)})

    async def _open(self, form: dict[str, Any]) -> AccessToken:
        return await self.grant({**form, "requested_token_type": TXN_TOKEN})

    async def grant(self, form: dict[str, Any]) -> AccessToken:
        """RFC 8693 §2.1 at the token endpoint, as this agent; a `use_dpop_nonce` answer (§8) is retried once."""
        metadata = await self.connection.metadata()
        body = {"grant_type": GRANT, "actor_token": await self.identity.svid(metadata.issuer), "actor_token_type": JWT,
                **{k: v for k, v in form.items() if v is not None}}
        attestation = await self._attestation()
        for attempt in range(2):
            response = await self.connection.send(
                lambda: self._http.build_request("POST", metadata.token_endpoint, data=body,
                                                 headers=self._headers(metadata.token_endpoint, attestation)))
            nonce = response.headers.get(NONCE_HEADER)
            self._nonce = nonce or self._nonce
            if attempt or not nonce or response.status_code != 400 or _code(response) != "use_dpop_nonce":
                break
        return AccessToken.parse(self.connection.json(response))

    async def _attestation(self) -> str | None:
        if self.attestation is None or self.dpop_key is None:
            return None
        made = self.attestation(self.dpop_key.public_jwk)
        return await made if inspect.isawaitable(made) else made

    def _headers(self, url: str, attestation: str | None) -> dict[str, str]:
        """Made anew for each attempt: a DPoP proof and an attestation PoP are single-use."""
        if self.dpop_key is None:
            return {}
        headers = {HEADER: self.dpop_key.proof("POST", url, nonce=self._nonce)}
        if attestation is not None:
            headers |= {ATTESTATION_HEADER: attestation, POP_HEADER: attestation_pop(self.dpop_key, self.issuer)}
        return headers

    def proof(self, method: str, url: str, access_token: str, nonce: str | None) -> str:
        """A DPoP proof for a resource call with a bound token (RFC 9449 §7)."""
        if self.dpop_key is None:
            raise RuntimeError("a DPoP-bound token, but this client holds no DPoP key")
        return self.dpop_key.proof(method, url, access_token=access_token, nonce=nonce)

    async def complete(self, task_id: str) -> dict[str, Any]:
        """`POST /tasks/{id}/complete`, authenticated by this agent's JWT-SVID (docs/tasks.md, "Ending tasks")."""
        metadata = await self.connection.metadata()
        svid = await self.identity.svid(metadata.issuer)
        url = metadata.endpoint(f"/tasks/{task_id}/complete")
        response = await self.connection.send(
            lambda: self._http.build_request("POST", url, headers={"Authorization": f"Bearer {svid}"}))
        return self.connection.json(response)


def attestation_pop(key: DpopKey, audience: str) -> str:
    """draft-ietf-oauth-attestation-based-client-auth-10 §5.1: `aud` the gateway's issuer, a fresh `jti`."""
    claims = {"aud": audience, "iat": int(time.time()), "jti": secrets.token_urlsafe(16)}
    return jwt.encode(claims, key.signing_key.private_key, algorithm="ES256", headers={"typ": POP_TYP})


def _code(response: httpx2.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None
