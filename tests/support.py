"""Real parts for tests: identity providers and SPIFFE trust domains with generated keys, a JWKS server
on loopback, and a gateway process started from a deputy.toml."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from token_exchange.signing import SigningKey

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Issuer:
    """An identity provider (or SPIFFE trust domain) with a real ES256 key."""

    name: str
    key: SigningKey = field(default_factory=lambda: SigningKey.generate("ES256"))
    use: str | None = None

    def jwks(self) -> dict[str, Any]:
        jwk = dict(self.key.public_jwk)
        if self.use:
            jwk["use"] = self.use
            jwk.pop("alg", None)
        return {"keys": [jwk]}

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None, key: Any = None) -> str:
        return jwt.encode(
            claims,
            key or self.key.private_key,
            algorithm="ES256",
            headers={"kid": self.key.kid, **(headers or {})},
        )


@dataclass
class UserIdp(Issuer):
    def token(self, sub: str = "alice", *, audience: str, scope: str = "mail.read mail.send", ttl: int = 600,
              **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.name, "sub": sub, "aud": audience, "scope": scope, "iat": now, "exp": now + ttl}
        return self.sign({**body, **claims})


@dataclass
class TrustDomain(Issuer):
    use: str | None = "jwt-svid"

    def svid(self, path: str = "/agents/mail", *, audience: str, ttl: int = 300, sub: str | None = None,
             **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": sub or f"spiffe://{self.name}{path}", "aud": [audience], "iat": now, "exp": now + ttl}
        return self.sign({**body, **claims}, headers={"typ": "JWT"})


class JwksServer:
    """Serves JSON documents by path on loopback; documents can be changed while it runs."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        documents, hits = self.documents, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hits[self.path] = hits.get(self.path, 0) + 1
                if self.path not in documents:
                    self.send_error(404)
                    return
                body = json.dumps(documents[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@contextmanager
def gateway_process(config: Path, *, workers: int = 1, timeout: float = 20.0) -> Iterator[str]:
    """Run `deputy serve --config` as a real process; yield its base URL once /healthz answers."""
    text = config.read_text()
    listen = next(line.split("=")[1].strip().strip('"') for line in text.splitlines() if line.startswith("listen"))
    url = f"http://{listen}"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"gateway exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start in time")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
