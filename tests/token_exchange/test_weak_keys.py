"""Weak keys are refused (issue 7, item 4): RFC 7518 §3.3 (RSA of at least 2048 bits for RS* and PS*),
§3.4 (the curve each ES* algorithm names), RFC 8037 §3.1 (EdDSA on Ed25519 or Ed448), RFC 8725 §3.1.

One check (`token_exchange.keys.key_problem`, applied when a JWK is bound to its algorithm) serves both
paths: a key file read at start-up that holds such a key stops start-up; a fetched key set skips the
key, logs it, and keeps serving its other keys.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.conftest import Deployment, Probe, make_setup, running
from tests.support import compact, deputy_command, signer_for
from token_exchange.keys import (
    ASYMMETRIC_ALGORITHMS,
    UnsafeKey,
    VerificationKey,
    parse_key_set,
    read_key_set,
)
from token_exchange.spiffe import SVID_ALGORITHMS


@cache
def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ec_key(curve: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key({"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(),
                                    "P-521": ec.SECP521R1()}[curve])


def jwk_of(private_key: Any, kid: str, **members: Any) -> dict[str, Any]:
    """The public JWK of `private_key`, with `kid` and any other members (alg, use, ...)."""
    public = private_key.public_key()
    writer: Any = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else (
        ECAlgorithm if isinstance(public, ec.EllipticCurvePublicKey) else OKPAlgorithm)
    jwk: dict[str, Any] = writer.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, **members}


# --- The parser: one table of keys, each usable, refused (with why), or not for this verifier ----------


@dataclass(frozen=True)
class KeyCase:
    name: str
    jwk: Callable[[], dict[str, Any]]
    outcome: str  # "usable", "ignored", or a fragment of the reason it is refused


KEY_CASES = [
    KeyCase("rsa_1024", lambda: jwk_of(rsa_key(1024), "k", alg="RS256"),
            "RSA key of 1024 bits; at least 2048 are required (RFC 7518 section 3.3)"),
    KeyCase("rsa_2047", lambda: jwk_of(rsa_key(2047), "k", alg="RS256"), "RSA key of 2047 bits"),
    KeyCase("rsa_2048", lambda: jwk_of(rsa_key(2048), "k", alg="RS256"), "usable"),
    KeyCase("rsa_2048_alg_implied", lambda: jwk_of(rsa_key(2048), "k"), "usable"),
    KeyCase("rsa_1024_alg_implied", lambda: jwk_of(rsa_key(1024), "k"), "RSA key of 1024 bits"),
    KeyCase("rsa_1024_ps256", lambda: jwk_of(rsa_key(1024), "k", alg="PS256"),
            "RSA key of 1024 bits; at least 2048 are required (RFC 7518 section 3.5)"),
    KeyCase("rsa_1024_rs512", lambda: jwk_of(rsa_key(1024), "k", alg="RS512"), "RSA key of 1024 bits"),
    KeyCase("p256_es256", lambda: jwk_of(ec_key("P-256"), "k", alg="ES256"), "usable"),
    KeyCase("p384_es384", lambda: jwk_of(ec_key("P-384"), "k", alg="ES384"), "usable"),
    KeyCase("p521_es512", lambda: jwk_of(ec_key("P-521"), "k", alg="ES512"), "usable"),
    KeyCase("p384_crv_implies_es384", lambda: jwk_of(ec_key("P-384"), "k"), "usable"),
    KeyCase("p384_key_alg_es256", lambda: jwk_of(ec_key("P-384"), "k", alg="ES256"),
            "an EC key on P-384 cannot be used with ES256; a P-256 key is required (RFC 7518 section 3.4)"),
    KeyCase("p256_key_alg_es512", lambda: jwk_of(ec_key("P-256"), "k", alg="ES512"),
            "an EC key on P-256 cannot be used with ES512; a P-521 key is required"),
    KeyCase("p521_key_alg_es384", lambda: jwk_of(ec_key("P-521"), "k", alg="ES384"), "a P-384 key is required"),
    KeyCase("ed25519_eddsa", lambda: jwk_of(ed25519.Ed25519PrivateKey.generate(), "k", alg="EdDSA"), "usable"),
    KeyCase("ed25519_alg_implied", lambda: jwk_of(ed25519.Ed25519PrivateKey.generate(), "k"), "usable"),
    KeyCase("ed448_eddsa", lambda: jwk_of(ed448.Ed448PrivateKey.generate(), "k", alg="EdDSA"), "usable"),
    KeyCase("ed448_alg_implied", lambda: jwk_of(ed448.Ed448PrivateKey.generate(), "k"), "usable"),
    KeyCase("ec_key_alg_eddsa", lambda: jwk_of(ec_key("P-256"), "k", alg="EdDSA"),
            "kty EC cannot be used with EdDSA; an OKP key is required"),
    KeyCase("okp_key_alg_es256", lambda: jwk_of(ed25519.Ed25519PrivateKey.generate(), "k", alg="ES256"),
            "kty OKP cannot be used with ES256"),
    KeyCase("rsa_key_alg_es256", lambda: jwk_of(rsa_key(2048), "k", alg="ES256"), "kty RSA cannot be used with ES256"),
    KeyCase("ec_key_alg_rs256", lambda: jwk_of(ec_key("P-256"), "k", alg="RS256"), "an RSA key is required"),
    KeyCase("ec_crv_says_p256_but_coordinates_are_p384", lambda: {
        **jwk_of(ec_key("P-384"), "k", alg="ES256"), "crv": "P-256"}, "key material cannot be loaded"),
    KeyCase("private_key_published", lambda: {**jwk_of(ec_key("P-256"), "k", alg="ES256"), "d": "AAAA"},
            "private key material"),
    KeyCase("bad_coordinates", lambda: {"kty": "EC", "crv": "P-256", "kid": "k", "x": "AAAA", "y": "AAAA"},
            "key material cannot be loaded"),
    KeyCase("oct_key", lambda: {"kty": "oct", "k": "c2VjcmV0", "kid": "k", "alg": "HS256"}, "ignored"),
    KeyCase("unknown_kty", lambda: {"kty": "PQC", "kid": "k", "alg": "ES256"}, "ignored"),
    KeyCase("kty_not_a_string", lambda: {**jwk_of(ec_key("P-256"), "k"), "kty": ["EC"]}, "ignored"),
    KeyCase("alg_hs256_on_an_rsa_key", lambda: jwk_of(rsa_key(2048), "k", alg="HS256"), "ignored"),
    KeyCase("secp256k1_alg_implied", lambda: {"kty": "EC", "crv": "secp256k1", "kid": "k", "x": "A", "y": "A"},
            "ignored"),
    KeyCase("no_kid", lambda: {k: v for k, v in jwk_of(rsa_key(1024), "k").items() if k != "kid"}, "ignored"),
]


@pytest.mark.parametrize("case", KEY_CASES, ids=[c.name for c in KEY_CASES])
def test_rfc7518_3_3_and_3_4_keys_are_bound_only_when_strong_enough_for_their_algorithm(case: KeyCase) -> None:
    keys = parse_key_set({"keys": [case.jwk()]}, allowed=ASYMMETRIC_ALGORITHMS)
    if case.outcome == "usable":
        assert list(keys) == ["k"] and not keys.rejected
    elif case.outcome == "ignored":
        assert not keys and not keys.rejected
    else:
        assert not keys and case.outcome in keys.rejected["k"], keys.rejected


def test_jwt_svid_6_weak_bundle_keys_are_refused_too_and_other_uses_still_ignored() -> None:
    """The same check for SPIFFE bundles: a weak `jwt-svid` key is refused; a weak `x509-svid` key is not
    for this verifier at all (SPIFFE bundle §4.2.2), so it is ignored, not an error."""
    keys = parse_key_set({"keys": [jwk_of(rsa_key(1024), "weak", use="jwt-svid"),
                                   jwk_of(rsa_key(1024), "x509", use="x509-svid"),
                                   jwk_of(ec_key("P-256"), "good", use="jwt-svid")]},
                         allowed=SVID_ALGORITHMS, use="jwt-svid")
    assert list(keys) == ["good"]
    assert list(keys.rejected) == ["weak"] and "1024 bits" in keys.rejected["weak"]


def test_rfc7518_3_3_a_verification_key_that_breaks_the_rules_cannot_exist() -> None:
    with pytest.raises(UnsafeKey, match="1024 bits"):
        VerificationKey("k", "RS256", rsa_key(1024).public_key())
    with pytest.raises(UnsafeKey, match="P-256"):
        VerificationKey("k", "ES256", ec_key("P-384").public_key())
    with pytest.raises(UnsafeKey, match="RSA key is required"):
        VerificationKey("k", "PS256", ec_key("P-256").public_key())
    with pytest.raises(UnsafeKey, match="private or unknown key"):
        VerificationKey("k", "ES256", ec_key("P-256"))  # a private key never verifies
    assert VerificationKey("k", "EdDSA", ed448.Ed448PrivateKey.generate().public_key()).algorithm == "EdDSA"


def test_kid_named_by_a_refused_key_and_a_good_one_is_a_duplicate() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        parse_key_set({"keys": [jwk_of(rsa_key(1024), "k"), jwk_of(ec_key("P-256"), "k")]},
                      allowed=ASYMMETRIC_ALGORITHMS)


def test_what_pyjwt_enforces_on_its_own() -> None:
    """Found, not assumed (pyjwt 2.15): PyJWK loads a 1024-bit RSA key and a P-384 key declared ES256
    without complaint; a 1024-bit key then verifies with a warning only; the curve is checked at
    verification time, with pyjwt's own message. Hence Deputy's check when the key is loaded."""
    weak = jwt.PyJWK(jwk_of(rsa_key(1024), "k", alg="RS256"))
    assert weak.key.key_size == 1024
    assert jwt.PyJWK(jwk_of(ec_key("P-384"), "k", alg="ES256")).key.curve.name == "secp384r1"
    token = compact({"alg": "RS256", "kid": "k"}, {"sub": "x"}, signer_for("RS256", rsa_key(1024)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert jwt.decode(token, weak.key, algorithms=["RS256"]) == {"sub": "x"}
    assert any("1024 bits" in str(w.message) for w in caught)
    with pytest.raises(jwt.InvalidKeyError, match="1024 bits"):  # Deputy passes this option too
        jwt.decode(token, weak.key, algorithms=["RS256"], options={"enforce_minimum_key_length": True})
    mismatched = compact({"alg": "ES256", "kid": "k"}, {"sub": "x"}, signer_for("ES384", ec_key("P-384")))
    with pytest.raises(jwt.InvalidKeyError, match="curve"):
        jwt.decode(mismatched, ec_key("P-384").public_key(), algorithms=["ES256"])


def test_key_file_with_one_weak_key_among_good_ones_is_an_error(tmp_path: Path) -> None:
    """A file is the operator's statement of trust: one unsafe key in it is an error naming its kid."""
    path = tmp_path / "idp.jwks.json"
    path.write_text(json.dumps({"keys": [jwk_of(ec_key("P-256"), "good"), jwk_of(rsa_key(1024), "weak-rsa")]}))
    with pytest.raises(ValueError, match=r"kid 'weak-rsa': RSA key of 1024 bits; at least 2048 are required"):
        read_key_set(str(path), allowed=ASYMMETRIC_ALGORITHMS)


