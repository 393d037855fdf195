"""`deputy login`: an admin's user token from the identity provider by the device authorization grant
(RFC 8628), kept 0600 under the user's config directory for the gateway it was asked for."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from token_exchange.rfc8414 import origin, well_known_path

from .admin_http import ApiFailure

DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 §3.4
SLOW_DOWN_STEP = 5  # §3.5: the interval grows by 5 seconds at each slow_down


def token_store() -> Path:
    """Where `deputy login` keeps its tokens: $XDG_CONFIG_HOME/deputy/tokens.json (~/.config by default)."""
    home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(home) / "deputy" / "tokens.json"


def stored_token(addr: str, *, now: int) -> str | None:
    """The token `deputy login` stored for the gateway at `addr`, if any; an expired one is an error."""
    entry = _stored().get(addr.rstrip("/"))
    if not isinstance(entry, dict) or not isinstance(entry.get("access_token"), str):
        return None
    expires_at = entry.get("expires_at")
    if isinstance(expires_at, int) and expires_at <= now:
        raise ApiFailure(f"the token from `deputy login` for {addr} has expired: run `deputy login` again")
    return str(entry["access_token"])


def store_token(addr: str, token: dict[str, Any], *, now: int) -> Path:
    """Keep `token` (a token response) for `addr`, readable by this user only."""
    entries = _stored()
    lifetime = token.get("expires_in")
    entries[addr.rstrip("/")] = {"access_token": token["access_token"],
                                 "expires_at": now + int(lifetime) if isinstance(lifetime, int) else None}
    path = token_store()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # before any token is written: an existing file keeps its mode on open
    with os.fdopen(descriptor, "w") as out:
        json.dump(entries, out, indent=2)
    return path


def _stored() -> dict[str, Any]:
    try:
        entries = json.loads(token_store().read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


class DeviceLogin:
    """RFC 8628 against the identity provider `issuer`, as the public client `client_id`, for a token whose
    audience is `resource` (RFC 8707: the gateway's `[admin] audience`)."""

    def __init__(self, client: httpx2.Client, issuer: str, client_id: str, resource: str, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.issuer, self.client_id, self.sleep = client, issuer.rstrip("/"), client_id, sleep
        self.resource = resource

    def endpoints(self) -> tuple[str, str]:
        """The device authorization and token endpoints from the IdP's metadata (OpenID Connect Discovery,
        else RFC 8414); says so when it offers no device grant (§4: `device_authorization_endpoint`)."""
        for path in ("/.well-known/openid-configuration", well_known_path(self.issuer)):
            url = self.issuer + path if path.startswith("/.well-known/openid") else origin(self.issuer) + path
            metadata = self._json("GET", url, None, quiet=True)
            if metadata is not None:
                break
        else:
            raise ApiFailure(f"no OpenID or OAuth metadata at {self.issuer}: is it the identity provider?")
        device = metadata.get("device_authorization_endpoint")
        if not isinstance(device, str) or not isinstance(metadata.get("token_endpoint"), str):
            raise ApiFailure(f"the identity provider {self.issuer} offers no device authorization grant "
                             "(RFC 8628): give its token with DEPUTY_TOKEN or --token-file instead")
        return device, str(metadata["token_endpoint"])

    def start(self, device_endpoint: str, scope: str | None) -> dict[str, Any]:
        """§3.1-3.2: the device code, user code and where the admin goes to approve."""
        form = {"client_id": self.client_id, "resource": self.resource, **({"scope": scope} if scope else {})}
        started = self._json("POST", device_endpoint, form)
        if started is None or not all(isinstance(started.get(k), str) for k in
                                      ("device_code", "user_code", "verification_uri")):
            raise ApiFailure(f"{device_endpoint} answered no device_code, user_code and verification_uri")
        return started

    def poll(self, token_endpoint: str, started: dict[str, Any]) -> dict[str, Any]:
        """§3.4-3.5: ask for the token every `interval` seconds until approved, refused or expired."""
        interval = int(started.get("interval") or 5)
        deadline = time.monotonic() + int(started.get("expires_in") or 600)
        form = {"grant_type": DEVICE_CODE, "device_code": started["device_code"], "client_id": self.client_id,
                "resource": self.resource}
        while time.monotonic() < deadline:
            self.sleep(interval)
            response = self.client.post(token_endpoint, data=form)
            body = _body(response)
            if response.is_success and isinstance(body.get("access_token"), str):
                return body
            error = body.get("error")
            if error == "slow_down":
                interval += SLOW_DOWN_STEP
            elif error != "authorization_pending":
                raise ApiFailure(f"login refused: {error or response.status_code}: "
                                 f"{body.get('error_description', '')}".rstrip(": "))
        raise ApiFailure("login not approved in time (expired_token): run `deputy login` again")

    def _json(self, method: str, url: str, form: dict[str, str] | None, *, quiet: bool = False
              ) -> dict[str, Any] | None:
        try:
            response = self.client.request(method, url, data=form)
        except httpx2.HTTPError as exc:
            raise ApiFailure(f"cannot reach the identity provider at {url}: {exc}") from exc
        body = _body(response)
        if response.is_success and body:
            return body
        if quiet:
            return None
        raise ApiFailure(f"{url}: HTTP {response.status_code} {body.get('error', '')}".rstrip())


def _body(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}

