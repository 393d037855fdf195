"""DPoP at the resource-server verifier (RFC 9449 §4.3, §6, §7) against a real gateway: tokens minted with
a real proof at `/token`, each request then checked by `AccessTokenVerifier.verify_request`.

Each bad input of the reference's list (../shared/reference/rfc9449-dpop.md, "Bad inputs to test") that
applies to a resource server is refused with its typed error and scheme; the FastAPI dependency answers
with the matching challenge. The verifier gives no nonces (§9 is optional), so the nonce cases are the
token endpoint's (tests/gateway/test_dpop_token_endpoint.py).
"""

import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, FastAPI

from deputy_client.resource import (
    AccessTokenVerifier,
    InsufficientScope,
    InvalidDpopProof,
    InvalidToken,
    MalformedRequest,
    NoCredentials,
    VerifiedAccess,
)
from deputy_client.resource.dependency import require_scope
from deputy_client.resource.dpop import ReplayCache
from gateway.dev import DemoIdentities, DemoResource
from tests.support import ACCESS_TOKEN, GRANT, JWT, b64url, compact, free_port, gateway_process, hmac_signer, signer_for
from token_exchange.dpop import DpopKey, access_token_hash

MAIL = "https://mail.example.com"
AGENT = "spiffe://example.org/agents/mail"
WATCHER = "spiffe://example.org/rs/mail"
IDP = "https://idp.example.com"
URL = MAIL + "/messages"


@dataclass
class Env:
    client: httpx2.Client
    ids: DemoIdentities
    key: DpopKey

    def mint(self, *, bound: bool = True, scope: str = "mail.read") -> str:
        """An access token for MAIL, bound to `key` (a proof sent to `/token`) unless `bound` is False."""
        proof = self.key.proof("POST", self.ids.issuer + "/token")
        response = self.client.post("/token", headers={"DPoP": proof} if bound else {}, data={
            "grant_type": GRANT, "subject_token": self.ids.user_token("alice", scope="mail.read mail.send"),
            "subject_token_type": ACCESS_TOKEN, "actor_token": self.ids.svid(AGENT), "actor_token_type": JWT,
            "resource": MAIL, "scope": scope})
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == ("DPoP" if bound else "Bearer")
        return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ids = DemoIdentities(tmp_path_factory.mktemp("dpop-rs") / "deployment")
    data = {"access": {"grants": {AGENT: {MAIL: ["mail.read", "mail.send"]}}, "delegations": {IDP: {"alice": [AGENT]}}}}
    config = ids.create(listen=f"127.0.0.1:{free_port()}", idp=IDP, trust_domain="example.org", data=data,
                        resources=(DemoResource(MAIL, ("mail.read", "mail.send"), (WATCHER,)),))
    with gateway_process(config) as url, httpx2.Client(base_url=url, timeout=10) as client:
        yield Env(client, ids, DpopKey())


@pytest.fixture
async def verifier(env: Env) -> AsyncIterator[AccessTokenVerifier]:
    async with httpx2.AsyncClient(timeout=5) as client, AccessTokenVerifier(
        issuer=env.ids.issuer, audience=MAIL, client=client, svid=lambda: env.ids.svid(WATCHER),
        max_feed_staleness=60) as v:  # these tests are about proofs, not a feed slowed by a busy machine
        yield v


@pytest.fixture(scope="module")
def token(env: Env) -> str:
    return env.mint()


async def call(verifier: AccessTokenVerifier, authorization: list[str], dpop: list[str], *, method: str = "GET",
               url: str = URL, scope: str = "mail.read") -> VerifiedAccess:
    return await verifier.verify_request(authorization=authorization, dpop=dpop, method=method, url=url,
                                         required_scope=scope)


def forged(env: Env, token: str, header: dict[str, Any] | None = None, signer: Any = None, **claims: Any) -> str:
    """A proof for GET URL with `token`, built by hand (a header or claim given as None is left out)."""
    body = {"jti": secrets.token_urlsafe(16), "htm": "GET", "htu": URL, "iat": int(time.time()),
            "ath": access_token_hash(token), **claims}
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": env.key.public_jwk, **(header or {})}
    kept = [{k: v for k, v in part.items() if v is not None} for part in (head, body)]
    return compact(kept[0], kept[1], signer or signer_for("ES256", env.key.signing_key.private_key))


# --- Accepted (§7.1) --------------------------------------------------------------------------------------


async def test_rfc9449_7_1_a_bound_token_with_its_proof_is_accepted(env: Env, verifier: AccessTokenVerifier,
                                                                    token: str) -> None:
    access = await call(verifier, [f"DPoP {token}"], [env.key.proof("GET", URL, access_token=token)])
    assert (access.subject, access.dpop_bound, access.jkt) == ("alice", True, env.key.jkt)