def test_key_file_with_a_weak_key_stops_deputy_check_with_one_line_exit_2(tmp_path: Path) -> None:
    """`deputy check --config` as a real process: exit 2, one `key: reason` line naming file, kid, why."""
    setup = make_setup(tmp_path)
    try:
        good = json.loads((tmp_path / "example.org.jwks").read_text())["keys"]
        weak = jwk_of(ec_key("P-384"), "wrong-curve", alg="ES256", use="jwt-svid")
        (tmp_path / "example.org.jwks").write_text(json.dumps({"keys": [*good, weak]}))
        done = subprocess.run(deputy_command("check", "--config", str(setup.config)), capture_output=True,
                              text=True, timeout=60)
    finally:
        setup.jwks_server.close()
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith("deputy: trust_domains[0].bundle_file: "), lines[0]
    assert "example.org.jwks" in lines[0]
    assert ("kid 'wrong-curve': an EC key on P-384 cannot be used with ES256; a P-256 key is required "
            "(RFC 7518 section 3.4)") in lines[0]


# --- Fetched key sets, over real HTTP: the weak key is skipped and logged, the others still work ---------


@dataclass
class Weak:
    deployment: Deployment
    weak_idp_token: str
    wrong_curve_idp_token: str
    weak_svid: str


def _weak_token(claims: dict[str, Any], kid: str, alg: str, private_key: Any, signing_alg: str | None = None,
                **header: Any) -> str:
    return compact({"alg": alg, "kid": kid, **header}, claims, signer_for(signing_alg or alg, private_key))


