"""The console's sign-in: OpenID Connect authorization code flow with PKCE (RFC 7636, S256) at the
configured identity provider, by authlib's client. The console is a public client: no client secret.
The access token is requested for this gateway (RFC 8707 `resource`) and checked as /admin checks a
Bearer token; it never reaches the browser."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError as AuthlibError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from token_exchange.errors import AccessDenied, TemporarilyUnavailable

from ..settings import ConsoleSettings

LOGIN_TTL = 600  # seconds a sign-in may take at the identity provider


@dataclass(frozen=True, slots=True)
class SignedIn:
    access_token: str
    expires_at: int


class SignIn:
    """Sign-ins keep nothing here: anyone may start one, so its `state` and PKCE verifier go to the browser
    (an HttpOnly cookie, routes.py), and no number of them started can stop an admin's."""

    def __init__(self, settings: ConsoleSettings, audience: str) -> None:
        self.settings = settings
        self.audience = audience  # `[admin] audience`: the access token is for the admin API
        self._metadata: dict[str, Any] | None = None

    async def begin(self) -> tuple[str, str, str]:
        """A new sign-in: its `state`, its PKCE code verifier and the identity provider's authorization URL."""
        metadata = await self.metadata()
        verifier = generate_token(64)
        async with self._client() as client:
            url, state = client.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier,
                                                         resource=self.audience)
        return state, verifier, url

    async def finish(self, code: str, verifier: str) -> SignedIn:
        """Redeem the code with the PKCE verifier of the sign-in the browser began (RFC 7636 §4.5)."""
        metadata = await self.metadata()
        try:
            async with self._client() as client:
                token = await client.fetch_token(metadata["token_endpoint"], grant_type="authorization_code",
                                                 code=code, code_verifier=verifier, resource=self.audience)
        except AuthlibError as exc:
            raise AccessDenied(f"the identity provider refused the sign-in: {exc.error}") from exc
        except httpx2.HTTPError as exc:
            raise TemporarilyUnavailable("the identity provider's token endpoint cannot be reached") from exc
        access = token.get("access_token")
        if not isinstance(access, str):
            raise AccessDenied("the identity provider returned no access token")
        expires_at = token.get("expires_at")
        return SignedIn(access, int(expires_at) if isinstance(expires_at, int | float) else int(time.time()) + 3600)

    async def metadata(self) -> dict[str, Any]:
        """The provider's metadata (OpenID Connect Discovery §4), fetched once; its issuer must be ours (§4.3)."""
        if self._metadata is None:
            try:
                async with httpx2.AsyncClient(timeout=10) as http:
                    document = (await http.get(self.settings.discovery_url)).raise_for_status().json()
            except (httpx2.HTTPError, ValueError) as exc:
                raise TemporarilyUnavailable("the identity provider's metadata cannot be read") from exc
            if not isinstance(document, dict) or document.get("issuer") != self.settings.issuer:
                raise TemporarilyUnavailable("the identity provider's metadata names another issuer")
            if "S256" not in document.get("code_challenge_methods_supported", ["S256"]):
                raise TemporarilyUnavailable("the identity provider does not offer PKCE with S256")
            if not all(isinstance(document.get(k), str) for k in ("authorization_endpoint", "token_endpoint")):
                raise TemporarilyUnavailable("the identity provider's metadata lacks its endpoints")
            self._metadata = document
        return self._metadata

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(client_id=self.settings.client_id, token_endpoint_auth_method="none",
                                 scope=self.settings.scope, redirect_uri=self.settings.redirect_uri,
                                 code_challenge_method="S256", timeout=10)
