"""Posture over real HTTP: client attestation (draft-ietf-oauth-attestation-based-client-auth-10) at
`/token`, and the packaged policy's conditional access on sensitive scopes (issue 8, item 3).

A real gateway process with real keys: two attesters (a JWKS file and a `jwks_uri` on loopback), the
packaged Rego with the packaged data (plus `mail.delete` for the summarizer, so delegation shows it too),
and `mail.delete` offered by the mail resource. Each bad attestation of the reference's list
(../shared/reference/abca-attestation.md, "Bad inputs to test") is refused with 401 `invalid_client` or
400 `use_fresh_attestation`, a description naming the check, nothing issued, and the refusal audited.
Not here, because the features are not built yet: the challenge cases (§6, `use_attestation_challenge`)
and the DPoP combined-mode cases (§5.2, §7.3).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from tests.conftest import MAIL, MAIL_AGENT, ROOT, Deployment, Probe, Setup, make_setup, running
from tests.support import ATTESTATION_TYP, POP_TYP, AgentInstance, compact, gateway_process, hmac_signer
from token_exchange.signing import SigningKey

TXN = "urn:ietf:params:oauth:token-type:txn_token"
SUMMARIZER = "spiffe://example.org/agents/summarizer"
DROPPED = "mail.delete needs a fresh attested posture (allowed image, debug disabled); dropped"
SCOPES = "mail.read mail.send mail.delete"


def packaged_data() -> dict[str, Any]:
    """policies/data.json, with `mail.delete` granted to the summarizer too (a sub-agent in the packaged data),
    and the second attester trusted for posture."""
    data: dict[str, Any] = json.loads((ROOT / "policies" / "data.json").read_text())
    data["access"]["grants"][SUMMARIZER]["https://mail.example.com"].append("mail.delete")
    data["access"]["posture"]["attesters"].append("remote-attester")
    return data


def posture_setup(directory: Path) -> tuple[Setup, AgentInstance, AgentInstance]:
    """A gateway setup trusting two attesters: `node-attester` (JWKS file, max_age 120 s) vouching for the
    mail agent, and `remote-attester` (jwks_uri) vouching for the summarizer."""
    setup = make_setup(directory, policy_files={"data.json": json.dumps(packaged_data())})
    mail = AgentInstance(MAIL_AGENT, setup.issuer)
    summarizer = AgentInstance(SUMMARIZER, setup.issuer)
    (directory / "attester.jwks").write_text(json.dumps(mail.attester_jwks()))
    setup.jwks_server.documents["/attester"] = summarizer.attester_jwks()
    text = setup.config.read_text().replace('scopes = ["mail.read", "mail.send"]',
                                            'scopes = ["mail.read", "mail.send", "mail.delete"]')
    setup.config.write_text(text + f"""
[[attesters]]
name = "node-attester"
jwks_file = "attester.jwks"
max_age = 120

