"""Real parts for tests: identity providers and SPIFFE trust domains with generated keys, a JWKS server
on loopback, a gateway process started from a deputy.toml, and a hand-rolled JWS builder for attacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import jwt

from gateway.process import gateway_process as shared_gateway_process
from token_exchange.signing import SigningKey

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"

# RFC 6749 §5.2: error and error_description stay within %x20-21 / %x23-5B / %x5D-7E.
RFC6749_CHARSET = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def b64url(data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


Signer = Callable[[bytes], bytes]


def compact(header: dict[str, Any], claims: dict[str, Any], signer: Signer | bytes = b"not-a-signature") -> str:
    """A compact JWS built by hand, so headers and algorithms can be anything an attacker likes."""
    signing_input = f"{b64url(header)}.{b64url(claims)}".encode()
    signature = signer(signing_input) if callable(signer) else signer
    return f"{signing_input.decode()}.{b64url(signature)}"


def signer_for(algorithm: str, private_key: Any) -> Signer:
    """A JWS signer for any pyjwt algorithm, whatever the header will claim."""
    implementation = jwt.get_algorithm_by_name(algorithm)
    return lambda message: implementation.sign(message, private_key)


def hmac_signer(secret: bytes) -> Signer:
    """HS256 keyed with `secret` (the classic attack: the verifier's public key as HMAC secret)."""
    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


@dataclass
class Issuer:
    """An identity provider (or SPIFFE trust domain) with a real ES256 key."""

    name: str
    key: SigningKey = field(default_factory=lambda: SigningKey.generate("ES256"))
    use: str | None = None
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        jwk = dict(self.key.public_jwk)
        if self.use:
            jwk["use"] = self.use
            jwk.pop("alg", None)
        return {"keys": [jwk, *self.extra_jwks]}

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None, key: Any = None) -> str:
        return jwt.encode(
            claims,
            key or self.key.private_key,
            algorithm="ES256",
            headers={"kid": self.key.kid, **(headers or {})},
        )


@dataclass
class UserIdp(Issuer):
    def claims(self, sub: str = "alice", *, audience: str, scope: str = "mail.read mail.send", ttl: int = 600,
               **claims: Any) -> dict[str, Any]:
        now = int(time.time())
        body = {"iss": self.name, "sub": sub, "aud": audience, "scope": scope, "iat": now, "exp": now + ttl}
        return {k: v for k, v in {**body, **claims}.items() if v is not None}

    def token(self, sub: str = "alice", *, audience: str, scope: str = "mail.read mail.send", ttl: int = 600,
              **claims: Any) -> str:
        return self.sign(self.claims(sub, audience=audience, scope=scope, ttl=ttl, **claims))


@dataclass
class TrustDomain(Issuer):
    use: str | None = "jwt-svid"

    def claims(self, path: str = "/agents/mail", *, audience: str, ttl: int = 300, sub: str | None = None,
               **claims: Any) -> dict[str, Any]:
        now = int(time.time())
        body = {"sub": sub or f"spiffe://{self.name}{path}", "aud": [audience], "iat": now, "exp": now + ttl}
        return {k: v for k, v in {**body, **claims}.items() if v is not None}

    def svid(self, path: str = "/agents/mail", *, audience: str, ttl: int = 300, sub: str | None = None,
             **claims: Any) -> str:
        return self.sign(self.claims(path, audience=audience, ttl=ttl, sub=sub, **claims), headers={"typ": "JWT"})


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean (no access log on stderr)."""

    def log_message(self, *args: Any) -> None:
        pass

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class LoopbackServer:
    """`handler` served on a free loopback port by a daemon thread, until `close`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class JwksServer(LoopbackServer):
    """Serves JSON documents by path on loopback (a `bytes` document as it is, for bodies that are not JSON);
    documents can be changed while it runs."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        documents, hits = self.documents, self.hits

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                hits[self.path] = hits.get(self.path, 0) + 1
                if self.path not in documents:
                    self.send_error(404)
                    return
                document = documents[self.path]
                body = document if isinstance(document, bytes) else json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def feed_head(client: httpx2.Client, svid: str) -> int:
    """The cursor past every revocation-feed event the holder of `svid` may be told about now."""
    cursor = 0
    while True:
        response = client.get("/revocations", params={"since": cursor}, headers={"Authorization": f"Bearer {svid}"})
        assert response.status_code == 200, response.text
        if not response.json()["events"]:
            return int(response.json()["next"])
        cursor = response.json()["next"]


def deputy_command(*args: str) -> list[str]:
    """The `deputy` console command of this interpreter's environment."""
    return [sys.executable, "-m", "gateway.cli", *args]