async def test_rfc9449_4_3_htu_with_a_query_is_compared_without_it(env: Env, verifier: AccessTokenVerifier,
                                                                   token: str) -> None:
    proof = forged(env, token, htu=URL + "?page=2")
    assert (await call(verifier, [f"DPoP {token}"], [proof], url=URL + "?page=3")).dpop_bound


async def test_rfc9449_7_1_a_bearer_token_still_works_as_bearer(env: Env, verifier: AccessTokenVerifier) -> None:
    access = await call(verifier, [f"Bearer {env.mint(bound=False)}"], [])
    assert (access.dpop_bound, access.jkt) == (False, None)


# --- Refused ----------------------------------------------------------------------------------------------

Forge = Callable[[Env, str], list[str]]


def _private_jwk(env: Env, token: str) -> list[str]:
    d = b64url(env.key.signing_key.private_key.private_numbers().private_value.to_bytes(32, "big"))
    return [forged(env, token, {"jwk": {**env.key.public_jwk, "d": d}})]


BAD_PROOFS: list[tuple[str, Forge, str]] = [
    ("no_proof", lambda e, t: [], "needs a DPoP proof header"),
    ("two_dpop_headers", lambda e, t: [e.key.proof("GET", URL, access_token=t)] * 2, "more than one DPoP header"),
    ("jwk_with_d", _private_jwk, "holds private key material (d)"),
    ("alg_none", lambda e, t: [forged(e, t, {"alg": "none"}, signer=b"")], "algorithm 'none' is not allowed"),
    ("alg_hs256", lambda e, t: [forged(e, t, {"alg": "HS256"}, signer=hmac_signer(b"k" * 32))],
     "algorithm 'HS256' is not allowed"),
    ("typ_jwt", lambda e, t: [forged(e, t, {"typ": "JWT"})], "typ must be dpop+jwt"),
    ("typ_missing", lambda e, t: [forged(e, t, {"typ": None})], "typ must be dpop+jwt"),
    ("htm_post_on_get", lambda e, t: [forged(e, t, htm="POST")], "htm does not match the request method GET"),
    ("htu_other_scheme", lambda e, t: [forged(e, t, htu=URL.replace("https:", "http:"))], "htu does not match"),
    ("htu_other_host", lambda e, t: [forged(e, t, htu=URL.replace("mail.", "docs."))], "htu does not match"),
    ("htu_other_port", lambda e, t: [forged(e, t, htu=URL.replace(".com/", ".com:8443/"))], "htu does not match"),
    ("htu_other_path", lambda e, t: [forged(e, t, htu=MAIL + "/admin")], "htu does not match"),
    ("iat_far_past", lambda e, t: [forged(e, t, iat=int(time.time()) - 3600)], "iat is outside the accepted window"),
    ("iat_far_future", lambda e, t: [forged(e, t, iat=int(time.time()) + 600)], "iat is outside the accepted window"),
    ("jti_of_10_kb", lambda e, t: [forged(e, t, jti="j" * 10_000)], "jti claim is required: a string of 1 to 256"),
    ("no_ath", lambda e, t: [forged(e, t, ath=None)], "ath is missing or is not the hash"),
    ("wrong_ath", lambda e, t: [forged(e, t, ath=access_token_hash(t + "x"))], "ath is missing or is not the hash"),
    ("proof_key_is_not_cnf_jkt", lambda e, t: [DpopKey().proof("GET", URL, access_token=t)],
     "not the one the token is bound to (cnf.jkt)"),
    ("signed_by_another_key", lambda e, t: [forged(e, t, signer=signer_for("ES256", ec.generate_private_key(
        ec.SECP256R1())))], "signature rejected"),
]


@pytest.mark.parametrize(("case", "forge", "names"), BAD_PROOFS, ids=[c[0] for c in BAD_PROOFS])
async def test_rfc9449_7_1_bad_proofs_are_invalid_dpop_proof(env: Env, verifier: AccessTokenVerifier, token: str,
                                                             case: str, forge: Forge, names: str) -> None:
    with pytest.raises(InvalidDpopProof, match=re.escape(names)) as caught:
        await call(verifier, [f"DPoP {token}"], forge(env, token))
    assert (caught.value.status, caught.value.scheme) == (401, "DPoP")


async def test_rfc9449_11_1_a_proof_is_accepted_once(env: Env, verifier: AccessTokenVerifier, token: str) -> None:
    proof = env.key.proof("GET", URL, access_token=token)
    await call(verifier, [f"DPoP {token}"], [proof])
    with pytest.raises(InvalidDpopProof, match="jti was already used"):
        await call(verifier, [f"DPoP {token}"], [proof])


