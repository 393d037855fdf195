"""Issue 9 §3 (SETs): Deputy's SET signer — RFC 8417 §2.2/§2.3 and SSF 1.0 §4.1 — checked with joserfc, an
independent JOSE library, against the event keys' JWK Set."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from token_exchange.event_signing import EventSigner
from token_exchange.signing import SigningKey

ISSUER = "https://deputy.example.com"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CLAIMS = {"aud": "https://mail.example.com", "txn": "task-1",
          "sub_id": {"format": "opaque", "id": "task-1"}, "events": {SESSION_REVOKED: {"initiating_entity": "user"}}}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("RS256")


@pytest.fixture
def signer(key: SigningKey) -> EventSigner:
    return EventSigner(issuer=ISSUER, key=key)


def verified(token: str, key: SigningKey) -> Any:
    return jose_jwt.decode(token, KeySet.import_key_set({"keys": [key.public_jwk]}), algorithms=["RS256"])


def test_rfc8417_2_3_ssf_4_1_a_set_is_explicitly_typed_rs256_with_the_event_kid(signer: EventSigner,
                                                                               key: SigningKey) -> None:
    token = verified(signer.sign_event(CLAIMS), key)
    assert token.header == {"typ": "secevent+jwt", "alg": "RS256", "kid": key.kid}


def test_rfc8417_2_2_iss_iat_and_a_unique_jti_are_added_and_no_exp_or_sub(signer: EventSigner,
                                                                          key: SigningKey) -> None:
    before = int(time.time())
    first, second = (verified(signer.sign_event(CLAIMS), key).claims for _ in range(2))
    assert {k: v for k, v in first.items() if k not in ("iss", "iat", "jti")} == CLAIMS  # the claims as given
    assert first["iss"] == ISSUER and before <= first["iat"] <= int(time.time())
    assert len(first["jti"]) >= 32 and first["jti"] != second["jti"]
    assert "exp" not in first and "sub" not in first  # SSF 1.0 §4.1.7, §4.1.2


def test_rfc8417_2_2_a_given_iat_and_jti_are_kept(signer: EventSigner, key: SigningKey) -> None:
    claims = verified(signer.sign_event({**CLAIMS, "iat": 1_800_000_000, "jti": "set-1", "iss": ISSUER}), key).claims
    assert (claims["iat"], claims["jti"], claims["iss"]) == (1_800_000_000, "set-1", ISSUER)


@pytest.mark.parametrize(("change", "says"), [
    ({"exp": 2_000_000_000}, "exp"),
    ({"sub": "alice"}, "sub"),
    ({"iss": "https://other.example.com"}, "iss"),
    ({"iss": ISSUER + "/"}, "iss"),
    ({"events": {}}, "events"),
    ({"events": "session-revoked"}, "events"),
])
def test_ssf_4_1_claims_no_ssf_set_may_carry_are_refused(signer: EventSigner, change: dict[str, Any],
                                                         says: str) -> None:
    with pytest.raises(ValueError, match=says):
        signer.sign_event({**CLAIMS, **change})


def test_ssf_4_1_a_set_without_events_is_refused(signer: EventSigner) -> None:
    with pytest.raises(ValueError, match="events"):
        signer.sign_event({k: v for k, v in CLAIMS.items() if k != "events"})


@pytest.mark.parametrize("algorithm", ["ES256", "PS256", "EdDSA"])
def test_caep_interop_2_6_sets_are_only_signed_rs256(key: SigningKey, algorithm: str) -> None:
    with pytest.raises(ValueError, match="RS256"):
        EventSigner(issuer=ISSUER, key=SigningKey.generate(algorithm))
    with pytest.raises(ValueError, match="RS256"):
        EventSigner(issuer=ISSUER, key=key).use(SigningKey.generate(algorithm))


def test_a_rotated_event_key_signs_from_then_on(signer: EventSigner, key: SigningKey) -> None:
    new = SigningKey.generate("RS256")
    signer.use(new)
    assert verified(signer.sign_event(CLAIMS), new).header["kid"] == new.kid