def gateway_log(config: Path) -> Path:
    """Where `gateway_process` writes the gateway's stdout and stderr."""
    return config.with_suffix(".log")


@contextmanager
def gateway_process(config: Path, *, workers: int = 1, timeout: float = 20.0, log_level: str = "warning"
                    ) -> Iterator[str]:
    """Run `deputy serve --config` as a real process; yield its base URL once /healthz answers.

    Output goes to a file beside the config (`gateway_log`), never to a pipe nobody reads."""
    text = config.read_text()
    listen = next(line.split("=")[1].strip().strip('"') for line in text.splitlines() if line.startswith("listen"))
    url = f"http://{listen}"
    with shared_gateway_process(config, url, workers=workers, log=gateway_log(config), timeout=timeout,
                                log_level=log_level):
        yield url


ATTESTATION_TYP, POP_TYP = "oauth-client-attestation+jwt", "oauth-client-attestation-pop+jwt"
DEFAULT_IMAGE = "sha256:5bd11fb71be1c450f4502959e8bad254868731ff2bfb0210302429e8625b031b"  # policies/data.json


@dataclass
class AgentInstance:
    """An agent instance with its key, and the attester that vouches for it, with real ES256 keys: the
    client attestation and PoP JWTs they sign (draft-ietf-oauth-attestation-based-client-auth-10 §4, §5.1),
    healthy by default (debug disabled, the image the packaged policy allows). `now`: the time they are
    made at (the current time when None)."""

    agent: str
    audience: str  # Deputy's issuer, the PoP's aud
    attester: SigningKey = field(default_factory=lambda: SigningKey.generate("ES256"))
    key: SigningKey = field(default_factory=lambda: SigningKey.generate("ES256"))
    now: int | None = None

    def time(self) -> int:
        return self.now if self.now is not None else int(time.time())

    def attester_jwks(self) -> dict[str, Any]:
        return {"keys": [self.attester.public_jwk]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Claims of the attestation; a claim given as None is left out."""
        now, public = self.time(), {k: v for k, v in self.key.public_jwk.items() if k not in ("kid", "use")}
        body = {"sub": self.agent, "iat": now - 10, "exp": now + 300, "cnf": {"jwk": public}, "dbgstat": "disabled",
                "image_digest": DEFAULT_IMAGE, "swname": "mail-agent", "swversion": ["1.2.0"]}
        return {k: v for k, v in {**body, **overrides}.items() if v is not None}

    def attestation(self, header: dict[str, Any] | None = None, key: SigningKey | None = None, **claims: Any) -> str:
        signer = key or self.attester
        headers = {"typ": ATTESTATION_TYP, "kid": signer.kid, **(header or {})}
        return jwt.encode(self.claims(**claims), signer.private_key, algorithm=signer.algorithm, headers=headers)

    def pop_claims(self, **overrides: Any) -> dict[str, Any]:
        body = {"aud": self.audience, "iat": self.time(), "jti": secrets.token_urlsafe(16)}
        return {k: v for k, v in {**body, **overrides}.items() if v is not None}

    def pop(self, header: dict[str, Any] | None = None, key: SigningKey | None = None, **claims: Any) -> str:
        signer = key or self.key
        headers = {"typ": POP_TYP, **(header or {})}
        return jwt.encode(self.pop_claims(**claims), signer.private_key, algorithm=signer.algorithm, headers=headers)

    def headers(self, attestation: str | None = None, pop: str | None = None) -> dict[str, str]:
        return {"OAuth-Client-Attestation": attestation or self.attestation(), "OAuth-Client-Attestation-PoP":
                pop or self.pop()}


def until(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "", log: Path | None = None) -> Any:
    """Poll `condition` every 20 ms until it returns something truthy; that value, or AssertionError naming
    `what` (with the `log` file's text, when given)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            shown = f":\n{log.read_text()}" if log else ""
            raise AssertionError(f"timed out waiting for {what or condition}{shown}")
        time.sleep(0.02)
    return value