async def test_rfc9449_7_2_a_bound_token_sent_as_bearer_is_refused(verifier: AccessTokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken, match=r"section 7\.2") as caught:
        await call(verifier, [f"Bearer {token}"], [])
    assert caught.value.scheme == "Bearer"
    with pytest.raises(InvalidToken, match=r"section 7\.2"):  # the Bearer-only entry point too
        await verifier.verify(token, "mail.read")


@pytest.mark.parametrize("credentials", [
    lambda e, t: ([f"Bearer {t}", f"DPoP {t}"], [e.key.proof("GET", URL, access_token=t)]),
    lambda e, t: ([f"Bearer {e.mint(bound=False)}"], [e.key.proof("GET", URL)]),
    lambda e, t: ([f"DPoP {t}, Bearer {t}"], [e.key.proof("GET", URL, access_token=t)]),
], ids=["two_authorization_headers", "bearer_with_a_proof", "two_schemes_in_one_header"])
async def test_rfc9449_7_2_credentials_sent_both_ways_are_invalid_request(
        env: Env, verifier: AccessTokenVerifier, token: str,
        credentials: Callable[[Env, str], tuple[list[str], list[str]]]) -> None:
    authorization, dpop = credentials(env, token)
    with pytest.raises(MalformedRequest) as caught:
        await call(verifier, authorization, dpop)
    assert (caught.value.status, caught.value.error) == (400, "invalid_request")


async def test_rfc9449_7_1_an_unbound_token_sent_as_dpop_is_refused(env: Env, verifier: AccessTokenVerifier) -> None:
    bearer = env.mint(bound=False)
    with pytest.raises(InvalidToken, match="not DPoP-bound") as caught:
        await call(verifier, [f"DPoP {bearer}"], [env.key.proof("GET", URL, access_token=bearer)])
    assert caught.value.scheme == "DPoP"


async def test_rfc6750_3_1_no_credentials_and_insufficient_scope(env: Env, verifier: AccessTokenVerifier,
                                                                 token: str) -> None:
    with pytest.raises(NoCredentials):
        await call(verifier, [], [])
    with pytest.raises(NoCredentials):  # RFC 6750 section 3.1: another scheme is no attempt at these
        await call(verifier, [f"Basic {token}"], [])
    with pytest.raises(InsufficientScope) as caught:
        await call(verifier, [f"DPoP {token}"], [env.key.proof("GET", URL, access_token=token)], scope="mail.send")
    assert caught.value.scheme == "DPoP"


def test_rfc9449_11_1_the_replay_cache_is_bounded_and_forgets_expired_proofs() -> None:
    cache = ReplayCache(max_entries=2)
    values = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    assert cache.first_use(values[0], until=100, now=0) and not cache.first_use(values[0], until=100, now=1)
    assert cache.first_use(values[1], until=100, now=1) and cache.first_use(values[2], until=100, now=1)
    assert cache.first_use(values[0], until=100, now=2)  # pushed out, oldest first, by the bound
    assert not cache.first_use(values[2], until=100, now=50)  # still within its window
    assert cache.first_use(values[2], until=300, now=100)  # its window has passed: forgotten


# --- The FastAPI dependency's challenges (§7.1) -----------------------------------------------------------


async def test_rfc9449_7_1_fastapi_dependency_answers_with_dpop_challenges(env: Env, verifier: AccessTokenVerifier,
                                                                           token: str) -> None:
    app = FastAPI()
    reading = require_scope(verifier, "mail.read", public_origin=MAIL)

    @app.get("/messages")
    async def messages(access: Annotated[VerifiedAccess, Depends(reading)]) -> dict[str, Any]:
        return {"user": access.subject, "jkt": access.jkt}

    def dpop(proof: str) -> dict[str, str]:
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://rs.internal") as client:
        ok = await client.get("/messages", headers=dpop(env.key.proof("GET", URL, access_token=token)))
        assert (ok.status_code, ok.json()) == (200, {"user": "alice", "jkt": env.key.jkt})
        bad = await client.get("/messages", headers=dpop(env.key.proof("GET", URL)))  # no ath
        challenge = bad.headers["www-authenticate"]
        assert bad.status_code == 401 and challenge.startswith('DPoP error="invalid_dpop_proof"'), challenge
        assert 'algs="' in challenge and "ES256" in challenge and "none" not in challenge
        assert challenge.endswith(", Bearer")  # the other scheme, offered bare
        as_bearer = await client.get("/messages", headers={"Authorization": f"Bearer {token}"})
        assert as_bearer.status_code == 401
        assert as_bearer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert ', DPoP algs="' in as_bearer.headers["www-authenticate"]
        both = await client.get("/messages", headers=[("Authorization", f"Bearer {token}"),
                                                      ("Authorization", f"DPoP {token}")])
        assert (both.status_code, both.json()["detail"]["error"]) == (400, "invalid_request")
