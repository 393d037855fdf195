"""OpenID Connect Discovery 1.0 (§4) for a workload issuer's keys: `{issuer}/.well-known/openid-configuration`
names the `jwks_uri` whose keys verify the issuer's tokens (K8s-SA, Service account issuer discovery;
reference/k8s-oidc-workload-tokens.md items 3-5, 16).

Discovery runs on the first token that needs a key, once: the `jwks_uri` found is kept for the life of
the process, and its keys are a `RemoteKeys` (cached, refetched once on an unknown `kid`). A failed
discovery fails closed and is retried only after a backoff (5 s, doubling to 5 minutes), never on every
request. The document must name the configured issuer exactly (§4.3) and an https `jwks_uri` (plain
http on loopback only, for development): a document served at an issuer's address cannot move trust to
another issuer or to a key set fetched in the clear.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2

from .errors import shown
from .keys import KeySet, KeySetUnavailable, RemoteKeys, VerificationKey, download, json_document

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/openid-configuration"
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0


class DiscoveryError(ValueError):
    """A discovery document that cannot be trusted or used; the message is safe to show a client."""


def configuration_url(issuer: str) -> str:
    """§4: any terminating / of the issuer is removed before `/.well-known/openid-configuration` is added."""
    return issuer.rstrip("/") + WELL_KNOWN


def is_loopback(host: str | None) -> bool:
    """`localhost` or a loopback address: where plain http is allowed, for development."""
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def jwks_uri_of(document: Any, *, issuer: str) -> str:
    """The document's `jwks_uri`, once its `issuer` is exactly the configured one (§4.3: it MUST be
    identical, else the document MUST NOT be used) and the URI is https (http on loopback only)."""
    if not isinstance(document, dict):
        raise DiscoveryError("the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise DiscoveryError(f"the discovery document's issuer {shown(document.get('issuer'), 200)} is not "
                             f"{issuer} (OpenID Connect Discovery section 4.3)")
    uri = document.get("jwks_uri")
    if not isinstance(uri, str) or not uri:
        raise DiscoveryError("the discovery document has no jwks_uri")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise DiscoveryError("the discovery document's jwks_uri is not a URL") from exc
    if not parts.hostname or parts.fragment or parts.scheme not in ("https", "http"):
        raise DiscoveryError("the discovery document's jwks_uri is not an absolute https URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise DiscoveryError("the discovery document's jwks_uri must use https (plain http is allowed on "
                             "loopback only)")
    return uri


class DiscoveredKeys:
    """A `KeySource` for an issuer whose `jwks_uri` is found by OIDC discovery; see the module docstring."""

    def __init__(self, issuer: str, *, client: httpx2.AsyncClient, parse: Callable[[Any], KeySet],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self._client = client
        self._parse = parse
        self._clock = clock
        self._keys: RemoteKeys | None = None
        self._retry_at = float("-inf")
        self._delay = RETRY_FIRST_S
        self._last_error = "not attempted"
        self._lock = asyncio.Lock()

    @property
    def jwks_uri(self) -> str | None:
        """The `jwks_uri` discovered, or None before a discovery has succeeded."""
        return self._keys.uri if self._keys is not None else None

    async def key_for(self, kid: str) -> VerificationKey:
        keys = self._keys
        if keys is None:
            async with self._lock:  # one discovery in flight
                if self._keys is None and self._clock() >= self._retry_at:
                    await self._discover()
            keys = self._keys
            if keys is None:
                raise KeySetUnavailable(f"OIDC discovery at {self.issuer} failed: {self._last_error}")
        return await keys.key_for(kid)

    async def _discover(self) -> None:
        url = configuration_url(self.issuer)
        try:
            uri = jwks_uri_of(json_document(await download(self._client, url)), issuer=self.issuer)
        except (httpx2.HTTPError, ValueError) as exc:
            self._retry_at = self._clock() + self._delay  # failures back off: no discovery storm
            self._delay = min(self._delay * 2, RETRY_MAX_S)
            self._last_error = str(exc) if isinstance(exc, DiscoveryError) else type(exc).__name__
            log.warning("oidc_discovery.failed", extra={"url": url, "error": str(exc),
                                                         "retry_in_s": self._retry_at - self._clock()})
            return
        self._keys = RemoteKeys(uri, client=self._client, parse=self._parse, clock=self._clock)
        log.info("oidc_discovery.found", extra={"issuer": self.issuer, "jwks_uri": uri})
