"""Client attestation (draft-ietf-oauth-attestation-based-client-auth-10) and its RFC 9711 posture claims:
`token_exchange.attestation` and `token_exchange.eat` with real keys and real signatures.

Each test names the draft section (`abca_7_1`: §7.1) or the RFC 9711 section (`eat_4_2_9`) it checks.
Server challenges (§6, `use_attestation_challenge`) and DPoP combined mode (§5.2, §7.3) are not built:
their bad inputs have no test here yet.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import DEFAULT_IMAGE, AgentInstance, compact, hmac_signer, signer_for
from token_exchange.attestation import (
    ATTESTATION_TYP,
    POP_TYP,
    SEEN_NAMESPACE,
    AttestationVerifier,
    Attester,
    Posture,
    metadata,
)
from token_exchange.eat import POSTURE_CLAIMS, posture_claims
from token_exchange.errors import InvalidClient, UseFreshAttestation
from token_exchange.jws import TokenError
from token_exchange.keys import StaticKeys, VerificationKey, bind_key
from token_exchange.rfc6749 import TokenRequest
from token_exchange.signing import SigningKey

ISSUER = "https://deputy.example.com"
AGENT = "spiffe://example.org/agents/mail"
IMAGE = DEFAULT_IMAGE


class MemorySeen:
    """A SingleUse in memory (the shared store's contract is tested in tests/delegation/test_store_contract.py)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}
        self.asked = 0

    async def first_use(self, namespace: str, value: str, *, expires_at: int) -> bool:
        self.asked += 1
        if (namespace, value) in self.values:
            return False
        self.values[namespace, value] = expires_at
        return True


def keys_of(*signing: SigningKey) -> StaticKeys:
    return StaticKeys({k.kid: bind_key(k.public_jwk, k.kid, k.algorithm) for k in signing})


def Instance(**kw: Any) -> AgentInstance:
    kw.setdefault("now", int(time.time()))
    return AgentInstance(AGENT, ISSUER, **kw)


def request(attestation: str | list[str] | None, pop: str | list[str] | None) -> TokenRequest:
    def values(v: str | list[str] | None) -> list[str]:
        return [] if v is None else [v] if isinstance(v, str) else v
    headers = [("oauth-client-attestation", a) for a in values(attestation)]
    headers += [("oauth-client-attestation-pop", p) for p in values(pop)]
    return TokenRequest((), tuple(headers))


@pytest.fixture
def instance() -> AgentInstance:
    return Instance()


@pytest.fixture
def seen() -> MemorySeen:
    return MemorySeen()


@pytest.fixture
def verifier(instance: AgentInstance, seen: MemorySeen) -> AttestationVerifier:
    return AttestationVerifier([Attester("node-attester", keys_of(instance.attester), max_age=120)],
                               issuer=ISSUER, seen=seen)


async def verify(verifier: AttestationVerifier, instance: AgentInstance, attestation: str | list[str] | None,
                 pop: str | list[str] | None, *, client_id: str | None = None) -> Posture | None:
    return await verifier.verify(request(attestation, pop), actor=AGENT, client_id=client_id, now=instance.time())


async def refused(verifier: AttestationVerifier, instance: AgentInstance, attestation: str | list[str] | None,
                  pop: str | list[str] | None, **kw: Any) -> str:
    with pytest.raises(InvalidClient) as caught:
        await verify(verifier, instance, attestation, pop, **kw)
    assert caught.value.status == 401
    assert caught.value.headers()["WWW-Authenticate"].startswith("OAuth-Client-Attestation ")
    return caught.value.description


# --- The posture a verified attestation yields -----------------------------------------------------


async def test_abca_7_a_verified_attestation_yields_its_posture(verifier: AttestationVerifier,
                                                                instance: AgentInstance) -> None:
    attestation = instance.attestation(unlisted="policy must not see this", iss="https://attester.example.com")
    posture = await verify(verifier, instance, attestation, instance.pop(extra_pop_claim="nor this"))
    assert posture is not None
    assert posture.policy_view() == {
        "attester": "node-attester", "iat": instance.time() - 10, "exp": instance.time() + 300,
        "claims": {"dbgstat": "disabled", "image_digest": IMAGE, "swname": "mail-agent", "swversion": ["1.2.0"]},
    }  # no cnf, no sub, no unlisted claim, nothing of the PoP


async def test_abca_7_6_no_attestation_headers_no_posture(verifier: AttestationVerifier, instance: AgentInstance,
                                                          seen: MemorySeen) -> None:
    assert await verify(verifier, instance, None, None) is None
    assert seen.asked == 0


async def test_abca_7_1_client_id_must_equal_sub(verifier: AttestationVerifier, instance: AgentInstance) -> None:
    assert await verify(verifier, instance, instance.attestation(), instance.pop(), client_id=AGENT) is not None
    description = await refused(verifier, instance, instance.attestation(), instance.pop(),
                                client_id="spiffe://example.org/agents/other")
    assert description == "client attestation rejected: sub does not match client_id (section 7.5)"


async def test_abca_7_1_the_key_decides_the_attester(instance: AgentInstance, seen: MemorySeen) -> None:
    other = SigningKey.generate("ES256")
    attesters = [Attester("first", keys_of(other), 300), Attester("second", keys_of(instance.attester), 300)]
    verifier = AttestationVerifier(attesters, issuer=ISSUER, seen=seen)
    posture = await verify(verifier, instance, instance.attestation(iss="first"), instance.pop())
    assert posture is not None and posture.attester == "second"


async def test_abca_7_1_an_rsa_attester_and_an_eddsa_instance(seen: MemorySeen) -> None:
    instance = Instance(attester=SigningKey.generate("PS256"), key=SigningKey.generate("EdDSA"))
    verifier = AttestationVerifier([Attester("a", keys_of(instance.attester))], issuer=ISSUER, seen=seen)
    assert await verify(verifier, instance, instance.attestation(), instance.pop()) is not None


def test_abca_8_metadata_lists_algorithms_and_pop_methods() -> None:
    document = metadata()
    assert document["client_attestation_pop_methods_supported"] == ["attestation_pop_jwt", "none"]
    for name in ("client_attestation_signing_alg_values_supported",
                 "client_attestation_pop_signing_alg_values_supported"):
        assert "ES256" in document[name] and "none" not in document[name]
        assert not any(alg.startswith("HS") for alg in document[name])


# --- Header fields (§7.1 item 1, §7.2 item 1) ------------------------------------------------------


async def test_abca_7_1_two_attestation_headers_are_refused(verifier: AttestationVerifier,
                                                            instance: AgentInstance) -> None:
    description = await refused(verifier, instance, [instance.attestation(), instance.attestation()], instance.pop())
    assert "more than one OAuth-Client-Attestation header" in description


async def test_abca_7_2_two_pop_headers_are_refused(verifier: AttestationVerifier, instance: AgentInstance) -> None:
    description = await refused(verifier, instance, instance.attestation(), [instance.pop(), instance.pop()])
    assert description.startswith("client attestation PoP rejected: more than one OAuth-Client-Attestation-PoP")


async def test_abca_7_2_an_attestation_without_pop_is_refused(verifier: AttestationVerifier,
                                                              instance: AgentInstance) -> None:
    description = await refused(verifier, instance, instance.attestation(), None)
    assert "no OAuth-Client-Attestation-PoP header" in description


async def test_abca_7_1_a_pop_without_attestation_is_refused(verifier: AttestationVerifier,
                                                             instance: AgentInstance) -> None:
    description = await refused(verifier, instance, None, instance.pop())
    assert "no OAuth-Client-Attestation header" in description


# --- The attestation (§4, §7.1) --------------------------------------------------------------------


def _hs256_with_the_attester_key(i: AgentInstance) -> str:
    header = {"typ": ATTESTATION_TYP, "alg": "HS256", "kid": i.attester.kid}
    return compact(header, i.claims(), hmac_signer(str(i.attester.public_jwk).encode()))


def _unsigned(i: AgentInstance) -> str:
    return compact({"typ": ATTESTATION_TYP, "alg": "none", "kid": i.attester.kid}, i.claims(), b"\x00" * 8)


def _weak_rsa_cnf(i: AgentInstance) -> str:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(weak, as_dict=True)
    return i.attestation(cnf={"jwk": jwk})


def _private_cnf(i: AgentInstance) -> str:
    private = jwt.algorithms.ECAlgorithm.to_jwk(i.key.private_key, as_dict=True)
    return i.attestation(cnf={"jwk": private})


def _tampered(i: AgentInstance) -> str:
    signature = i.attestation().rsplit(".", 1)[1]
    other = compact({"typ": ATTESTATION_TYP, "alg": "ES256", "kid": i.attester.kid}, i.claims(sub=AGENT + "x"))
    return f"{other.rsplit('.', 1)[0]}.{signature}"


BAD_ATTESTATIONS: list[tuple[str, Callable[[AgentInstance], str], str]] = [
    ("typ_JWT", lambda i: i.attestation(header={"typ": "JWT"}), f"typ must be {ATTESTATION_TYP}"),
    ("typ_of_the_pop", lambda i: i.attestation(header={"typ": POP_TYP}), f"typ must be {ATTESTATION_TYP}"),
    ("typ_with_application_prefix", lambda i: i.attestation(header={"typ": "application/" + ATTESTATION_TYP}),
     f"typ must be {ATTESTATION_TYP}"),
    ("no_typ", lambda i: compact({"alg": "ES256", "kid": i.attester.kid}, i.claims(),
                                 signer_for("ES256", i.attester.private_key)), "typ must be"),
    ("alg_none", _unsigned, "algorithm 'none' is not allowed"),
    ("hs256_with_no_mac_key_configured", _hs256_with_the_attester_key, "algorithm 'HS256' is not allowed"),
    ("signed_by_an_unconfigured_key", lambda i: i.attestation(key=SigningKey.generate("ES256")),
     "not signed by a configured attester"),
    ("iss_of_a_trusted_attester_on_an_untrusted_key",
     lambda i: i.attestation(key=SigningKey.generate("ES256"), iss="node-attester"),
     "not signed by a configured attester"),
    ("kid_of_the_attester_key_of_another_signer",
     lambda i: i.attestation(header={"kid": i.attester.kid}, key=SigningKey.generate("ES256")),
     "signature rejected"),
    ("tampered_claims", _tampered, "signature rejected"),
    ("jku_to_an_attacker_url", lambda i: i.attestation(header={"jku": "https://attacker.example/jwks"}),
     "header parameter jku is not accepted"),
    ("x5u_header", lambda i: i.attestation(header={"x5u": "https://attacker.example/cert"}),
     "header parameter x5u is not accepted"),
    ("embedded_jwk_header", lambda i: i.attestation(header={"jwk": i.key.public_jwk}),
     "header parameter jwk is not accepted"),
    ("cnf_jwk_with_d", _private_cnf, "cnf.jwk holds private key material (d)"),
    ("cnf_jkt_instead_of_jwk", lambda i: i.attestation(cnf={"jkt": i.key.kid}), "cnf.jkt alone is not accepted"),
    ("no_cnf", lambda i: i.attestation(cnf=None), "cnf claim must hold the instance key as jwk"),
    ("cnf_jwk_symmetric", lambda i: i.attestation(cnf={"jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
     "cnf.jwk holds private key material (k)"),
    ("cnf_jwk_too_weak", _weak_rsa_cnf, "RSA key of 1024 bits"),
    ("no_exp", lambda i: i.attestation(exp=None), "exp claim is required"),
    ("exp_a_string", lambda i: i.attestation(exp=str(i.time() + 300)), "exp claim is not an integer"),
    ("no_iat", lambda i: i.attestation(iat=None), "iat claim is required: freshness is judged by it"),
    ("iat_in_the_future", lambda i: i.attestation(iat=i.time() + 600, exp=i.time() + 900), "iat is in the future"),
    ("iat_floating_point", lambda i: i.attestation(iat=i.time() - 10.5), "iat claim is not an integer"),
    ("nbf_in_the_future", lambda i: i.attestation(nbf=i.time() + 600), "nbf is in the future"),
    ("no_sub", lambda i: i.attestation(sub=None), "sub claim missing"),
    ("sub_another_agent", lambda i: i.attestation(sub="spiffe://example.org/agents/other"),
     "sub does not name the actor"),
    ("sub_in_another_trust_domain", lambda i: i.attestation(sub="spiffe://evil.example/agents/mail"),
     "sub does not name the actor"),
    ("aud_of_another_server", lambda i: i.attestation(aud="https://as.example.com"),
     f"aud does not include {ISSUER}"),
    ("not_a_jws", lambda i: "not.a.jws!", "not a compact JWS"),
    ("a_jwe", lambda i: "a.b.c.d.e", "not a compact JWS"),
]


@pytest.mark.parametrize(("case", "make", "names"), BAD_ATTESTATIONS, ids=[c[0] for c in BAD_ATTESTATIONS])
async def test_abca_7_1_bad_attestations_are_refused(verifier: AttestationVerifier, instance: AgentInstance,
                                                     seen: MemorySeen, case: str, make: Callable[[AgentInstance], str],
                                                     names: str) -> None:
    description = await refused(verifier, instance, make(instance), instance.pop())
    assert description.startswith("client attestation rejected: "), description
    assert names in description, description
    assert seen.asked == 0  # nothing recorded for a refused attestation (§9.7)


@pytest.mark.parametrize(("case", "claims", "names"), [
    ("expired", {"iat": -400, "exp": -60}, "it has expired"),
    ("older_than_the_attester_max_age", {"iat": -121}, "issued 121 s ago, and attester 'node-attester' allows 120 s"),
])
async def test_abca_7_4_a_stale_attestation_asks_for_a_fresh_one(verifier: AttestationVerifier, instance: AgentInstance,
                                                                 case: str, claims: dict[str, int], names: str) -> None:
    relative: dict[str, Any] = {name: instance.time() + offset for name, offset in claims.items()}
    with pytest.raises(UseFreshAttestation) as caught:
        await verify(verifier, instance, instance.attestation(**relative), instance.pop())
    assert (caught.value.status, caught.value.error) == (400, "use_fresh_attestation")
    assert names in caught.value.description


async def test_abca_4_an_aud_naming_this_gateway_is_accepted(verifier: AttestationVerifier,
                                                             instance: AgentInstance) -> None:
    assert await verify(verifier, instance, instance.attestation(aud=[ISSUER, "https://rs.example.com"]),
                        instance.pop())


async def test_abca_7_1_max_age_is_the_attesters(instance: AgentInstance, seen: MemorySeen) -> None:
    verifier = AttestationVerifier([Attester("patient", keys_of(instance.attester), max_age=3600)],
                                   issuer=ISSUER, seen=seen)
    assert await verify(verifier, instance, instance.attestation(iat=instance.time() - 1800), instance.pop())


# --- The PoP (§5.1, §7.2) --------------------------------------------------------------------------


def _pop_unsigned(i: AgentInstance) -> str:
    return compact({"typ": POP_TYP, "alg": "none"}, i.pop_claims(), b"\x00" * 8)


def _pop_es384_header_on_p256(i: AgentInstance) -> str:
    return compact({"typ": POP_TYP, "alg": "ES384"}, i.pop_claims(), signer_for("ES256", i.key.private_key))


BAD_POPS: list[tuple[str, Callable[[AgentInstance], str], str]] = [
    ("typ_JWT", lambda i: i.pop(header={"typ": "JWT"}), f"typ must be {POP_TYP}"),
    ("typ_of_the_attestation", lambda i: i.pop(header={"typ": ATTESTATION_TYP}), f"typ must be {POP_TYP}"),
    ("alg_none", _pop_unsigned, "algorithm 'none' is not allowed"),
    ("hs256", lambda i: compact({"typ": POP_TYP, "alg": "HS256"}, i.pop_claims(), hmac_signer(b"k" * 32)),
     "algorithm 'HS256' is not allowed"),
    ("signed_by_another_key", lambda i: i.pop(key=SigningKey.generate("ES256")), "signature rejected"),
    ("signed_by_the_attester_key", lambda i: i.pop(key=i.attester), "signature rejected"),
    ("alg_not_the_cnf_keys", _pop_es384_header_on_p256, "algorithm ES384 does not match key 'cnf.jwk' (ES256)"),
    ("jwk_header", lambda i: i.pop(header={"jwk": i.key.public_jwk}), "header parameter jwk is not accepted"),
    ("aud_a_resource_server", lambda i: i.pop(aud="https://mail.example.com"), "aud is not this gateway's issuer"),
    ("aud_with_a_trailing_slash", lambda i: i.pop(aud=ISSUER + "/"), "aud is not this gateway's issuer"),
    ("aud_two_audiences", lambda i: i.pop(aud=[ISSUER, "https://mail.example.com"]), "aud is not this gateway's"),
    ("no_aud", lambda i: i.pop(aud=None), "aud is not this gateway's issuer"),
    ("no_iat", lambda i: i.pop(iat=None), "iat claim is required"),
    ("iat_far_past", lambda i: i.pop(iat=i.time() - 61), "iat is outside the accepted window"),
    ("iat_in_the_future", lambda i: i.pop(iat=i.time() + 6), "iat is outside the accepted window"),
    ("expired", lambda i: i.pop(exp=i.time() - 31), "expired"),
    ("no_jti", lambda i: i.pop(jti=None), "jti claim is required"),
    ("jti_not_a_string", lambda i: i.pop(jti=7), "jti claim is not a string"),
    ("jti_of_10_kb", lambda i: i.pop(jti="j" * 10_000), "jti claim is required: a string of 1 to 256"),
]


@pytest.mark.parametrize(("case", "make", "names"), BAD_POPS, ids=[c[0] for c in BAD_POPS])
async def test_abca_7_2_bad_pops_are_refused(verifier: AttestationVerifier, instance: AgentInstance, seen: MemorySeen,
                                             case: str, make: Callable[[AgentInstance], str], names: str) -> None:
    description = await refused(verifier, instance, instance.attestation(), make(instance))
    assert description.startswith("client attestation PoP rejected: "), description
    assert names in description, description
    assert seen.asked == 0  # §9.7: outside the window (or failing any check), never looked up or stored


async def test_abca_7_2_aud_may_be_a_one_element_array(verifier: AttestationVerifier, instance: AgentInstance) -> None:
    assert await verify(verifier, instance, instance.attestation(), instance.pop(aud=[ISSUER])) is not None


@pytest.mark.parametrize("offset", [-60, 5])
async def test_abca_7_2_the_window_edges_are_accepted(verifier: AttestationVerifier, instance: AgentInstance,
                                                      offset: int) -> None:
    assert await verify(verifier, instance, instance.attestation(), instance.pop(iat=instance.time() + offset))


# --- Replay (§9.7, §11.1) --------------------------------------------------------------------------


async def test_abca_11_1_a_pop_jti_is_accepted_once(verifier: AttestationVerifier, instance: AgentInstance,
                                                    seen: MemorySeen) -> None:
    pop = instance.pop(jti="once")
    assert await verify(verifier, instance, instance.attestation(), pop) is not None
    description = await refused(verifier, instance, instance.attestation(), pop)
    assert description == ("client attestation PoP rejected: jti was already used (section 11.1: each PoP is "
                           "accepted once)")
    [(namespace, _)] = seen.values
    assert namespace == SEEN_NAMESPACE
    assert list(seen.values.values()) == [instance.time() + 65]  # kept while a PoP with that iat is accepted


async def test_abca_9_7_a_jti_is_stored_only_after_every_other_check(verifier: AttestationVerifier,
                                                                     instance: AgentInstance) -> None:
    pop = instance.pop(jti="kept")
    await refused(verifier, instance, instance.attestation(sub="spiffe://example.org/agents/other"), pop)
    assert await verify(verifier, instance, instance.attestation(), pop) is not None


async def test_abca_9_7_jtis_are_per_instance_key(verifier: AttestationVerifier, instance: AgentInstance) -> None:
    other = Instance(attester=instance.attester, now=instance.time())
    assert await verify(verifier, instance, instance.attestation(), instance.pop(jti="same"))
    assert await verify(verifier, other, other.attestation(), other.pop(jti="same"))


# --- RFC 9711 posture claims ------------------------------------------------------------------------

UEID_33 = "Ab" + "A" * 42  # base64url of 33 bytes


@pytest.mark.parametrize(("claims", "names"), [
    ({"dbgstat": 0}, "dbgstat claim is not one of enabled, disabled"),  # CBOR's integer in a JSON token
    ({"dbgstat": "off"}, "dbgstat claim is not one of"),
    ({"ueid": "A" * 54}, "ueid claim is not base64url of 7 to 33 bytes"),  # 40 bytes
    ({"ueid": "AQID"}, "ueid claim is not base64url of 7 to 33 bytes"),
    ({"ueid": "not base64url!"}, "ueid claim is not base64url"),
    ({"swversion": ["1.0"], "swname": None}, "swversion claim needs an swname claim (RFC 9711 section 4.2.7)"),
    ({"swversion": "1.0"}, "swversion claim is not [version, ?scheme]"),
    ({"hwmodel": "AQID"}, "hwmodel claim needs an oemid claim"),
    ({"oemboot": True}, "oemboot claim needs an oemid claim"),
    ({"oemid": "AQIDBA"}, "oemid claim is not an IANA enterprise number"),
    ({"eat_nonce": "short"}, "eat_nonce claim is not a text of 8 to 88 bytes"),
    ({"eat_nonce": ["only-one-nonce"]}, "eat_nonce claim is not a text of 8 to 88 bytes, or an array of two"),
    ({"location": {"latitude": 1.5}}, "location claim is not an object with numeric latitude and longitude"),
    ({"location": {"latitude": 1, "longitude": 2, "age": -1}}, "age member is not a non-negative integer"),
    ({"uptime": -5}, "uptime claim is not a non-negative integer"),
    ({"uptime": True}, "uptime claim is not a non-negative integer"),
    ({"measres": [["verifier", [["boot", "maybe"]]]]}, "measres claim is not a list of"),
    ({"measurements": [[70000, "AQID"]]}, "measurements claim is not a list of [content-format"),
    ({"dloas": [["https://dloa.example"]]}, "dloas claim is not a list of"),
    ({"eat_profile": "not a profile"}, "eat_profile claim is not a URI or an OID"),
    ({"image_digest": "sha256:" + "AB" * 32}, "image_digest claim is not sha256: and 64 lowercase hex digits"),
    ({"image_digest": "sha512:" + "ab" * 64}, "image_digest claim is not sha256:"),
    ({"submods": {"tee": {"dbgstat": 3}}}, "dbgstat claim is not one of"),
    ({"submods": {"tee": "a string"}}, "submods claim holds a submodule that is neither"),
    ({"submods": {}}, "submods claim is not a non-empty object"),
])
async def test_eat_4_malformed_posture_claims_refuse_the_attestation(verifier: AttestationVerifier,
                                                                     instance: AgentInstance, claims: dict[str, Any],
                                                                     names: str) -> None:
    description = await refused(verifier, instance, instance.attestation(**claims), instance.pop())
    assert description.startswith("client attestation rejected: ") and names in description, description


def test_eat_4_well_formed_claims_pass_and_only_listed_ones_are_kept() -> None:
    claims = {
        "eat_nonce": ["nonce-one-a", "nonce-two-b"], "ueid": UEID_33, "sueids": {"boot": "AQIDBAUGBw"},
        "oemid": 32473, "hwmodel": "AQID", "hwversion": ["2.1", 1], "oemboot": True, "dbgstat": "disabled-since-boot",
        "location": {"latitude": 48.85, "longitude": 2.35, "age": 3}, "uptime": 86400, "bootcount": 3,
        "bootseed": "AAEC", "dloas": [["https://dloa.example", "platform-1"]], "swname": "agent",
        "swversion": ["1.2.3", 16384], "manifests": [[258, "AAEC"]], "measurements": [[258, "AAEC"]],
        "measres": [["verifier", [["boot", "success"], ["kernel", "not-run"]]]], "eat_profile": "1.3.6.1.4.1.1",
        "intuse": "generic", "image_digest": IMAGE,
        "submods": {"tee": {"dbgstat": "disabled", "cnf": {"jkt": "x"}, "vendor": 1}, "se": ["JWT", "a.b.c"]},
        "cnf": {"jwk": {}}, "sub": AGENT, "vendor_specific": {"anything": True},
    }
    kept = posture_claims(claims)
    assert set(kept) == set(claims) - {"cnf", "sub", "vendor_specific"}
    assert kept["submods"] == {"tee": {"dbgstat": "disabled"},  # a nested token: its type and digest, never itself
                               "se": {"nested_token": "JWT", "sha256": hashlib.sha256(b"a.b.c").hexdigest()}}
    assert set(kept) <= POSTURE_CLAIMS


def test_eat_4_2_18_submodules_nest_only_so_deep() -> None:
    nested: dict[str, Any] = {"dbgstat": "disabled"}
    for _ in range(5):
        nested = {"submods": {"inner": nested}}
    with pytest.raises(TokenError, match="nests more than 4 levels"):
        posture_claims(nested)


def test_abca_posture_policy_view_is_plain_json() -> None:
    posture = Posture("a", 1, 2, {"dbgstat": "disabled"})
    assert posture.policy_view() == {"attester": "a", "iat": 1, "exp": 2, "claims": {"dbgstat": "disabled"}}


def test_abca_the_instance_key_is_bound_to_one_algorithm() -> None:
    key = SigningKey.generate("ES256")
    bound = bind_key({k: v for k, v in key.public_jwk.items() if k != "alg"}, "cnf.jwk", "ES256")
    assert isinstance(bound, VerificationKey) and bound.algorithm == "ES256"


class CountingKeys(StaticKeys):
    """StaticKeys that count how often a key is looked up (one lookup per signature check)."""

    def __init__(self, *signing: SigningKey) -> None:
        super().__init__({k.kid: bind_key(k.public_jwk, k.kid, k.algorithm) for k in signing})
        self.lookups = 0

    async def key_for(self, kid: str) -> VerificationKey:
        self.lookups += 1
        return await super().key_for(kid)


async def test_abca_9_2_an_attestation_reused_with_fresh_pops_is_verified_once(instance: AgentInstance,
                                                                              seen: MemorySeen) -> None:
    """§9.2: one attestation serves many requests, each with a fresh PoP. Its signature is checked once and
    cached until its `exp`; its freshness (`max_age`) and every PoP are checked on each request."""
    keys = CountingKeys(instance.attester)
    verifier = AttestationVerifier([Attester("node-attester", keys, max_age=120)], issuer=ISSUER, seen=seen)
    attestation = instance.attestation()
    for _ in range(3):
        assert await verify(verifier, instance, attestation, instance.pop()) is not None
    assert keys.lookups == 1 and seen.asked == 3
    later = Instance(attester=instance.attester, key=instance.key, now=instance.time() + 200)  # past max_age
    with pytest.raises(UseFreshAttestation):
        await verify(verifier, later, attestation, later.pop())
