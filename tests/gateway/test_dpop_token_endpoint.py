"""DPoP at the token endpoint over real HTTP (RFC 9449 §5, §6, §8): real gateway processes, real keys.

A valid proof binds the minted access token to its key (`cnf.jkt`, `token_type: DPoP`); each bad input of
the reference's list (../shared/reference/rfc9449-dpop.md, "Bad inputs to test") that applies to a token
endpoint is refused with 400 `invalid_dpop_proof` (or `use_dpop_nonce`), a description naming the check,
nothing issued, and the refusal audited. The resource-server cases (`ath`, `cnf.jkt`, schemes) are in
tests/client/test_dpop_verifier.py.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.openapi import IntrospectionBody
from tests.conftest import MAIL, MAIL_AGENT, POLICY_DATA, Deployment, Probe, deployed, make_setup, running
from tests.gateway.test_posture import posture_setup
from tests.support import GRANT, JWT, AgentInstance, compact, gateway_process, hmac_signer, signer_for
from token_exchange.dpop import DpopKey
from token_exchange.dpop_nonces import PERIOD_S, DpopNonces
from token_exchange.signing import SigningKey

SECURE = "https://secure.example.com"  # require_dpop = true
SECURE_RS = "spiffe://example.org/rs/secure"  # a client of SECURE: introspects its tokens
EXTRA = f"""
[[resources]]
audience = "{SECURE}"
scopes = ["secure.read"]
require_dpop = true
clients = ["{SECURE_RS}"]
"""


def policy_data() -> str:
    data = copy.deepcopy(POLICY_DATA)
    next(iter(data.values()))["grants"][MAIL_AGENT][SECURE] = ["secure.read"]
    return json.dumps(data)


class DpopGateway:
    """A deployment and one agent instance's DPoP key; proofs for its `/token` (the issuer's, §5)."""

    def __init__(self, deployment: Deployment) -> None:
        self.d, self.key = deployment, DpopKey()
        self.token_url = deployment.issuer + "/token"

    def proof(self, **kw: Any) -> str:
        return self.key.proof("POST", self.token_url, **kw)

    def forged(self, header: dict[str, Any] | None = None, signer: Any = None, **claims: Any) -> str:
        """A proof built by hand: any header and claims (a claim given as None is left out)."""
        body = {"jti": secrets.token_urlsafe(16), "htm": "POST", "htu": self.token_url, "iat": int(time.time()),
                **claims}
        head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.key.public_jwk, **(header or {})}
        kept = [{k: v for k, v in part.items() if v is not None} for part in (head, body)]
        return compact(kept[0], kept[1], signer or signer_for("ES256", self.key.signing_key.private_key))

    def exchange(self, *proofs: str, **form: Any) -> httpx2.Response:
        return self.d.client.post("/token", data=self.d.exchange_form(**form), headers=[("DPoP", p) for p in proofs])

    def secure(self, *proofs: str) -> httpx2.Response:
        """An exchange for the resource that requires DPoP."""
        return self.exchange(*proofs, resource=SECURE, scope="secure.read",
                             subject_token=self.d.user_token(scope="mail.read secure.read"))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpopGateway]:
    with deployed(tmp_path_factory.mktemp("dpop"), extra=EXTRA, policy_files={"data.json": policy_data()}) as d:
        yield DpopGateway(d)


@pytest.fixture(scope="module")
def nonce_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpopGateway]:
    with deployed(tmp_path_factory.mktemp("dpop-nonces"), extra="\n[dpop]\nnonces = true\n") as d:
        yield DpopGateway(d)


@pytest.fixture
def probe(gw: DpopGateway) -> Probe:
    return Probe(gw.d, gw.d.issued_count(), len(gw.d.audit()))


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def refused_and_audited(probe: Probe, response: httpx2.Response, error: str, names: str) -> None:
    probe.refused(response, 400, error, names=names)
    [event] = probe.new_audit()
    assert (event["outcome"], event["error"]) == ("refused", error)


# --- Binding (§5, §6.1) and metadata (§5.1) ---------------------------------------------------------------


def test_rfc9449_5_a_valid_proof_binds_the_access_token_to_its_key(gw: DpopGateway, probe: Probe) -> None:
    body = probe.granted(gw.exchange(gw.proof()))
    assert body["token_type"] == "DPoP"  # §5
    assert claims_of(body["access_token"])["cnf"] == {"jkt": gw.key.jkt}  # §6.1: RFC 7638 thumbprint


def test_rfc9449_5_without_a_proof_the_token_is_a_bearer_token(gw: DpopGateway, probe: Probe) -> None:
    body = probe.granted(gw.exchange())
    assert body["token_type"] == "Bearer" and "cnf" not in claims_of(body["access_token"])


def test_rfc9449_4_3_htu_with_a_query_is_compared_without_it(gw: DpopGateway, probe: Probe) -> None:
    body = probe.granted(gw.exchange(gw.forged(htu=gw.token_url + "?x=1#frag")))
    assert body["token_type"] == "DPoP"


def test_rfc9449_5_1_metadata_lists_the_proof_algorithms(gw: DpopGateway) -> None:
    algs = gw.d.client.get("/.well-known/oauth-authorization-server").json()["dpop_signing_alg_values_supported"]
    assert "ES256" in algs and "none" not in algs and not any(a.startswith("HS") for a in algs)


def test_rfc9449_6_2_introspection_returns_cnf_and_token_type_dpop(gw: DpopGateway) -> None:
    token = gw.secure(gw.proof()).json()["access_token"]
    response = gw.d.client.post("/introspect", data={"token": token},
                                headers={"Authorization": f"Bearer {gw.d.svid('/rs/secure')}"})
    body = response.json()
    assert (body["active"], body["token_type"], body["cnf"]) == (True, "DPoP", {"jkt": gw.key.jkt})
    IntrospectionBody.model_validate(body)  # extra="forbid": the OpenAPI document describes cnf too


def test_rfc9449_5_2_require_dpop_refuses_an_exchange_without_a_proof(gw: DpopGateway, probe: Probe) -> None:
    refused_and_audited(probe, gw.secure(), "invalid_request",
                        "requires DPoP-bound tokens")


def test_rfc9449_5_2_require_dpop_grants_a_bound_token_and_the_policy_sees_it(gw: DpopGateway, probe: Probe
                                                                              ) -> None:
    body = probe.granted(gw.secure(gw.proof()))
    assert body["token_type"] == "DPoP"
    [event] = probe.new_audit()
    assert json.loads(event["policy_input"])["request"]["dpop_bound"] is True


def test_rfc9449_5_the_policy_sees_an_unbound_request(gw: DpopGateway, probe: Probe) -> None:
    probe.granted(gw.exchange())
    [event] = probe.new_audit()
    assert json.loads(event["policy_input"])["request"]["dpop_bound"] is False


def test_rfc9449_11_1_the_same_proof_is_accepted_once(gw: DpopGateway) -> None:
    proof = gw.proof()
    assert gw.exchange(proof).status_code == 200
    probe = Probe(gw.d, gw.d.issued_count(), len(gw.d.audit()))
    refused_and_audited(probe, gw.exchange(proof), "invalid_dpop_proof", "jti was already used")


# --- Bad proofs (§4.3) ------------------------------------------------------------------------------------

Forge = Callable[[DpopGateway], list[str]]


def _private_jwk(g: DpopGateway) -> list[str]:
    numbers = g.key.signing_key.private_key.private_numbers()
    d = jwt.utils.base64url_encode(numbers.private_value.to_bytes(32, "big")).decode()
    return [g.forged({"jwk": {**g.key.public_jwk, "d": d}})]


def _other_key(g: DpopGateway) -> list[str]:  # signed by one key, naming another in `jwk`
    return [g.forged(signer=signer_for("ES256", ec.generate_private_key(ec.SECP256R1())))]


BAD: list[tuple[str, Forge, str]] = [
    ("two_dpop_headers", lambda g: [g.proof(), g.proof()], "more than one DPoP header"),
    ("jwk_with_d", _private_jwk, "holds private key material (d)"),
    ("alg_none", lambda g: [g.forged({"alg": "none"}, signer=b"")], "algorithm 'none' is not allowed"),
    ("alg_hs256", lambda g: [g.forged({"alg": "HS256"}, signer=hmac_signer(b"k" * 32))],
     "algorithm 'HS256' is not allowed"),
    ("typ_jwt", lambda g: [g.forged({"typ": "JWT"})], "typ must be dpop+jwt"),
    ("typ_missing", lambda g: [g.forged({"typ": None})], "typ must be dpop+jwt"),
    ("no_jwk", lambda g: [g.forged({"jwk": None})], "jwk header must be a JSON object"),
    ("signature_by_another_key", _other_key, "signature rejected"),
    ("htm_get_on_post", lambda g: [g.forged(htm="GET")], "htm does not match the request method POST"),
    ("htu_other_scheme", lambda g: [g.forged(htu=g.token_url.replace("http:", "https:"))], "htu does not match"),
    ("htu_other_host", lambda g: [g.forged(htu=g.token_url.replace("127.0.0.1", "localhost"))],
     "htu does not match"),
    ("htu_other_port", lambda g: [g.forged(htu=g.token_url.replace(f":{g.d.issuer.rpartition(':')[2]}", ":1"))],
     "htu does not match"),
    ("htu_other_path", lambda g: [g.forged(htu=g.d.issuer + "/introspect")], "htu does not match"),
    ("iat_far_past", lambda g: [g.forged(iat=int(time.time()) - 3600)], "iat is outside the accepted window"),
    ("iat_far_future", lambda g: [g.forged(iat=int(time.time()) + 600)], "iat is outside the accepted window"),
    ("no_iat", lambda g: [g.forged(iat=None)], "iat claim is required"),
    ("no_jti", lambda g: [g.forged(jti=None)], "jti claim is required"),
    ("jti_of_10_kb", lambda g: [g.forged(jti="j" * 10_000)], "jti claim is required: a string of 1 to 256"),
    ("not_a_jws", lambda g: ["not.a-proof"], "not a compact JWS"),
]


@pytest.mark.parametrize(("case", "forge", "names"), BAD, ids=[c[0] for c in BAD])
def test_rfc9449_5_bad_proofs_are_refused_and_audited(gw: DpopGateway, probe: Probe, case: str, forge: Forge,
                                                      names: str) -> None:
    refused_and_audited(probe, gw.exchange(*forge(gw)), "invalid_dpop_proof", names)


# --- Nonces (§8) ------------------------------------------------------------------------------------------


def nonce_of(response: httpx2.Response) -> str:
    nonce = response.headers.get("dpop-nonce")
    assert nonce, response.headers
    return nonce


def test_rfc9449_8_with_nonces_on_a_proof_without_one_gets_use_dpop_nonce_then_succeeds(nonce_gw: DpopGateway
                                                                                        ) -> None:
    probe = Probe(nonce_gw.d, nonce_gw.d.issued_count(), len(nonce_gw.d.audit()))
    first = nonce_gw.exchange(nonce_gw.proof())
    refused_and_audited(probe, first, "use_dpop_nonce", "has no nonce")
    retried = nonce_gw.exchange(nonce_gw.proof(nonce=nonce_of(first)))
    assert (retried.status_code, retried.json()["token_type"]) == (200, "DPoP"), retried.text
    again = nonce_gw.exchange(nonce_gw.proof(nonce=nonce_of(retried)))  # §8.2: the next one rides on the 200
    assert again.status_code == 200, again.text


def _old_nonce(g: DpopGateway) -> str:
    ring = g.d.signing_keys().ring()
    assert ring is not None
    return DpopNonces(lambda: [ring.tokens.current], issuer=g.d.issuer).issue(int(time.time()) - 10 * PERIOD_S)


def _another_servers_nonce(g: DpopGateway) -> str:
    return DpopNonces(lambda: [SigningKey.generate("ES256")], issuer=g.d.issuer).issue(int(time.time()))


@pytest.mark.parametrize("nonce", [_old_nonce, _another_servers_nonce, lambda g: "12345.not-a-mac"],
                         ids=["old_nonce", "another_servers_nonce", "made_up_nonce"])
def test_rfc9449_8_a_nonce_this_server_did_not_give_recently_is_refused(nonce_gw: DpopGateway,
                                                                        nonce: Callable[[DpopGateway], str]) -> None:
    probe = Probe(nonce_gw.d, nonce_gw.d.issued_count(), len(nonce_gw.d.audit()))
    response = nonce_gw.exchange(nonce_gw.proof(nonce=nonce(nonce_gw)))
    refused_and_audited(probe, response, "use_dpop_nonce", "did not give or that expired")
    assert nonce_of(response) != nonce(nonce_gw)


def test_rfc9449_8_a_bad_proof_is_invalid_before_its_nonce_is_looked_at(nonce_gw: DpopGateway) -> None:
    response = nonce_gw.exchange(nonce_gw.forged(htm="GET"))
    assert response.json()["error"] == "invalid_dpop_proof"


def test_rfc9449_8_every_worker_accepts_the_nonces_any_worker_gives(tmp_path_factory: pytest.TempPathFactory
                                                                     ) -> None:
    """Nonces need no shared state: each of two workers (each connection may reach either) accepts the
    nonce another gave, from the token keys they share."""
    setup = make_setup(tmp_path_factory.mktemp("dpop-workers"), extra="\n[dpop]\nnonces = true\n")
    key, url = DpopKey(), setup.issuer + "/token"

    def exchange(nonce: str | None) -> httpx2.Response:
        form = {"grant_type": GRANT, "subject_token": setup.idp.token(audience=setup.issuer),
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "actor_token": setup.domain.svid(audience=setup.issuer), "actor_token_type": JWT,
                "resource": MAIL, "scope": "mail.read"}
        with httpx2.Client(base_url=setup.issuer, timeout=10) as fresh:  # a new connection each time
            return fresh.post("/token", data=form, headers={"DPoP": key.proof("POST", url, nonce=nonce)})

    try:
        with gateway_process(setup.config, workers=2):
            nonce = nonce_of(exchange(None))
            answers = [exchange(nonce) for _ in range(12)]
    finally:
        setup.jwks_server.close()
    assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers if r.status_code != 200]


def test_rfc9449_8_without_nonces_switched_on_no_nonce_is_given(gw: DpopGateway) -> None:
    response = gw.exchange(gw.proof())
    assert response.status_code == 200 and "dpop-nonce" not in response.headers


# --- With a client attestation (the posture issue) ---------------------------------------------------------


@pytest.fixture(scope="module")
def attested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, AgentInstance]]:
    setup, mail, _ = posture_setup(tmp_path_factory.mktemp("dpop-attested"))
    try:
        with running(setup) as deployment:
            yield deployment, mail
    finally:
        setup.jwks_server.close()


def test_rfc9449_5_with_an_attestation_the_proof_key_must_be_the_attested_instance_key(
        attested: tuple[Deployment, AgentInstance]) -> None:
    d, mail = attested
    url = d.issuer + "/token"
    same = d.client.post("/token", data=d.exchange_form(),
                         headers={**mail.headers(), "DPoP": DpopKey(mail.key).proof("POST", url)})
    assert (same.status_code, same.json()["token_type"]) == (200, "DPoP"), same.text
    assert claims_of(same.json()["access_token"])["cnf"] == {"jkt": mail.key.kid}
    probe = Probe(d, d.issued_count(), len(d.audit()))
    other = d.client.post("/token", data=d.exchange_form(),
                          headers={**mail.headers(), "DPoP": DpopKey().proof("POST", url)})
    refused_and_audited(probe, other, "invalid_dpop_proof", "not the attested instance key (cnf.jwk)")
