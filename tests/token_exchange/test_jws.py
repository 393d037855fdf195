"""RFC 8725 JWS checks, pure and with real keys: `unverified_parts`, `verify_signature`, the claim checks,
and `SignatureCache` (a verified proof reused until `exp` + leeway, never a verdict)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import b64url, compact, hmac_signer, signer_for
from token_exchange.jws import (
    LEEWAY_S,
    MAX_TOKEN_BYTES,
    SignatureCache,
    SignedToken,
    TokenError,
    check_audience,
    check_time_claims,
    string_claim,
    unverified_parts,
    verify_signature,
)
from token_exchange.keys import (
    ASYMMETRIC_ALGORITHMS,
    KeySetUnavailable,
    KeySource,
    StaticKeys,
    VerificationKey,
    parse_key_set,
)
from token_exchange.signing import SigningKey

NOW = 1_800_000_000
CLAIMS: dict[str, Any] = {"iss": "https://idp.example.com", "sub": "alice", "aud": "https://deputy.example.com",
                          "iat": NOW, "exp": NOW + 300}


@dataclass(frozen=True)
class Keys:
    es: SigningKey  # trusted, ES256
    rsa: SigningKey  # trusted, RS256
    stranger: SigningKey  # not trusted

    def trusted(self) -> StaticKeys:
        """The trusted keys as a real JWK Set loads them (each bound to one algorithm)."""
        jwks = {"keys": [self.es.public_jwk, self.rsa.public_jwk]}
        return StaticKeys(parse_key_set(jwks, allowed=ASYMMETRIC_ALGORITHMS))


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_key = SigningKey.of("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return Keys(SigningKey.generate("ES256"), rsa_key, SigningKey.generate("ES256"))


class CountingKeys:
    """A real key source, with every lookup counted."""

    def __init__(self, inner: KeySource) -> None:
        self.inner = inner
        self.lookups: list[str] = []

    async def key_for(self, kid: str) -> VerificationKey:
        self.lookups.append(kid)
        return await self.inner.key_for(kid)


class UnavailableKeys:
    async def key_for(self, kid: str) -> VerificationKey:
        raise KeySetUnavailable("key set https://idp.example.com/jwks unavailable: ConnectError")


def signed(key: SigningKey, claims: Mapping[str, Any] | None = None, /, **header: Any) -> str:
    """A compact JWS signed by `key` with its own algorithm, whatever the header says."""
    body = {**CLAIMS, **(claims or {})}
    return compact({"alg": key.algorithm, "kid": key.kid, **header}, body, signer_for(key.algorithm, key.private_key))


async def verify(token: str, source: KeySource, allowed: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> SignedToken:
    header, _ = unverified_parts(token)
    return await verify_signature(token, header, source, allowed=allowed)


# --- unverified_parts: bis §3.14 compact serialization only, bounded size ---------------------------------


def test_rfc7515_unverified_parts_returns_header_and_claims(keys: Keys) -> None:
    header, claims = unverified_parts(signed(keys.es, typ="JWT"))
    assert header == {"alg": "ES256", "kid": keys.es.kid, "typ": "JWT"}
    assert claims == CLAIMS


def _token_of_length(key: SigningKey, length: int) -> str:
    """A validly signed token of exactly `length` characters (padding a header member and a claim)."""
    for extra in range(4):
        def token(pad: int, extra: int = extra) -> str:
            return signed(key, {"pad": "x" * pad}, x="y" * extra)
        pad = max(0, (length - len(token(0))) * 3 // 4 - 4)
        while len(token(pad)) < length:
            pad += 1
        if len(token(pad)) == length:
            return token(pad)
    raise AssertionError(f"no token of length {length}")


def test_rfc8725_bis_3_14_a_token_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not(keys: Keys) -> None:
    at_limit = _token_of_length(keys.es, MAX_TOKEN_BYTES)
    assert unverified_parts(at_limit)[0]["alg"] == "ES256"
    with pytest.raises(TokenError, match=f"longer than {MAX_TOKEN_BYTES} bytes"):
        unverified_parts(_token_of_length(keys.es, MAX_TOKEN_BYTES + 1))
    with pytest.raises(TokenError, match="longer than"):
        unverified_parts("a" * (MAX_TOKEN_BYTES + 1))


SHAPES: dict[str, Callable[[str], str]] = {
    "empty": lambda t: "",
    "dots_only": lambda t: "..",
    "one_segment": lambda t: t.split(".")[0],
    "two_segments": lambda t: ".".join(t.split(".")[:2]),
    "unsigned_empty_signature": lambda t: ".".join(t.split(".")[:2]) + ".",
    "empty_header": lambda t: "." + t.split(".", 1)[1],
    "four_segments": lambda t: t + ".AAAA",
    "jwe_five_segments": lambda t: ".".join([b64url({"alg": "RSA-OAEP", "enc": "A256GCM"}), "a" * 20, "b" * 16,
                                             "c" * 40, "d" * 22]),
    "padding": lambda t: t + "==",
    "standard_base64_plus": lambda t: t[:-2] + "+A",
    "standard_base64_slash": lambda t: t[:-2] + "/A",
    "leading_space": lambda t: " " + t,
    "trailing_newline": lambda t: t + "\n",
    "space_inside": lambda t: t.replace(".", ". ", 1),
    "non_ascii": lambda t: t[:-1] + "é",
    "json_serialization": lambda t: json.dumps({"protected": t.split(".")[0], "payload": t.split(".")[1],
                                                "signature": t.split(".")[2]}),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_rfc8725_bis_3_14_only_three_base64url_segments_are_read(keys: Keys, shape: str) -> None:
    with pytest.raises(TokenError, match="not a compact JWS"):
        unverified_parts(SHAPES[shape](signed(keys.es)))


def _segments(header: bytes | str, payload: bytes | str) -> str:
    return f"{b64url(header)}.{b64url(payload)}.{b64url(b'signature')}"


GOOD_HEADER, GOOD_PAYLOAD = json.dumps({"alg": "ES256", "kid": "k"}), json.dumps(CLAIMS)
MALFORMED = {
    "header_base64_of_impossible_length": "a." + b64url(GOOD_PAYLOAD) + ".AAAA",
    "payload_base64_of_impossible_length": b64url(GOOD_HEADER) + ".abcde.AAAA",
    "header_not_json": _segments("not json", GOOD_PAYLOAD),
    "header_json_array": _segments("[1]", GOOD_PAYLOAD),
    "header_json_string": _segments('"ES256"', GOOD_PAYLOAD),
    "payload_not_json": _segments(GOOD_HEADER, "not json"),
    "payload_json_array": _segments(GOOD_HEADER, "[1, 2]"),
    "payload_json_number": _segments(GOOD_HEADER, "1"),
    "header_not_utf8": _segments(b"\xff\xfe{}", GOOD_PAYLOAD),
    "payload_latin1": _segments(GOOD_HEADER, '{"sub":"\xe9"}'.encode("latin-1")),
}


@pytest.mark.parametrize("token", MALFORMED.values(), ids=MALFORMED.keys())
def test_rfc7515_bad_base64url_or_json_is_malformed(token: str) -> None:
    with pytest.raises(TokenError, match="malformed"):
        unverified_parts(token)


def _resigned(key: SigningKey, header: bytes, payload: bytes) -> str:
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode()
    return f"{signing_input.decode()}.{b64url(signer_for(key.algorithm, key.private_key)(signing_input))}"


NOT_UTF8_JSON: dict[str, Callable[[str], tuple[bytes, bytes]]] = {
    "header_utf16": lambda k: (json.dumps({"alg": "ES256", "kid": k}).encode("utf-16"), json.dumps(CLAIMS).encode()),
    "header_utf8_bom": lambda k: (b"\xef\xbb\xbf" + json.dumps({"alg": "ES256", "kid": k}).encode(),
                                  json.dumps(CLAIMS).encode()),
    "payload_utf16le": lambda k: (json.dumps({"alg": "ES256", "kid": k}).encode(),
                                  json.dumps(CLAIMS).encode("utf-16-le")),
    "payload_utf32": lambda k: (json.dumps({"alg": "ES256", "kid": k}).encode(), json.dumps(CLAIMS).encode("utf-32")),
}


@pytest.mark.parametrize("encoding", NOT_UTF8_JSON)
async def test_rfc8725_3_7_header_and_claims_must_be_utf8_json_even_when_correctly_signed(
        keys: Keys, encoding: str) -> None:
    header, payload = NOT_UTF8_JSON[encoding](keys.es.kid)
    token = _resigned(keys.es, header, payload)
    try:
        await SignatureCache().verified(token, now=NOW, choose=lambda h, c: (keys.trusted(), ASYMMETRIC_ALGORITHMS))
    except TokenError:
        return
    raise AssertionError("a non-UTF-8 JWS was verified")


# --- verify_signature: RFC 8725 §3.1 (algorithm bound to the key), §3.10 (no key-carrying headers) -------


async def test_rfc8725_3_1_a_token_signed_by_a_trusted_key_verifies(keys: Keys) -> None:
    for key in (keys.es, keys.rsa):
        result = await verify(signed(key), keys.trusted())
        assert dict(result.claims) == CLAIMS
        assert dict(result.header) == {"alg": key.algorithm, "kid": key.kid}
        with pytest.raises(TypeError):
            result.claims["sub"] = "mallory"  # type: ignore[index]


BAD_KIDS: dict[str, Any] = {"missing": None, "empty": "", "too_long": "k" * 257, "number": 42, "list": ["k"],
                            "object": {"kid": "k"}, "boolean": True}


@pytest.mark.parametrize("kid", BAD_KIDS.values(), ids=BAD_KIDS.keys())
async def test_rfc8725_3_10_a_missing_or_unusable_kid_is_refused_without_a_key_lookup(keys: Keys, kid: Any) -> None:
    source = CountingKeys(keys.trusted())
    header = {"alg": "ES256"} if kid is None else {"alg": "ES256", "kid": kid}
    token = compact(header, CLAIMS, signer_for("ES256", keys.es.private_key))
    with pytest.raises(TokenError, match="header has no usable kid"):
        await verify_signature(token, header, source, allowed=ASYMMETRIC_ALGORITHMS)
    assert source.lookups == []
    if not isinstance(kid, str | None):
        with pytest.raises(TokenError, match="malformed"):  # pyjwt already refuses a kid that is no string
            unverified_parts(token)


@pytest.mark.parametrize("kid", ["k" * 256, "../../dev/null", "' OR '1'='1", "\u0000"])
async def test_rfc8725_3_10_an_unknown_kid_up_to_256_characters_is_looked_up_and_not_found(
        keys: Keys, kid: str) -> None:
    source = CountingKeys(keys.trusted())
    with pytest.raises(TokenError, match="no trusted key with kid"):
        await verify(compact({"alg": "ES256", "kid": kid}, CLAIMS, signer_for("ES256", keys.es.private_key)), source)
    assert source.lookups == [kid]


@pytest.mark.parametrize("name", ["jku", "x5u", "x5c", "jwk", "crit", "zip", "enc"])
async def test_rfc8725_3_10_key_carrying_and_unsupported_headers_are_refused_before_any_lookup(
        keys: Keys, name: str) -> None:
    source = CountingKeys(keys.trusted())
    values = {"jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert", "x5c": ["MIIB"],
              "jwk": keys.stranger.public_jwk, "crit": ["exp"], "zip": "DEF", "enc": "A256GCM"}
    header = {"alg": "ES256", "kid": keys.es.kid, name: values[name]}
    token = signed(keys.es, **{name: values[name]})
    with pytest.raises(TokenError, match=f"header parameter {name} is not accepted"):
        await verify_signature(token, header, source, allowed=ASYMMETRIC_ALGORITHMS)
    assert source.lookups == []


BAD_ALGS: dict[str, Any] = {"none": "none", "None": "None", "NONE": "NONE", "HS256": "HS256", "missing": None,
                            "empty": "", "list": ["ES256"], "object": {"alg": "ES256"}, "number": 256}


@pytest.mark.parametrize("alg", BAD_ALGS.values(), ids=BAD_ALGS.keys())
async def test_rfc8725_3_1_an_algorithm_outside_the_allow_list_is_refused_before_any_lookup(
        keys: Keys, alg: Any) -> None:
    source = CountingKeys(keys.trusted())
    header = {"kid": keys.es.kid} if alg is None else {"alg": alg, "kid": keys.es.kid}
    token = compact(header, CLAIMS, signer_for("ES256", keys.es.private_key))
    with pytest.raises(TokenError, match=r"is not allowed|alg header is missing or not a string"):
        await verify(token, source)
    assert source.lookups == []


async def test_rfc8725_3_1_an_algorithm_allowed_elsewhere_is_refused_here(keys: Keys) -> None:
    with pytest.raises(TokenError, match="'RS256' is not allowed"):
        await verify(signed(keys.rsa), keys.trusted(), allowed=frozenset({"ES256"}))


@pytest.mark.parametrize(("key_name", "header_alg", "signing_alg"), [
    ("es", "RS256", "ES256"),  # header claims RSA, kid names the EC key
    ("rsa", "ES256", "RS256"),
    ("rsa", "PS256", "PS256"),  # a real PS256 signature by the key registered for RS256
    ("es", "ES384", "ES256"),
])
async def test_rfc8725_3_1_the_header_alg_must_equal_the_keys_one_algorithm(
        keys: Keys, key_name: str, header_alg: str, signing_alg: str) -> None:
    key: SigningKey = getattr(keys, key_name)
    source = CountingKeys(keys.trusted())
    token = compact({"alg": header_alg, "kid": key.kid}, CLAIMS, signer_for(signing_alg, key.private_key))
    with pytest.raises(TokenError, match=f"algorithm {header_alg} does not match key"):
        await verify(token, source)
    assert source.lookups == [key.kid]


def _public_pem(key: SigningKey) -> bytes:
    return bytes(key.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.mark.parametrize("key_name", ["es", "rsa"])
async def test_rfc8725_2_1_hs256_keyed_with_the_public_key_is_refused(keys: Keys, key_name: str) -> None:
    key: SigningKey = getattr(keys, key_name)
    token = compact({"alg": "HS256", "kid": key.kid}, CLAIMS, hmac_signer(_public_pem(key)))
    with pytest.raises(TokenError, match="'HS256' is not allowed"):
        await verify(token, keys.trusted())
    # Even an allow-list that wrongly admits HS256 cannot help: the key is bound to its own algorithm.
    with pytest.raises(TokenError, match="algorithm HS256 does not match key"):
        await verify(token, keys.trusted(), allowed=ASYMMETRIC_ALGORITHMS | {"HS256"})


async def test_rfc8725_3_3_a_signature_by_another_key_under_a_trusted_kid_is_rejected(keys: Keys) -> None:
    forged = compact({"alg": "ES256", "kid": keys.es.kid}, CLAIMS, signer_for("ES256", keys.stranger.private_key))
    with pytest.raises(TokenError, match="signature rejected"):
        await verify(forged, keys.trusted())


async def test_rfc8725_3_3_claims_changed_after_signing_are_rejected(keys: Keys) -> None:
    header, _, signature = signed(keys.es).split(".")
    with pytest.raises(TokenError, match="signature rejected"):
        await verify(f"{header}.{b64url({**CLAIMS, 'sub': 'mallory'})}.{signature}", keys.trusted())


async def test_deputy_a_key_set_that_cannot_be_fetched_fails_closed(keys: Keys) -> None:
    with pytest.raises(TokenError, match="unavailable"):
        await verify(signed(keys.es), UnavailableKeys())


# --- RFC 7519 §4.1.4-§4.1.6: time claims, with a 30 s leeway ---------------------------------------------


@pytest.mark.parametrize("claims", [
    {}, {"exp": None}, {"exp": str(NOW + 300)}, {"exp": True}, {"exp": float(NOW + 300)}, {"exp": [NOW + 300]},
], ids=["missing", "null", "string", "boolean", "float", "list"])
def test_rfc7519_4_1_4_exp_must_be_an_integer(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenError, match="exp claim missing or not an integer"):
        check_time_claims(claims, now=NOW)


def test_rfc7519_4_1_4_exp_is_accepted_until_the_leeway_ends() -> None:
    assert check_time_claims({"exp": NOW - LEEWAY_S + 1}, now=NOW) == NOW - LEEWAY_S + 1
    with pytest.raises(TokenError, match="expired"):
        check_time_claims({"exp": NOW - LEEWAY_S}, now=NOW)
    with pytest.raises(TokenError, match="expired"):
        check_time_claims({"exp": 0}, now=NOW)


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_rfc7519_4_1_5_nbf_and_iat_may_be_ahead_by_the_leeway_only(name: str) -> None:
    assert check_time_claims({"exp": NOW + 300, name: NOW + LEEWAY_S}, now=NOW) == NOW + 300
    with pytest.raises(TokenError, match=f"{name} is in the future"):
        check_time_claims({"exp": NOW + 300, name: NOW + LEEWAY_S + 1}, now=NOW)


@pytest.mark.parametrize("name", ["nbf", "iat"])
@pytest.mark.parametrize("value", [str(NOW), float(NOW), True, [NOW]], ids=["string", "float", "boolean", "list"])
def test_rfc7519_4_1_5_nbf_and_iat_must_be_integers(name: str, value: Any) -> None:
    with pytest.raises(TokenError, match=f"{name} claim is not an integer"):
        check_time_claims({"exp": NOW + 300, name: value}, now=NOW)


# --- RFC 7519 §4.1.3, RFC 8725 §3.9: audience ------------------------------------------------------------

US = "https://deputy.example.com"


@pytest.mark.parametrize("aud", [US, [US], ["https://other.example", US]])
def test_rfc7519_4_1_3_aud_string_or_list_containing_us(aud: Any) -> None:
    check_audience({"aud": aud}, US)


@pytest.mark.parametrize(("claims", "why"), [
    ({}, "aud claim missing or malformed"),
    ({"aud": None}, "aud claim missing or malformed"),
    ({"aud": []}, "aud claim missing or malformed"),
    ({"aud": [US, 1]}, "aud claim missing or malformed"),
    ({"aud": [[US]]}, "aud claim missing or malformed"),
    ({"aud": {"aud": US}}, "aud claim missing or malformed"),
    ({"aud": 1}, "aud claim missing or malformed"),
    ({"aud": "https://other.example"}, f"aud does not include {US}"),
    ({"aud": [US + "/"]}, f"aud does not include {US}"),
    ({"aud": [US.upper()]}, f"aud does not include {US}"),
    ({"aud": ""}, f"aud does not include {US}"),
])
def test_rfc8725_3_9_aud_missing_malformed_or_foreign_is_refused(claims: dict[str, Any], why: str) -> None:
    with pytest.raises(TokenError, match=why):
        check_audience(claims, US)


# --- string claims: present, non-empty, Unicode text (RFC 8725 §3.7) -------------------------------------


def test_rfc7519_string_claim_returns_the_value() -> None:
    assert string_claim({"sub": "alice"}, "sub") == "alice"


@pytest.mark.parametrize("claims", [{}, {"sub": None}, {"sub": ""}, {"sub": 42}, {"sub": ["alice"]},
                                    {"sub": {"id": "alice"}}, {"sub": True}])
def test_rfc7519_string_claim_missing_empty_or_not_a_string_is_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenError, match="sub claim missing or not a string"):
        string_claim(claims, "sub")


@pytest.mark.parametrize("value", ["\ud800", "alice\udfff", json.loads('"\\udead"')])
def test_rfc8725_3_7_string_claim_that_is_no_unicode_text_is_refused(value: str) -> None:
    with pytest.raises(TokenError, match="sub claim is not valid Unicode"):
        string_claim({"sub": value}, "sub")


# --- SignatureCache: the proof, cached until exp + leeway, bounded ---------------------------------------


class Chooser:
    """A KeyChoice that counts its calls and always picks the trusted keys."""

    def __init__(self, source: KeySource) -> None:
        self.source = source
        self.calls = 0

    def __call__(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> tuple[KeySource, frozenset[str]]:
        self.calls += 1
        return self.source, ASYMMETRIC_ALGORITHMS


async def test_rfc8725_a_cached_proof_is_reused_without_a_key_lookup(keys: Keys) -> None:
    cache, source = SignatureCache(), CountingKeys(keys.trusted())
    choose = Chooser(source)
    token = signed(keys.es)
    first = await cache.verified(token, now=NOW, choose=choose)
    again = await cache.verified(token, now=NOW + 200, choose=choose)
    assert again == first and dict(again.claims) == CLAIMS
    assert (len(source.lookups), choose.calls) == (1, 1)


async def test_rfc8725_a_cached_proof_is_dropped_once_past_exp_plus_leeway(keys: Keys) -> None:
    cache, source = SignatureCache(), CountingKeys(keys.trusted())
    token = signed(keys.es, {"exp": NOW + 300})
    await cache.verified(token, now=NOW, choose=Chooser(source))
    await cache.verified(token, now=NOW + 300 + LEEWAY_S - 1, choose=Chooser(source))
    assert len(source.lookups) == 1
    await cache.verified(token, now=NOW + 300 + LEEWAY_S, choose=Chooser(source))
    assert len(source.lookups) == 2  # verified afresh (the caller's time check then refuses it)


async def test_rfc8725_a_proof_is_cached_by_the_whole_token_so_a_new_signature_is_checked(keys: Keys) -> None:
    cache = SignatureCache()
    token = signed(keys.es)
    await cache.verified(token, now=NOW, choose=Chooser(keys.trusted()))
    header, payload, _ = token.split(".")
    forged = f"{header}.{payload}.{signed(keys.stranger).split('.')[2]}"
    with pytest.raises(TokenError, match="signature rejected"):
        await cache.verified(forged, now=NOW, choose=Chooser(keys.trusted()))


async def test_rfc8725_a_failure_is_never_cached(keys: Keys) -> None:
    cache, source = SignatureCache(), CountingKeys(keys.trusted())
    forged = compact({"alg": "ES256", "kid": keys.es.kid}, CLAIMS, signer_for("ES256", keys.stranger.private_key))
    for _ in range(2):
        with pytest.raises(TokenError, match="signature rejected"):
            await cache.verified(forged, now=NOW, choose=Chooser(source))
    assert len(source.lookups) == 2


async def test_rfc8725_a_token_without_exp_is_verified_every_time(keys: Keys) -> None:
    cache, source = SignatureCache(), CountingKeys(keys.trusted())
    claims = {k: v for k, v in CLAIMS.items() if k != "exp"}
    token = compact({"alg": "ES256", "kid": keys.es.kid}, claims, signer_for("ES256", keys.es.private_key))
    for _ in range(2):
        await cache.verified(token, now=NOW, choose=Chooser(source))
    assert len(source.lookups) == 2


@pytest.mark.parametrize("exp", [str(NOW + 300), float(NOW + 300)], ids=["string", "float"])
async def test_rfc7519_2_a_non_integer_exp_is_refused_before_any_key_lookup(keys: Keys, exp: Any) -> None:
    cache, source = SignatureCache(), CountingKeys(keys.trusted())
    token = compact({"alg": "ES256", "kid": keys.es.kid}, {**CLAIMS, "exp": exp},
                    signer_for("ES256", keys.es.private_key))
    for _ in range(2):
        with pytest.raises(TokenError, match="exp claim is not an integer"):
            await cache.verified(token, now=NOW, choose=Chooser(source))
    assert source.lookups == []


async def test_deputy_the_cache_is_bounded_and_drops_the_oldest_entry_first(keys: Keys) -> None:
    cache, source = SignatureCache(max_entries=2), CountingKeys(keys.trusted())
    first, second, third = (signed(keys.es, {"jti": str(i)}) for i in range(3))
    for token in (first, second, third):
        await cache.verified(token, now=NOW, choose=Chooser(source))
    assert len(source.lookups) == 3
    await cache.verified(third, now=NOW, choose=Chooser(source))
    await cache.verified(second, now=NOW, choose=Chooser(source))
    assert len(source.lookups) == 3  # the two newest are still cached
    await cache.verified(first, now=NOW, choose=Chooser(source))
    assert len(source.lookups) == 4  # the oldest was dropped


async def test_rfc8725_3_8_the_chooser_sees_the_unverified_header_and_claims_and_may_refuse(keys: Keys) -> None:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def refuse(header: Mapping[str, Any], claims: Mapping[str, Any]) -> tuple[KeySource, frozenset[str]]:
        seen.append((dict(header), dict(claims)))
        raise TokenError("issuer is not a configured subject issuer")

    with pytest.raises(TokenError, match="not a configured subject issuer"):
        await SignatureCache().verified(signed(keys.es, typ="JWT"), now=NOW, choose=refuse)
    assert seen == [({"alg": "ES256", "kid": keys.es.kid, "typ": "JWT"}, CLAIMS)]


def test_rfc7515_compact_helper_and_pyjwt_agree(keys: Keys) -> None:
    """The hand-rolled signer used above makes tokens pyjwt itself verifies: refusals here are the checks'."""
    claims = jwt.decode(signed(keys.es), keys.es.private_key.public_key(), algorithms=["ES256"],
                        audience=CLAIMS["aud"], options={"verify_exp": False, "verify_iat": False})
    assert claims == CLAIMS