@pytest.fixture(scope="module")
def weak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weak]:
    """A gateway whose remote IdP JWKS and remote SPIFFE bundle each also hold keys that break the rules."""
    setup = make_setup(tmp_path_factory.mktemp("weak-keys"))
    server = setup.jwks_server
    server.documents["/idp"] = {"keys": [*setup.remote_idp.jwks()["keys"], jwk_of(rsa_key(1024), "weak-rsa"),
                                         jwk_of(ec_key("P-384"), "wrong-curve", alg="ES256")]}
    server.documents["/bundle"] = {"keys": [*setup.remote_domain.jwks()["keys"],
                                            jwk_of(rsa_key(1024), "weak-svid-rsa", use="jwt-svid")]}
    try:
        with running(setup) as d:
            user = setup.remote_idp.claims("bob", audience=d.issuer)
            svid = setup.remote_domain.claims(audience=d.issuer)
            yield Weak(d, _weak_token(user, "weak-rsa", "RS256", rsa_key(1024), typ="JWT"),
                       _weak_token(user, "wrong-curve", "ES256", ec_key("P-384"), "ES384", typ="JWT"),
                       _weak_token(svid, "weak-svid-rsa", "RS256", rsa_key(1024), typ="JWT"))
        assert "Traceback" not in d.log() and "server_error" not in d.log(), d.log()
    finally:
        server.close()


