"""RFC 9449 proof checking and nonces, pure: `token_exchange.dpop_check`, `dpop_nonces`, `dpop.target_uri`,
with real keys (the bad inputs over HTTP: tests/gateway/test_dpop_token_endpoint.py and
tests/client/test_dpop_verifier.py)."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import compact, signer_for
from token_exchange.dpop import TYP, DpopKey, target_uri
from token_exchange.dpop_check import check_proof
from token_exchange.dpop_nonces import PERIOD_S, DpopNonces
from token_exchange.jws import TokenError
from token_exchange.signing import SigningKey

URL = "https://deputy.example.com/token"
NOW = 1_800_000_000


@pytest.mark.parametrize(("given", "normal"), [
    ("HTTPS://Deputy.Example.COM/token", URL),
    ("https://deputy.example.com:443/token?x=1#y", URL),
    ("http://127.0.0.1:80/", "http://127.0.0.1/"),
    ("http://[::1]:8600/token", "http://[::1]:8600/token"),
    ("https://deputy.example.com", "https://deputy.example.com/"),
    ("ftp://deputy.example.com/token", ""),
    ("/token", ""),
    ("https://deputy.example.com:99999/", ""),
])
def test_rfc9449_4_3_htu_is_normalised_per_rfc3986_6_2_2_and_6_2_3(given: str, normal: str) -> None:
    assert target_uri(given) == normal


def test_rfc9449_4_3_the_proof_names_its_key_and_jti() -> None:
    key = DpopKey()
    proof = check_proof(key.proof("POST", URL, now=NOW), method="POST", url=URL, now=NOW)
    assert (proof.jkt, proof.issued_at, proof.nonce) == (key.jkt, NOW, None)
    assert len(proof.replay_value) == 64 and proof.seen_until == NOW + 65


@pytest.mark.parametrize("algorithm", ["PS256", "RS256", "EdDSA", "ES256"])
def test_rfc9449_4_3_asymmetric_algorithms_other_than_es256_are_accepted(algorithm: str) -> None:
    signing = SigningKey.generate(algorithm)
    jwk = {k: v for k, v in signing.public_jwk.items() if k not in ("kid", "alg", "use")}
    proof = jwt.encode({"jti": "j1", "htm": "POST", "htu": URL, "iat": NOW}, signing.private_key,
                       algorithm=algorithm, headers={"typ": TYP, "jwk": jwk})
    assert check_proof(proof, method="POST", url=URL, now=NOW).jkt == signing.kid


def test_rfc9449_4_3_an_es256_header_on_a_p384_key_is_refused() -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    proof = compact({"typ": TYP, "alg": "ES256", "jwk": jwk}, {"jti": "j", "htm": "POST", "htu": URL, "iat": NOW},
                    signer_for("ES384", private))
    with pytest.raises(TokenError, match="does not fit algorithm ES256"):
        check_proof(proof, method="POST", url=URL, now=NOW)


def test_rfc9449_4_3_a_nonce_that_is_not_a_string_is_refused() -> None:
    key = DpopKey()
    proof = compact({"typ": TYP, "alg": "ES256", "jwk": key.public_jwk},
                    {"jti": "j", "htm": "POST", "htu": URL, "iat": NOW, "nonce": 5},
                    signer_for("ES256", key.signing_key.private_key))
    with pytest.raises(TokenError, match="nonce claim is not a string"):
        check_proof(proof, method="POST", url=URL, now=NOW)


def test_rfc9449_8_a_nonce_lives_one_to_two_periods() -> None:
    key = SigningKey.generate("ES256")
    nonces = DpopNonces(lambda: [key], issuer=URL)
    nonce = nonces.issue(NOW)
    assert nonces.valid(nonce, NOW) and nonces.valid(nonce, NOW + PERIOD_S)
    assert not nonces.valid(nonce, NOW + 2 * PERIOD_S + PERIOD_S)
    assert not nonces.valid(None, NOW) and not nonces.valid(nonce + "x", NOW)


def test_rfc9449_9_a_nonce_is_valid_only_at_the_server_that_issued_it() -> None:
    key = SigningKey.generate("ES256")
    nonce = DpopNonces(lambda: [key], issuer=URL).issue(NOW)
    assert not DpopNonces(lambda: [SigningKey.generate("ES256")], issuer=URL).valid(nonce, NOW)  # other keys
    assert not DpopNonces(lambda: [key], issuer="https://other.example.com").valid(nonce, NOW)  # other issuer


def test_rfc9449_8_nonces_of_the_previous_key_stay_valid_after_a_rotation() -> None:
    old, new = SigningKey.generate("ES256"), SigningKey.generate("ES256")
    ring = [old]
    nonces = DpopNonces(lambda: ring, issuer=URL)
    nonce = nonces.issue(NOW)
    ring[:] = [new, old]
    assert nonces.valid(nonce, NOW) and nonces.issue(NOW) != nonce
    ring[:] = [new]
    assert not nonces.valid(nonce, NOW)


@pytest.mark.parametrize("nonce", ["", ".", "abc.def", "1" * 13 + ".x", "-1.x", "٣.x", "x" * 65])
def test_rfc9449_8_malformed_nonces_are_invalid(nonce: str) -> None:
    assert not DpopNonces(lambda: [SigningKey.generate("ES256")], issuer=URL).valid(nonce, int(time.time()))
