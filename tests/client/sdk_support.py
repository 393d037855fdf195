"""Real parts for the SDK's tests: a gateway with a short-lived resource and a sub-agent the mail agent may
delegate to, a counting httpx2 transport, a loopback API that records what it is sent, and a loopback proxy
that answers 503 a given number of times before forwarding."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jwt

from tests.conftest import HELPER_AGENT, MAIL_AGENT, POLICY_DATA, Deployment, deployed
from tests.support import LoopbackServer, QuietHandler

SHORT = "https://short.example.com"  # its tokens live SHORT_TTL seconds: near-expiry minting
SHORT_TTL = 3
HELPER = "/agents/helper"  # the sub-agent's SVID path in the deployment's trust domain
API = "https://api.example.com"  # a resource with a resource server that follows revocations (API_SERVER)
API_SERVER = "/rs/api"

_namespace = next(iter(POLICY_DATA))
SDK_POLICY_DATA = copy.deepcopy(POLICY_DATA)
SDK_POLICY_DATA[_namespace]["grants"][MAIL_AGENT][SHORT] = ["short.read"]
SDK_POLICY_DATA[_namespace]["grants"][MAIL_AGENT][API] = ["api.read"]
SDK_POLICY_DATA[_namespace]["subagents"] = {MAIL_AGENT: [HELPER_AGENT]}

SDK_CONFIG = f"""
[[resources]]
audience = "{SHORT}"
scopes = ["short.read"]
max_ttl = {SHORT_TTL}

[[resources]]
audience = "{API}"
scopes = ["api.read"]
max_ttl = 300
clients = ["spiffe://example.org{API_SERVER}"]
"""


@contextmanager
def sdk_deployment(directory: Path) -> Iterator[Deployment]:
    with deployed(directory, extra=SDK_CONFIG, policy_files={"data.json": json.dumps(SDK_POLICY_DATA)}) as running:
        yield running


class Counting(httpx2.AsyncBaseTransport):
    """Real HTTP, with every request the SDK sends to the gateway recorded as (method, path)."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.sent: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def count(self, path: str = "/token") -> int:
        return sum(1 for _, p in self.sent if p == path)


@dataclass
class RecordingApi:
    """A loopback API answering 200 to anything, recording each request's headers; `challenge` makes it ask
    for a DPoP nonce once (401 with `use_dpop_nonce`)."""

    seen: list[dict[str, str]] = field(default_factory=list)
    challenge: str | None = None

    def __post_init__(self) -> None:
        api = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                api.seen.append({k.lower(): v for k, v in self.headers.items()})
                if api.challenge is not None:
                    nonce, api.challenge = api.challenge, None
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'DPoP error="use_dpop_nonce"')
                    self.send_header("DPoP-Nonce", nonce)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.url

    def close(self) -> None:
        self.loopback.close()


class FlakyProxy:
    """A loopback forward proxy (RFC 9112 §3.2.2 absolute-form targets): answers the first `failures` requests
    (to `path`, if given) with `status` and `headers`, then forwards each to its target. `seen`: the headers
    of every request it got."""

    def __init__(self, failures: int, *, status: int = 503, headers: dict[str, str] | None = None,
                 body: bytes = b"", path: str | None = None) -> None:
        self.failures, self.attempts = failures, 0
        self.seen: list[dict[str, str]] = []
        proxy = self

        class Handler(QuietHandler):
            def _relay(self) -> None:
                proxy.attempts += 1
                proxy.seen.append({k.lower(): v for k, v in self.headers.items()})
                content = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if proxy.failures > 0 and (path is None or self.path.endswith(path)):
                    proxy.failures -= 1
                    self.send_response(status)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx2.request(self.command, self.path, content=content, headers=forwarded)
                self.send_response(answer.status_code)
                for name in ("content-type", "cache-control", "www-authenticate"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _relay

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.url

    def close(self) -> None:
        self.loopback.close()


def verified_claims(deployment: Deployment, token: str, audience: str) -> dict[str, Any]:
    """The claims of an access token, its signature checked with the gateway's published keys."""
    jwks = deployment.client.get("/.well-known/jwks.json").json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
    return dict(jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=audience,
                           issuer=deployment.issuer))


def task_state(deployment: Deployment, task_id: str) -> str:
    return str(deployment.rows("SELECT state FROM tasks WHERE id = ?", task_id)[0]["state"])