[[attesters]]
name = "remote-attester"
jwks_uri = "{setup.jwks_server.url}/attester"
""")
    return setup, mail, summarizer


class PostureDeployment:
    def __init__(self, deployment: Deployment, mail: AgentInstance, summarizer: AgentInstance) -> None:
        self.d, self.mail, self.summarizer = deployment, mail, summarizer

    def form(self, **overrides: Any) -> dict[str, Any]:
        return self.d.exchange_form(**{"subject_token": self.d.user_token(scope=SCOPES), **overrides})

    def exchange(self, headers: dict[str, str] | list[tuple[str, str]] | None = None, **overrides: Any
                 ) -> httpx2.Response:
        return self.d.client.post("/token", data=self.form(**overrides), headers=headers or {})

    def attested(self, instance: AgentInstance | None = None, **overrides: Any) -> httpx2.Response:
        return self.exchange((instance or self.mail).headers(), **overrides)

    def last_audit(self) -> dict[str, Any]:
        return self.d.audit()[-1]


@pytest.fixture(scope="module")
def posture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostureDeployment]:
    setup, mail, summarizer = posture_setup(tmp_path_factory.mktemp("posture"))
    try:
        with running(setup) as deployment:
            yield PostureDeployment(deployment, mail, summarizer)
        log = deployment.log()
        assert "Traceback" not in log and "server_error" not in log, log
    finally:
        setup.jwks_server.close()


@pytest.fixture
def probe(posture: PostureDeployment) -> Probe:
    d = posture.d
    return Probe(d, d.issued_count(), len(d.audit()))


def scope_of(response: httpx2.Response | dict[str, Any]) -> set[str]:
    body = response if isinstance(response, dict) else response.json()
    assert "scope" in body, body
    return set(body["scope"].split())


# --- Metadata (§8) -----------------------------------------------------------------------------------


def test_abca_8_metadata_advertises_attestation(posture: PostureDeployment) -> None:
    document = posture.d.client.get("/.well-known/oauth-authorization-server").json()
    assert document["token_endpoint_auth_methods_supported"] == ["none", "attest_jwt_client_auth"]
    for name in ("client_attestation_signing_alg_values_supported",
                 "client_attestation_pop_signing_alg_values_supported"):
        assert "ES256" in document[name] and "none" not in document[name]
    assert document["client_attestation_pop_methods_supported"] == ["attestation_pop_jwt", "none"]  # §7.6: optional


# --- Conditional access (issue 8 item 3; policies/deputy/exchange.rego) --------------------------------


def test_abca_7_6_a_fresh_attestation_unlocks_the_sensitive_scope(posture: PostureDeployment, probe: Probe) -> None:
    body = probe.granted(posture.attested(scope="mail.read mail.delete"))
    assert set(body["scope"].split()) == {"mail.read", "mail.delete"}
    assert set(jwt.decode(body["access_token"], options={"verify_signature": False})["scope"].split()) == {
        "mail.read", "mail.delete"}
    assert DROPPED not in json.loads(posture.last_audit()["reasons"])


def test_abca_7_6_without_an_attestation_only_the_sensitive_scope_is_dropped(posture: PostureDeployment,
                                                                             probe: Probe) -> None:
    body = probe.granted(posture.exchange(scope="mail.read mail.send mail.delete"))
    assert body["scope"] == "mail.read mail.send"
    assert DROPPED in json.loads(posture.last_audit()["reasons"])


def test_abca_7_6_without_an_attestation_a_request_for_only_the_sensitive_scope_is_refused(
        posture: PostureDeployment, probe: Probe) -> None:
    probe.refused(posture.exchange(scope="mail.delete"), 400, "invalid_scope",
                  names="no requested scope is granted without a fresh attested posture (allowed image, debug "
                        "disabled): mail.delete")


@pytest.mark.parametrize(("case", "claims"), [
    ("debug_enabled", {"dbgstat": "enabled"}),
    ("an_image_the_policy_does_not_allow", {"image_digest": "sha256:" + "0" * 64}),
    ("no_image_digest", {"image_digest": None}),
])
def test_eat_4_2_9_a_verified_but_unhealthy_posture_drops_the_sensitive_scope(
        posture: PostureDeployment, probe: Probe, case: str, claims: dict[str, Any]) -> None:
    headers = posture.mail.headers(attestation=posture.mail.attestation(**claims))
    assert scope_of(probe.granted(posture.exchange(headers, scope="mail.read mail.delete"))) == {"mail.read"}
    assert DROPPED in json.loads(posture.last_audit()["reasons"])


def test_abca_7_6_a_task_needs_posture_when_opened_and_at_every_exchange_in_it(posture: PostureDeployment) -> None:
    d, mail = posture.d, posture.mail
    opened = d.client.post("/token", data=posture.form(requested_token_type=TXN, resource=None, audience=MAIL,
                                                       scope="mail.read mail.delete"), headers=mail.headers())
    assert opened.status_code == 200, opened.text
    assert scope_of(opened) == {"mail.read", "mail.delete"}
    within = {"subject_token": opened.json()["access_token"], "subject_token_type": TXN,
              "scope": "mail.read mail.delete"}
    assert scope_of(posture.exchange(mail.headers(), **within)) == {"mail.read", "mail.delete"}
    assert scope_of(posture.exchange(**within)) == {"mail.read"}  # continuous: this request brought none
    stale = mail.headers(attestation=mail.attestation(iat=mail.time() - 121))
    assert posture.exchange(stale, **within).json()["error"] == "use_fresh_attestation"


def test_abca_7_6_a_sub_agent_brings_its_own_posture_to_delegation(posture: PostureDeployment) -> None:
    d, mail, summarizer = posture.d, posture.mail, posture.summarizer
    parent = d.client.post("/token", data=posture.form(requested_token_type=TXN, resource=None, audience=MAIL,
                                                       scope="mail.read mail.delete"), headers=mail.headers())
    assert parent.status_code == 200, parent.text
    delegation = {"subject_token": parent.json()["access_token"], "subject_token_type": TXN, "resource": None,
                  "requested_token_type": TXN, "actor_token": d.svid("/agents/summarizer"),
                  "scope": "mail.read mail.delete"}
    attested = posture.exchange(summarizer.headers(), **delegation)  # vouched for by the jwks_uri attester
    assert attested.status_code == 200, attested.text
    assert scope_of(attested) == {"mail.read", "mail.delete"}
    assert scope_of(posture.exchange(**delegation)) == {"mail.read"}
    # the parent agent's attestation is no posture for the sub-agent: its sub names the mail agent
    borrowed = posture.exchange(mail.headers(), **delegation)
    assert (borrowed.status_code, borrowed.json()["error"]) == (401, "invalid_client")
    assert "sub does not name the actor" in borrowed.json()["error_description"]


# --- Bad attestations: the reference's list ------------------------------------------------------------

Headers = Callable[[AgentInstance], dict[str, str] | list[tuple[str, str]]]


def _with(attestation: Callable[[AgentInstance], str]) -> Headers:
    return lambda i: i.headers(attestation=attestation(i))


def _with_pop(pop: Callable[[AgentInstance], str]) -> Headers:
    return lambda i: i.headers(pop=pop(i))


def _private_cnf(i: AgentInstance) -> str:
    return i.attestation(cnf={"jwk": jwt.algorithms.ECAlgorithm.to_jwk(i.key.private_key, as_dict=True)})


def _hs256(i: AgentInstance) -> str:
    header = {"typ": ATTESTATION_TYP, "alg": "HS256", "kid": i.attester.kid}
    return compact(header, i.claims(), hmac_signer(json.dumps(i.attester.public_jwk).encode()))


BAD: list[tuple[str, Headers, int, str, str]] = [
    ("typ_JWT", _with(lambda i: i.attestation(header={"typ": "JWT"})), 401, "invalid_client",
     "client attestation rejected: typ must be oauth-client-attestation+jwt"),
    ("typ_of_the_pop", _with(lambda i: i.attestation(header={"typ": POP_TYP})), 401, "invalid_client",
     "client attestation rejected: typ must be oauth-client-attestation+jwt"),
    ("alg_none", _with(lambda i: compact({"typ": ATTESTATION_TYP, "alg": "none", "kid": i.attester.kid}, i.claims())),
     401, "invalid_client", "client attestation rejected: algorithm 'none' is not allowed"),
    ("hs256_with_no_mac_key_configured", _with(_hs256), 401, "invalid_client",
     "client attestation rejected: algorithm 'HS256' is not allowed"),
    ("signed_by_an_unconfigured_key", _with(lambda i: i.attestation(key=SigningKey.generate("ES256"))), 401,
     "invalid_client", "client attestation rejected: not signed by a configured attester"),
    ("cnf_jwk_containing_d", _with(_private_cnf), 401, "invalid_client",
     "client attestation rejected: cnf.jwk holds private key material (d)"),
    ("cnf_with_jkt_instead_of_jwk", _with(lambda i: i.attestation(cnf={"jkt": i.key.kid})), 401, "invalid_client",
     "cnf.jkt alone is not accepted"),
    ("no_exp", _with(lambda i: i.attestation(exp=None)), 401, "invalid_client",
     "client attestation rejected: exp claim is required"),
    ("expired", _with(lambda i: i.attestation(iat=i.time() - 100, exp=i.time() - 60)), 400, "use_fresh_attestation",
     "client attestation is not fresh: it has expired"),
    ("older_than_max_age", _with(lambda i: i.attestation(iat=i.time() - 121)), 400, "use_fresh_attestation",
     "attester 'node-attester' allows 120 s"),
    ("sub_not_the_svid_spiffe_id", _with(lambda i: i.attestation(sub="spiffe://example.org/agents/other")), 401,
     "invalid_client", "client attestation rejected: sub does not name the actor"),
    ("sub_in_another_trust_domain", _with(lambda i: i.attestation(sub="spiffe://remote.example/agents/mail")), 401,
     "invalid_client", "client attestation rejected: sub does not name the actor"),
    ("iss_of_a_trusted_attester_on_an_untrusted_key",
     _with(lambda i: i.attestation(key=SigningKey.generate("ES256"), iss="node-attester")), 401, "invalid_client",
     "client attestation rejected: not signed by a configured attester"),
    ("jku_at_an_attacker_url", _with(lambda i: i.attestation(header={"jku": "http://127.0.0.1:9/jwks"})), 401,
     "invalid_client", "client attestation rejected: header parameter jku is not accepted"),
    ("two_attestation_headers", lambda i: [("OAuth-Client-Attestation", i.attestation()),
                                           ("oauth-client-attestation", i.attestation()),
                                           ("OAuth-Client-Attestation-PoP", i.pop())],
     401, "invalid_client", "more than one OAuth-Client-Attestation header"),
    ("attestation_without_pop", lambda i: {"OAuth-Client-Attestation": i.attestation()}, 401, "invalid_client",
     "client attestation rejected: no OAuth-Client-Attestation-PoP header"),
    ("pop_without_attestation", lambda i: {"OAuth-Client-Attestation-PoP": i.pop()}, 401, "invalid_client",
     "client attestation PoP rejected: no OAuth-Client-Attestation header"),
    ("pop_signed_by_another_key", _with_pop(lambda i: i.pop(key=SigningKey.generate("ES256"))), 401, "invalid_client",
     "client attestation PoP rejected: signature rejected"),
    ("pop_aud_a_resource_server", _with_pop(lambda i: i.pop(aud=MAIL)), 401, "invalid_client",
     "client attestation PoP rejected: aud is not this gateway's issuer"),
    ("pop_aud_with_a_trailing_slash", _with_pop(lambda i: i.pop(aud=i.audience + "/")), 401, "invalid_client",
     "client attestation PoP rejected: aud is not this gateway's issuer"),
    ("pop_iat_far_past", _with_pop(lambda i: i.pop(iat=i.time() - 3600)), 401, "invalid_client",
     "client attestation PoP rejected: iat is outside the accepted window"),
    ("pop_iat_far_future", _with_pop(lambda i: i.pop(iat=i.time() + 3600)), 401, "invalid_client",
     "client attestation PoP rejected: iat is outside the accepted window"),
    ("posture_dbgstat_0_in_a_json_token", _with(lambda i: i.attestation(dbgstat=0)), 401, "invalid_client",
     "client attestation rejected: dbgstat claim is not one of enabled, disabled"),
    ("posture_ueid_of_40_bytes", _with(lambda i: i.attestation(ueid="A" * 54)), 401, "invalid_client",
     "client attestation rejected: ueid claim is not base64url of 7 to 33 bytes"),
    ("posture_floating_point_iat", _with(lambda i: i.attestation(iat=i.time() - 10.5)), 401, "invalid_client",
     "client attestation rejected: iat claim is not an integer"),
    ("posture_swversion_without_swname", _with(lambda i: i.attestation(swname=None)), 401, "invalid_client",
     "client attestation rejected: swversion claim needs an swname claim"),
]


@pytest.mark.parametrize(("case", "headers", "status", "error", "names"), BAD, ids=[c[0] for c in BAD])
def test_abca_7_bad_attestations_are_refused_and_audited(posture: PostureDeployment, probe: Probe, case: str,
                                                         headers: Headers, status: int, error: str, names: str) -> None:
    response = posture.exchange(headers(posture.mail), scope="mail.read mail.delete")
    probe.refused(response, status, error, names=names)
    if status == 401:  # RFC 9110 §15.5.2: a 401 carries a challenge
        assert response.headers["www-authenticate"] == 'OAuth-Client-Attestation realm="deputy"'
    [event] = probe.new_audit()
    assert (event["outcome"], event["error"], event["agent"]) == ("refused", error, MAIL_AGENT)
    assert any(names in reason for reason in json.loads(event["reasons"]))


def test_abca_4_an_unlisted_claim_never_reaches_the_policy(tmp_path: Path) -> None:
    """Only the allow-listed claims reach the policy; shown with a policy that grants only when it sees
    no `cnf`, no unlisted claim and none of the PoP's claims in the posture."""
    setup, mail, _ = posture_setup(tmp_path)
    rego = (ROOT / "policies" / "deputy" / "exchange.rego").read_text()
    probe_rule = ('\nposture_allowed if {\n\tinput.actor.posture.attester == "node-attester"\n'
                  '\tnot input.actor.posture.claims.cnf\n\tnot input.actor.posture.claims.unlisted\n'
                  '\tnot input.actor.posture.claims.jti\n\tinput.actor.posture.claims.dbgstat == "enabled"\n}\n')
    (setup.directory / "policies" / "deputy" / "exchange.rego").write_text(rego + probe_rule)
    try:
        with running(setup) as d:
            attestation = mail.attestation(dbgstat="enabled", unlisted="the policy must not see this")
            form = d.exchange_form(subject_token=d.user_token(scope=SCOPES), scope="mail.delete")
            response = d.client.post("/token", data=form, headers=mail.headers(attestation=attestation))
            assert scope_of(response) == {"mail.delete"}
    finally:
        setup.jwks_server.close()