def _probe(d: Deployment) -> Probe:
    return Probe(d, d.issued_count(), len(d.audit()))


def test_rfc7518_3_3_token_signed_with_a_weak_key_of_a_fetched_jwks_is_refused(weak: Weak) -> None:
    d = weak.deployment
    probe = _probe(d)
    description = probe.refused(d.exchange(subject_token=weak.weak_idp_token), 400, "invalid_request",
                                names="subject_token ")
    assert "key 'weak-rsa' of the key set is not used: RSA key of 1024 bits" in description, description


def test_rfc7518_3_4_token_verified_with_a_key_on_the_wrong_curve_is_refused(weak: Weak) -> None:
    d = weak.deployment
    probe = _probe(d)
    description = probe.refused(d.exchange(subject_token=weak.wrong_curve_idp_token), 400, "invalid_request",
                                names="subject_token ")
    assert "a P-256 key is required" in description, description


def test_rfc7518_3_3_svid_signed_with_a_weak_key_of_a_fetched_bundle_is_refused(weak: Weak) -> None:
    d = weak.deployment
    probe = _probe(d)
    description = probe.refused(d.exchange(actor_token=weak.weak_svid), 400, "invalid_request",
                                names="actor_token ")
    assert "RSA key of 1024 bits" in description, description


def test_fetched_set_with_a_weak_key_still_serves_its_other_keys(weak: Weak) -> None:
    d = weak.deployment
    assert d.setup is not None
    probe = _probe(d)
    probe.granted(d.exchange(subject_token=d.setup.remote_idp.token("bob", audience=d.issuer)))
    probe = _probe(d)
    probe.granted(d.exchange(actor_token=d.setup.remote_domain.svid(audience=d.issuer)))


def test_fetched_weak_keys_are_logged_as_skipped_with_uri_kid_and_reason(weak: Weak) -> None:
    d = weak.deployment
    d.exchange(subject_token=weak.weak_idp_token)
    d.exchange(actor_token=weak.weak_svid)  # both sets fetched at least once
    events = [json.loads(line) for line in d.log().splitlines() if '"jwks.key_skipped"' in line]
    seen = {(e["uri"].rsplit("/", 1)[1], e["kid"]): e["reason"] for e in events}
    assert seen.keys() == {("idp", "weak-rsa"), ("idp", "wrong-curve"), ("bundle", "weak-svid-rsa")}, events
    assert seen[("idp", "weak-rsa")].startswith("RSA key of 1024 bits; at least 2048 are required")
    assert all(e["level"] == "warning" for e in events)
