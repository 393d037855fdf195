"""JWT attacks through the token endpoint (RFC 8725, JWT-SVID, RFC 8693 §2.2.2).

Each forged token is otherwise valid: the legitimate claims, and where it matters the legitimate key, so
a refusal is caused by the one thing the attack changes. A rejected token is `invalid_request` with an
`error_description` naming which token (RFC 8693 §2.2.2), and nothing is issued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.conftest import (
    DOWN_DOMAIN,
    DOWN_IDP,
    GARBAGE_IDP,
    IDP,
    MISSING_IDP,
    REMOTE_IDP,
    Deployment,
    Probe,
)
from tests.support import TrustDomain, UserIdp, b64url, compact, hmac_signer, signer_for
from token_exchange.signing import SigningKey

WHICH = ["subject_token", "actor_token"]


@dataclass
class Legit:
    """The parts of a valid token of one kind, to be tampered with."""

    header: dict[str, Any]
    claims: dict[str, Any]
    key: SigningKey

    def signed(self, header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None,
               drop: tuple[str, ...] = ()) -> str:
        """Signed with the legitimate key, after header/claims changes."""
        body = {k: v for k, v in {**self.claims, **(claims or {})}.items() if k not in drop}
        return compact({**self.header, **(header or {})}, body, signer_for("ES256", self.key.private_key))

    def public_pem(self) -> bytes:
        return self.key.private_key.public_key().public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_der(self) -> bytes:
        return self.key.private_key.public_key().public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def legit(d: Deployment, which: str) -> Legit:
    if which == "subject_token":
        return Legit({"alg": "ES256", "typ": "JWT", "kid": d.idp.key.kid}, d.idp.claims(audience=d.issuer),
                     d.idp.key)
    return Legit({"alg": "ES256", "typ": "JWT", "kid": d.domain.key.kid}, d.domain.claims(audience=d.issuer),
                 d.domain.key)


def attempt(probe: Probe, which: str, token: str) -> str:
    """Present `token` as `which`; it must be refused as invalid_request naming that token."""
    return probe.refused(probe.deployment.exchange(**{which: token}), 400, "invalid_request", names=f"{which} ")


def test_attack_baseline_a_hand_built_token_is_accepted(probe: Probe) -> None:
    """The forging helpers build valid tokens: so every refusal below is caused by the attack."""
    d = probe.deployment
    response = d.exchange(subject_token=legit(d, "subject_token").signed(),
                          actor_token=legit(d, "actor_token").signed())
    probe.granted(response)


@pytest.mark.parametrize(("header", "claims"), [
    ({"typ": None}, {}),
    ({"typ": "JOSE"}, {}),
    ({}, {"aud": ["https://other.example.com", "{issuer}"]}),
], ids=["no_typ", "typ_JOSE", "aud_with_several_values"])
def test_jwt_svid_2_3_and_3_2_optional_typ_and_several_audiences_are_accepted(
        probe: Probe, header: dict[str, Any], claims: dict[str, Any]) -> None:
    d = probe.deployment
    t = legit(d, "actor_token")
    headers = {k: v for k, v in {**t.header, **header}.items() if v is not None}
    body = {**t.claims, **{k: [a.replace("{issuer}", d.issuer) for a in v] for k, v in claims.items()}}
    probe.granted(d.exchange(actor_token=compact(headers, body, signer_for("ES256", t.key.private_key))))


# --- RFC 8725 §2.1, §3.1, §3.2: algorithms ---------------------------------------------------------------


def _der_signature(t: Legit) -> str:
    message = f"{b64url(t.header)}.{b64url(t.claims)}".encode()
    der = t.key.private_key.sign(message, ec.ECDSA(ec.hashes.SHA256()))
    return compact(t.header, t.claims, der)


def _with_segment(token: str, index: int, segment: str) -> str:
    parts = token.split(".")
    parts[index] = segment
    return ".".join(parts)


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


ALGORITHM_ATTACKS: dict[str, Callable[[Legit], str]] = {
    "none_empty_signature": lambda t: compact({**t.header, "alg": "none"}, t.claims, b""),
    "none": lambda t: compact({**t.header, "alg": "none"}, t.claims),
    "None": lambda t: compact({**t.header, "alg": "None"}, t.claims),
    "NONE": lambda t: compact({**t.header, "alg": "NONE"}, t.claims),
    "nOnE_with_real_signature": lambda t: t.signed({"alg": "nOnE"}),
    "hs256_public_key_pem": lambda t: compact({**t.header, "alg": "HS256"}, t.claims, hmac_signer(t.public_pem())),
    "hs256_public_key_der": lambda t: compact({**t.header, "alg": "HS256"}, t.claims, hmac_signer(t.public_der())),
    "hs256_public_jwk_json": lambda t: compact({**t.header, "alg": "HS256"}, t.claims,
                                               hmac_signer(json.dumps(t.key.public_jwk).encode())),
    "rs256_header_on_ec_kid": lambda t: compact({**t.header, "alg": "RS256"}, t.claims,
                                                signer_for("RS256", _rsa_key())),
    "es384_on_p256_key": lambda t: compact({**t.header, "alg": "ES384"}, t.claims,
                                           signer_for("ES384", ec.generate_private_key(ec.SECP384R1()))),
    "eddsa_on_p256_key": lambda t: compact({**t.header, "alg": "EdDSA"}, t.claims,
                                           signer_for("EdDSA", ed25519.Ed25519PrivateKey.generate())),
    "ps256_header_with_es256_signature": lambda t: t.signed({"alg": "PS256"}),
    "alg_missing": lambda t: compact({k: v for k, v in t.header.items() if k != "alg"}, t.claims,
                                     signer_for("ES256", t.key.private_key)),
    "alg_null": lambda t: t.signed({"alg": None}),
    "alg_number": lambda t: t.signed({"alg": 256}),
    "alg_list": lambda t: t.signed({"alg": ["ES256"]}),
    "alg_object": lambda t: t.signed({"alg": {"name": "ES256"}}),
    "other_key_same_kid": lambda t: compact(t.header, t.claims, signer_for("ES256", ec.generate_private_key(
        ec.SECP256R1()))),
    "ecdsa_all_zero_signature": lambda t: compact(t.header, t.claims, bytes(64)),
    "ecdsa_short_signature": lambda t: t.signed()[:-3],
    "ecdsa_der_signature": _der_signature,
    "claims_changed_after_signing": lambda t: _with_segment(t.signed(), 1, b64url({**t.claims, "sub": "x"})),
}


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("attack", ALGORITHM_ATTACKS)
def test_rfc8725_3_1_algorithm_attacks_are_rejected(probe: Probe, which: str, attack: str) -> None:
    attempt(probe, which, ALGORITHM_ATTACKS[attack](legit(probe.deployment, which)))


def test_rfc8725_3_1_ps256_on_a_key_registered_for_rs256(probe: Probe) -> None:
    d = probe.deployment
    assert d.setup is not None
    key = d.setup.rsa_key
    header = {"alg": "PS256", "typ": "JWT", "kid": key.kid}
    token = compact(header, d.idp.claims(audience=d.issuer), signer_for("PS256", key.private_key))
    attempt(probe, "subject_token", token)


def test_rfc8725_3_1_es256_header_on_an_rsa_kid(probe: Probe) -> None:
    d = probe.deployment
    assert d.setup is not None
    header = {"alg": "ES256", "typ": "JWT", "kid": d.setup.rsa_key.kid}
    token = compact(header, d.idp.claims(audience=d.issuer), signer_for("ES256", d.idp.key.private_key))
    attempt(probe, "subject_token", token)


def test_rfc8725_2_1_hs256_keyed_with_the_rsa_public_key(probe: Probe) -> None:
    d = probe.deployment
    assert d.setup is not None
    key = d.setup.rsa_key
    pem = key.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    token = compact({"alg": "HS256", "typ": "JWT", "kid": key.kid}, d.idp.claims(audience=d.issuer),
                    hmac_signer(pem))
    attempt(probe, "subject_token", token)


# --- RFC 8725 §3.10: kid and key-selecting headers --------------------------------------------------------


KIDS: dict[str, Any] = {
    "unknown": "no-such-key",
    "empty": "",
    "null": None,
    "number": 7,
    "object": {"kid": "x"},
    "ten_kib": "k" * 10240,
    "path_traversal": "../../dev/null",
    "sql_injection": "' OR '1'='1",
    "nul_byte": "key\x00",
}


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("kid", KIDS)
def test_rfc8725_3_10_odd_kid_is_rejected(probe: Probe, which: str, kid: str) -> None:
    attempt(probe, which, legit(probe.deployment, which).signed({"kid": KIDS[kid]}))


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
def test_rfc8725_3_10_key_carrying_headers_never_select_a_key(probe: Probe, which: str, header: str) -> None:
    d = probe.deployment
    attacker = SigningKey.generate("ES256")
    d.jwks_server.documents["/attacker"] = {"keys": [attacker.public_jwk]}
    values = {"jku": d.jwks_server.url + "/attacker", "x5u": d.jwks_server.url + "/attacker",
              "jwk": attacker.public_jwk, "x5c": ["MIIB"]}
    t = legit(d, which)
    token = compact({**t.header, "kid": attacker.kid, header: values[header]}, t.claims,
                    signer_for("ES256", attacker.private_key))
    attempt(probe, which, token)
    assert d.jwks_server.hits.get("/attacker", 0) == 0  # no SSRF: the URL was never fetched


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c", "crit", "cty", "x-extra"])
def test_jwt_svid_2_header_parameters_other_than_alg_kid_typ_are_rejected(probe: Probe, header: str) -> None:
    """JWT-SVID §2: other header parameters MUST NOT be present, even on a correctly signed SVID."""
    d = probe.deployment
    attempt(probe, "actor_token", legit(d, "actor_token").signed({header: ["exp"] if header == "crit" else "x"}))


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("crit", [["exp"], ["x-unknown"], []])
def test_rfc7515_4_1_11_crit_naming_an_unknown_header_is_rejected(probe: Probe, which: str, crit: list[str]) -> None:
    attempt(probe, which, legit(probe.deployment, which).signed({"crit": crit, "x-unknown": 1}))


# --- RFC 8725 §3.3, §3.7, bis §3.14: serialization ---------------------------------------------------------


SHAPES: dict[str, Callable[[Legit], str]] = {
    "jwe_five_segments": lambda t: ".".join([b64url({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": t.key.kid}),
                                             "a" * 20, "b" * 16, "c" * 40, "d" * 22]),
    "two_segments": lambda t: ".".join(t.signed().split(".")[:2]),
    "four_segments": lambda t: t.signed() + ".AAAA",
    "padding": lambda t: t.signed() + "==",
    "standard_base64_characters": lambda t: t.signed().replace("-", "+").replace("_", "/") + "+/",
    "whitespace": lambda t: " " + t.signed(),
    "json_serialization": lambda t: json.dumps({"protected": b64url(t.header), "payload": b64url(t.claims),
                                                "signature": t.signed().split(".")[2]}),
    "header_not_json": lambda t: _with_segment(t.signed(), 0, b64url("not json")),
    "header_json_array": lambda t: _with_segment(t.signed(), 0, b64url("[1]")),
    "payload_json_array": lambda t: _with_segment(t.signed(), 1, b64url("[1, 2]")),
    "header_not_utf8": lambda t: _with_segment(t.signed(), 0, b64url(b"\xff\xfe{}")),
    "header_utf16": lambda t: _with_segment(t.signed(), 0, b64url(json.dumps(t.header).encode("utf-16"))),
    "header_with_bom": lambda t: _with_segment(t.signed(), 0, b64url(b"\xef\xbb\xbf" + json.dumps(
        t.header).encode())),
    "empty": lambda t: "..",
}


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("shape", SHAPES)
def test_rfc8725_3_14_only_compact_jws_is_accepted(probe: Probe, which: str, shape: str) -> None:
    attempt(probe, which, SHAPES[shape](legit(probe.deployment, which)))


def test_rfc8725_3_14_oversized_token_is_rejected(probe: Probe) -> None:
    d = probe.deployment
    attempt(probe, "subject_token", legit(d, "subject_token").signed(claims={"pad": "x" * 20000}))


# --- RFC 7519 §4.1, RFC 8725 §3.9: time and audience claims ----------------------------------------------


def _now() -> int:
    return int(time.time())


CLAIM_ATTACKS: dict[str, Callable[[Legit], str]] = {
    "expired": lambda t: t.signed(claims={"exp": _now() - 3600, "iat": _now() - 7200}),
    "expired_beyond_leeway": lambda t: t.signed(claims={"exp": _now() - 120}),
    "nbf_in_future": lambda t: t.signed(claims={"nbf": _now() + 3600}),
    "iat_in_future": lambda t: t.signed(claims={"iat": _now() + 3600}),
    "exp_missing": lambda t: t.signed(drop=("exp",)),
    "exp_string": lambda t: t.signed(claims={"exp": str(_now() + 600)}),
    "exp_boolean": lambda t: t.signed(claims={"exp": True}),
    "exp_null": lambda t: t.signed(claims={"exp": None}),
    "nbf_string": lambda t: t.signed(claims={"nbf": "0"}),
    "aud_missing": lambda t: t.signed(drop=("aud",)),
    "aud_foreign": lambda t: t.signed(claims={"aud": "https://elsewhere.example.com"}),
    "aud_list_without_us": lambda t: t.signed(claims={"aud": ["https://a.example", "https://b.example"]}),
    "aud_object": lambda t: t.signed(claims={"aud": {"aud": t.claims["aud"]}}),
    "aud_empty_list": lambda t: t.signed(claims={"aud": []}),
    "aud_issuer_with_trailing_slash": lambda t: t.signed(claims={"aud": str(
        t.claims["aud"][0] if isinstance(t.claims["aud"], list) else t.claims["aud"]) + "/"}),
    "sub_missing": lambda t: t.signed(drop=("sub",)),
    "sub_not_a_string": lambda t: t.signed(claims={"sub": 42}),
    "sub_empty": lambda t: t.signed(claims={"sub": ""}),
}


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("attack", CLAIM_ATTACKS)
def test_rfc7519_4_1_time_audience_and_subject_claims_are_checked(probe: Probe, which: str, attack: str) -> None:
    attempt(probe, which, CLAIM_ATTACKS[attack](legit(probe.deployment, which)))


# --- RFC 8725 §3.8: issuers and their keys -----------------------------------------------------------------


def _deputy_key(d: Deployment) -> SigningKey:
    return d.signing_keys().tokens.current


ISSUER_ATTACKS: dict[str, Callable[[Deployment], str]] = {
    "unconfigured_issuer": lambda d: UserIdp("https://evil.example.com").token(audience=d.issuer),
    "issuer_off_by_a_slash": lambda d: d.idp.token(audience=d.issuer, iss=IDP + "/"),
    "issuer_in_uppercase": lambda d: d.idp.token(audience=d.issuer, iss=IDP.upper()),
    "issuer_missing": lambda d: d.idp.sign({k: v for k, v in d.idp.claims(audience=d.issuer).items() if k != "iss"}),
    "configured_issuer_signed_by_another_key": lambda d: UserIdp(IDP).token(audience=d.issuer),
    "file_issuer_signed_with_remote_issuer_key": lambda d: d.remote_idp.token(audience=d.issuer, iss=IDP),
    "remote_issuer_signed_with_file_issuer_key": lambda d: d.idp.token(audience=d.issuer, iss=REMOTE_IDP),
    "signed_with_deputys_own_key": lambda d: compact(
        {"alg": "ES256", "typ": "JWT", "kid": _deputy_key(d).kid}, d.idp.claims(audience=d.issuer),
        signer_for(_deputy_key(d).algorithm, _deputy_key(d).private_key)),
}


@pytest.mark.parametrize("attack", ISSUER_ATTACKS)
def test_rfc8725_3_8_subject_token_keys_must_belong_to_its_issuer(probe: Probe, attack: str) -> None:
    attempt(probe, "subject_token", ISSUER_ATTACKS[attack](probe.deployment))


# --- JWT-SVID: trust domains, algorithms, typ, SPIFFE IDs -----------------------------------------------


def _x509_svid(d: Deployment) -> str:
    assert d.setup is not None
    key = d.setup.x509_key
    return compact({"alg": "ES256", "typ": "JWT", "kid": key.kid}, d.domain.claims(audience=d.issuer),
                   signer_for("ES256", key.private_key))


def _eddsa_svid(d: Deployment) -> str:
    key = SigningKey.generate("EdDSA")
    domain = TrustDomain("example.org", key=key)
    return compact({"alg": "EdDSA", "typ": "JWT", "kid": d.domain.key.kid}, domain.claims(audience=d.issuer),
                   signer_for("EdDSA", key.private_key))


SVID_ATTACKS: dict[str, Callable[[Deployment], str]] = {
    "untrusted_trust_domain": lambda d: TrustDomain("evil.example").svid(audience=d.issuer),
    "domain_key_signing_for_another_domain": lambda d: d.domain.svid(audience=d.issuer,
                                                                     sub="spiffe://remote.example/agents/mail"),
    "remote_domain_key_signing_for_file_domain": lambda d: d.remote_domain.svid(
        audience=d.issuer, sub="spiffe://example.org/agents/mail"),
    "unknown_key_of_a_trusted_domain": lambda d: TrustDomain("example.org").svid(audience=d.issuer),
    "x509_svid_key": _x509_svid,
    "eddsa": _eddsa_svid,
    "typ_at_jwt": lambda d: d.domain.sign(d.domain.claims(audience=d.issuer), headers={"typ": "at+jwt"}),
    "typ_txntoken_jwt": lambda d: d.domain.sign(d.domain.claims(audience=d.issuer), headers={"typ": "txntoken+jwt"}),
    "typ_dpop_jwt": lambda d: d.domain.sign(d.domain.claims(audience=d.issuer), headers={"typ": "dpop+jwt"}),
    "sub_is_the_trust_domain": lambda d: d.domain.svid(audience=d.issuer, sub="spiffe://example.org"),
    "signed_with_deputys_own_key": lambda d: compact(
        {"alg": "ES256", "typ": "JWT", "kid": _deputy_key(d).kid}, d.domain.claims(audience=d.issuer),
        signer_for(_deputy_key(d).algorithm, _deputy_key(d).private_key)),
}


@pytest.mark.parametrize("attack", SVID_ATTACKS)
def test_jwt_svid_rejects_untrusted_or_mistyped_svids(probe: Probe, attack: str) -> None:
    attempt(probe, "actor_token", SVID_ATTACKS[attack](probe.deployment))


BAD_SPIFFE_IDS = [
    "SPIFFE://example.org/a", "spiffe://Example.org/a", "spiffe://example.org:8443/a", "spiffe://u@example.org/a",
    "spiffe://example.org/a/", "spiffe://example.org//a", "spiffe://example.org/./a", "spiffe://example.org/a/..",
    "spiffe://example.org/a%41", "spiffe://exa%6dple.org/a", "spiffe://example.org/a?x", "spiffe://example.org/a#f",
    "spiffe:///a", "spiffe://[::1]/a", "spiffe://example.org/a b", "spiffe://example.org/é",
    "spiffe:example.org/a", "http://example.org/a", "spiffe://example.org/" + "a" * 2030, "agents/mail",
]


@pytest.mark.parametrize("sub", BAD_SPIFFE_IDS)
def test_jwt_svid_3_1_sub_must_be_a_spiffe_id(probe: Probe, sub: str) -> None:
    d = probe.deployment
    attempt(probe, "actor_token", d.domain.svid(audience=d.issuer, sub=sub))


# --- RFC 8725 §2.8, §3.12: cross-JWT confusion --------------------------------------------------------------


@pytest.fixture(scope="module")
def deputy_access_token(deployment: Deployment) -> str:
    response = deployment.exchange()
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_rfc8725_2_8_user_token_as_actor_token(probe: Probe) -> None:
    attempt(probe, "actor_token", probe.deployment.user_token())


def test_rfc8725_2_8_user_token_with_a_spiffe_sub_as_actor_token(probe: Probe) -> None:
    d = probe.deployment
    attempt(probe, "actor_token", d.user_token("spiffe://example.org/agents/mail", aud=[d.issuer]))


def test_rfc8725_2_8_svid_as_subject_token(probe: Probe) -> None:
    attempt(probe, "subject_token", probe.deployment.svid())


@pytest.mark.parametrize("which", WHICH)
def test_rfc8725_2_8_deputy_access_token_is_not_accepted_as_either_token(probe: Probe, which: str,
                                                                         deputy_access_token: str) -> None:
    attempt(probe, which, deputy_access_token)


# --- Remote key sets: fetch failures deny; unknown kids refetch at most once per 30 s -------------------
# (A rotated bundle trusted after 30 s: tests/token_exchange/test_remote_keys.py, with the clock faked.)


@pytest.mark.parametrize("issuer", [DOWN_IDP, MISSING_IDP, GARBAGE_IDP])
def test_issue2_remote_jwks_that_cannot_be_fetched_denies(probe: Probe, issuer: str) -> None:
    d = probe.deployment
    token = UserIdp(issuer, key=d.idp.key).token(audience=d.issuer)
    attempt(probe, "subject_token", token)


def test_issue2_remote_bundle_that_cannot_be_fetched_denies(probe: Probe) -> None:
    d = probe.deployment
    attempt(probe, "actor_token", TrustDomain(DOWN_DOMAIN, key=d.domain.key).svid(audience=d.issuer))


def test_issue2_unknown_kids_do_not_cause_a_refetch_storm(probe: Probe) -> None:
    d = probe.deployment
    assert d.exchange(actor_token=d.remote_domain.svid(audience=d.issuer)).status_code == 200  # bundle fetched
    probe.issued_before = d.issued_count()
    before = d.jwks_server.hits.get("/bundle", 0)
    for _ in range(5):
        attempt(probe, "actor_token", TrustDomain("remote.example").svid(audience=d.issuer))
    assert d.jwks_server.hits.get("/bundle", 0) - before <= 1


@pytest.mark.parametrize("sub", ["\ud800", "alice\udfff"])
def test_rfc8725_3_7_sub_that_is_not_unicode_text_is_refused_and_audited(probe: Probe, sub: str) -> None:
    """A lone surrogate escape decodes to no Unicode text; such a user cannot be recorded or audited."""
    d = probe.deployment
    token = d.user_token(sub, may_act={"sub": "spiffe://example.org/agents/mail"})
    attempt(probe, "subject_token", token)
    assert [e["outcome"] for e in probe.new_audit()] == ["refused"]