# --- Replay (§9.7, §11.1) ---------------------------------------------------------------------------


def test_abca_11_1_the_same_pop_twice_is_refused(posture: PostureDeployment, probe: Probe) -> None:
    headers = posture.mail.headers()
    probe.granted(posture.exchange(headers))
    again = Probe(posture.d, posture.d.issued_count(), len(posture.d.audit()))
    again.refused(posture.exchange(headers), 401, "invalid_client",
                  names="client attestation PoP rejected: jti was already used")


def test_abca_9_7_a_refused_request_does_not_use_up_its_jti(posture: PostureDeployment, probe: Probe) -> None:
    mail = posture.mail
    pop = mail.pop()
    refused = posture.exchange(mail.headers(attestation=mail.attestation(sub=SUMMARIZER), pop=pop))
    assert refused.status_code == 401
    probe.granted(posture.exchange(mail.headers(pop=pop)))


def test_abca_11_1_a_pop_replayed_to_another_worker_is_refused(tmp_path: Path) -> None:
    """Two worker processes share the store's `seen_once`: of the same PoP sent on ten fresh connections
    at once (spread over both workers by SO_REUSEPORT), exactly one is accepted."""
    setup, mail, _ = posture_setup(tmp_path)
    try:
        with gateway_process(setup.config, workers=2) as url, httpx2.Client(base_url=url) as client:
            deployment = Deployment(url, setup.issuer, setup.directory / "state", setup.idp, setup.remote_idp,
                                    setup.domain, setup.remote_domain, setup.jwks_server, client, setup)
            form, headers = deployment.exchange_form(), mail.headers()
            statuses: list[int] = []

            def send() -> None:
                with httpx2.Client(base_url=url, timeout=10) as client:  # a new connection each
                    statuses.append(client.post("/token", data=form, headers=headers).status_code)

            threads = [threading.Thread(target=send) for _ in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert sorted(statuses) == [200] + [401] * 9, statuses
        with sqlite3.connect(setup.directory / "state" / "deputy.db") as db:
            assert db.execute("SELECT count(*) FROM seen_once").fetchone()[0] == 1
    finally:
        setup.jwks_server.close()


def test_abca_7_6_without_attesters_the_headers_are_ignored_and_not_advertised(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    instance = AgentInstance(MAIL_AGENT, setup.issuer)
    try:
        with running(setup) as d:
            document = d.client.get("/.well-known/oauth-authorization-server").json()
            assert document["token_endpoint_auth_methods_supported"] == ["none"]
            assert not any(name.startswith("client_attestation") for name in document)
            response = d.client.post("/token", data=d.exchange_form(), headers=instance.headers(pop="garbage"))
            assert response.status_code == 200, response.text
    finally:
        setup.jwks_server.close()

