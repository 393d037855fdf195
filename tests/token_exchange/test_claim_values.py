"""Claim values Deputy cannot pass on exactly as signed are refused (issue 7, items 3 and 7).

Every verifier (JWT-SVIDs, user tokens, Deputy's own tokens, the resource-server verifier) takes its
claims from `SignatureCache.verified`, which runs `check_claim_values` once per token: NumericDates are
integers from 0 to 2**53 - 1 (RFC 7519 §2, RFC 7493 §2.2); no integer anywhere is beyond 64 bits, no
number is NaN or infinite, no text is unpaired surrogates (RFC 8725 §3.7), no string or member name holds
U+0000 (the policy engine's C strings end there: "alice\\u0000mallory" would reach it as "alice"), and no
identifier (`iss`, `sub`, `client_id`, `jti`, and those of `act` and `may_act`) holds a C0 control
character or DEL. A refusal is `invalid_request` naming the token and the claim, never the value, and it
happens before the policy is asked.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import IDP, Probe
from tests.support import compact, signer_for
from tests.token_exchange.test_jwt_attacks import WHICH, attempt, legit
from token_exchange.jws import SignatureCache, TokenError, check_claim_values
from token_exchange.keys import StaticKeys, VerificationKey


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


def _nested_lists(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# name: (claims changed, what the description must say)
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "exp_2_64": ({"exp": 2**64}, "exp claim is not an integer from 0 to 2**53 - 1"),
    "exp_2_53": ({"exp": 2**53}, "exp claim is not an integer"),
    "exp_fraction": ({"exp": int(time.time()) + 600.5}, "exp claim is not an integer"),
    "exp_nan": ({"exp": float("nan")}, "exp claim is not an integer"),
    "nbf_negative": ({"nbf": -1}, "nbf claim is not an integer from 0"),
    "iat_2_63": ({"iat": 2**63}, "iat claim is not an integer"),
    "iat_boolean": ({"iat": True}, "iat claim is not an integer"),
    "integer_beyond_64_bits": ({"big": 2**64}, "big claim is an integer beyond 64 bits"),
    "integer_below_64_bits": ({"small": -(2**63) - 1}, "small claim is an integer beyond 64 bits"),
    "nested_integer_beyond_64_bits": ({"profile": {"ids": [1, 2**70]}}, "profile.ids claim is an integer beyond"),
    "nan": ({"score": float("nan")}, "score claim is not a finite number"),
    "infinity": ({"score": float("inf")}, "score claim is not a finite number"),
    "minus_infinity": ({"profile": {"score": float("-inf")}}, "profile.score claim is not a finite number"),
    "nested_too_deep": ({"deep": _nested(40)}, "claims are nested more than 32 levels deep"),
    "lists_nested_too_deep": ({"deep": _nested_lists(200)}, "claims are nested more than 32 levels deep"),
    "member_name_with_nul": ({"x\x00y": 1}, "a claim name contains a NUL character"),
    "nested_member_name_with_nul": ({"profile": {"a\x00": 1}}, "a member name of profile claim contains a NUL"),
    "nested_string_with_nul": ({"profile": {"nickname": "al\x00ice"}}, "profile.nickname claim contains a NUL"),
    "string_in_a_list_with_nul": ({"groups": ["staff", "ad\x00min"]}, "groups claim contains a NUL character"),
    "unnamed_claim_with_nul": ({"a b": "x\x00"}, "a claim contains a NUL character"),
    "member_name_with_nul_in_an_unnamed_claim": ({"a b": {"c\x00": 1}}, "a member name of a claim contains a NUL"),
    "lone_surrogate_in_unrelated_claim": ({"nickname": "\ud800"}, "nickname claim is not valid Unicode"),
    "jti_with_del": ({"jti": "abc\x7f"}, "jti claim contains a control character"),
    "client_id_with_unit_separator": ({"client_id": "a\x1fb"}, "client_id claim contains a control character"),
    "act_sub_with_nul": ({"act": {"sub": "spiffe://example.org/a\x00"}}, "act.sub claim contains a control"),
    "act_act_sub_with_escape": ({"act": {"sub": "ok", "act": {"sub": "x\x1b[2J"}}},
                                "act.act.sub claim contains a control character"),
    "act_iss_with_newline": ({"act": {"sub": "ok", "iss": "https://x\n"}}, "act.iss claim contains a control"),
    "may_act_sub_with_nul": ({"may_act": {"sub": "spiffe://example.org/agents/mail\x00evil"}},
                             "may_act.sub claim contains a control character"),
    "sub_number": ({"sub": 42}, "sub claim is not a string"),
    "jti_number": ({"jti": 42}, "jti claim is not a string"),
    "iss_number": ({"iss": 7}, "iss claim is not a string"),
    "client_id_list": ({"client_id": ["a"]}, "client_id claim is not a string"),
    "aud_number": ({"aud": 7}, "aud claim is not a string or a list of strings"),
}


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("attack", REFUSED)
def test_claim_values_that_cannot_pass_on_exactly_are_invalid_request(probe: Probe, which: str,
                                                                      attack: str) -> None:
    claims, says = REFUSED[attack]
    description = attempt(probe, which, legit(probe.deployment, which).signed(claims=claims))
    assert says in description, description
    for library_text in ("must be a string", "Subject", "JWT ID", "Invalid payload"):  # pyjwt's words
        assert library_text not in description, description
    events = probe.new_audit()
    assert [(e["outcome"], e["error"]) for e in events] == [("refused", "invalid_request")]
    assert "policy" not in (events[0]["reasons"] or ""), events[0]  # refused before the policy was asked


@pytest.mark.parametrize(("which", "sub"), [
    ("subject_token", "alice\x00mallory"),
    ("subject_token", "alice\x1b[31m"),
    ("subject_token", "alice\nbob"),
    ("actor_token", "spiffe://example.org/agents/mail\x00"),
    ("actor_token", "spiffe://example.org/agents/mail\x7f"),
], ids=["user_nul", "user_escape", "user_newline", "svid_nul", "svid_del"])
def test_sub_with_a_control_character_is_refused_naming_the_claim_not_the_value(probe: Probe, which: str,
                                                                                sub: str) -> None:
    """Checked before the claims choose a key: an SVID's `sub` is refused for the control character,
    not later as a malformed SPIFFE ID; the description never echoes the value."""
    description = attempt(probe, which, legit(probe.deployment, which).signed(claims={"sub": sub}))
    assert description == f"{which} rejected: sub claim contains a control character", description


def test_iss_with_a_control_character_is_refused_before_it_selects_an_issuer(probe: Probe) -> None:
    description = attempt(probe, "subject_token", legit(probe.deployment, "subject_token").signed(
        claims={"iss": IDP + "\x00"}))
    assert description == "subject_token rejected: iss claim contains a control character", description


ACCEPTED: dict[str, dict[str, Any]] = {
    "tab_and_newline_in_a_name": {"name": "Alice\tSmith\nJr."},
    "control_character_in_a_member_name": {"x\ty": "z"},
    "integers_at_the_64_bit_bounds": {"big": 2**63 - 1, "small": -(2**63)},
    "large_finite_float": {"score": 1.5e308},
    "nested_twenty_levels": {"deep": _nested(20)},
    "lists_nested_twenty_levels": {"deep": _nested_lists(20)},
    "exp_at_2_53_minus_1": {"exp": 2**53 - 1},
    "unicode_text": {"name": "Zoë 🦊"},
}


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("case", ACCEPTED)
def test_claim_values_that_pass_on_exactly_are_accepted(probe: Probe, which: str, case: str) -> None:
    """The checks refuse only what cannot be passed on: ordinary text, tabs and newlines outside
    identifiers, 64-bit integers, finite floats and moderate nesting all reach the policy."""
    d = probe.deployment
    token = legit(d, which).signed(claims=ACCEPTED[case])
    probe.granted(d.exchange(**{which: token}))


# --- The shared path itself: what every verifier inherits ---------------------------------------------


async def test_signature_cache_refuses_bad_claim_values_for_every_verifier() -> None:
    """`SignatureCache.verified` is the one path all four verifiers take, the resource server's included."""
    private = ec.generate_private_key(ec.SECP256R1())
    keys = StaticKeys({"k": VerificationKey("k", "ES256", private.public_key())})
    cache, now = SignatureCache(), int(time.time())

    def token(**claims: Any) -> str:
        return compact({"alg": "ES256", "kid": "k"}, {"sub": "a", "exp": now + 60, **claims},
                       signer_for("ES256", private))

    def choose(header: Any, claims: Any) -> tuple[StaticKeys, frozenset[str]]:
        return keys, frozenset({"ES256"})

    assert (await cache.verified(token(), now=now, choose=choose)).claims["sub"] == "a"
    for bad, says in [({"exp": 2**64}, "exp claim"), ({"sub": "a\x00b"}, "sub claim contains a control"),
                      ({"x": {"y": [float("inf")]}}, "x.y claim is not a finite number")]:
        with pytest.raises(TokenError, match=says):
            await cache.verified(token(**bad), now=now, choose=choose)


@pytest.mark.parametrize(("claims", "says"), [
    ({"exp": 0}, None),
    ({"exp": -1}, "exp claim"),
    ({"iat": 2**53 - 1, "nbf": 0}, None),
    ({"act": {"sub": "a", "act": {"sub": "b", "act": {"client_id": "c\x00"}}}}, "act.act.act.client_id claim"),
    ({"may_act": {"iss": "https://idp\r"}}, "may_act.iss claim contains a control character"),
    ({"may_act": "not an object"}, None),
    ({"act": {"jti": "x\x01"}}, None),  # jti is an identifier of the token, not of an actor
    ({"scope": "a\tb"}, None),
    ({"aud": ["https://a", "https://b"]}, None),
    ({"aud": ["https://a", 7]}, "aud claim is not a string or a list of strings"),
    ({"list": [[[[1]]]]}, None),
])
def test_check_claim_values_table(claims: dict[str, Any], says: str | None) -> None:
    if says is None:
        check_claim_values(claims)
    else:
        with pytest.raises(TokenError, match=says.replace("*", r"\*")):
            check_claim_values(claims)
