"""Error text (issue 7, item 12): every `error_description` Deputy sends is within the RFC 6749 §5.2
character set (%x20-21 / %x23-5B / %x5D-7E) because Deputy wrote it that way, not because characters
were replaced ("§" used to arrive as "?"), and it arrives whole: a description over the limit is cut at a
word boundary with an ASCII "...", and no description Deputy builds from its own text reaches the limit.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from deputy_client.resource import InvalidToken
from tests.conftest import MAIL, Deployment, Probe
from tests.support import ACCESS_TOKEN, GRANT, ID_TOKEN, JWT, RFC6749_CHARSET, compact, signer_for
from tests.token_exchange.test_jwt_attacks import ALGORITHM_ATTACKS, legit
from token_exchange.errors import MAX_DESCRIPTION, InvalidRequest, error_description, shown

ROOT = Path(__file__).resolve().parents[2]
TXN = "urn:ietf:params:oauth:token-type:txn_token"
HOSTILE_TEXT = 'quote" backslash\\ newline\n tab\t emoji😀 nul\x00 del\x7f section§'


def assert_sent_whole(description: str) -> None:
    """In the charset, nothing replaced, nothing cut."""
    assert RFC6749_CHARSET.fullmatch(description), description
    assert "?" not in description and "§" not in description, description
    assert not description.endswith("...") and len(description) < MAX_DESCRIPTION, description


# --- One cut for both error families -------------------------------------------------------------------


WORDS = " ".join(f"word{i:03d}" for i in range(100))  # 799 characters, a space every 8


@pytest.mark.parametrize(("text", "expected"), [
    ("short and whole", "short and whole"),
    ("x" * MAX_DESCRIPTION, "x" * MAX_DESCRIPTION),
    ("y" * (MAX_DESCRIPTION + 1), "y" * (MAX_DESCRIPTION - 3) + "..."),  # one word too long: no boundary to use
    ("RFC 6749 section 5.2", "RFC 6749 section 5.2"),
])
def test_rfc6749_5_2_error_description_is_kept_whole_or_cut_visibly(text: str, expected: str) -> None:
    assert error_description(text) == expected


def test_rfc6749_5_2_long_description_is_cut_at_a_word_boundary() -> None:
    cut = error_description(WORDS)
    assert len(cut) <= MAX_DESCRIPTION and cut.endswith("...")
    kept = cut.removesuffix("...")
    assert WORDS.startswith(kept) and WORDS[len(kept)] == " ", cut  # ends where a word ends
    assert len(kept) > MAX_DESCRIPTION - 12  # and no more than one word is dropped


def test_rfc6749_5_2_and_rfc6750_3_errors_share_the_one_cut() -> None:
    text = "token has been revoked " + WORDS
    assert InvalidRequest(text).description == InvalidToken(text).description == error_description(text)
    assert InvalidToken("token has been revoked").description == "token has been revoked"


@pytest.mark.parametrize(("value", "expected"), [
    ("kid-1", "'kid-1'"), ("' OR '1'='1", "'' OR '1'='1'"), ("key\x00", "(not shown)"), ('a"b', "(not shown)"),
    ("a\\b", "(not shown)"), ("é", "(not shown)"), ("k" * 65, "(not shown)"), ("", "(not shown)"),
    (7, "(not shown)"), (None, "(not shown)"),
])
def test_values_from_a_request_are_quoted_only_when_sendable_as_they_are(value: Any, expected: str) -> None:
    assert shown(value) == expected


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """String constants of a module, docstrings excepted (they never reach a client)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("package", ["client/token_exchange", "client/deputy_client", "delegation", "gateway"])
def test_rfc6749_5_2_no_message_deputy_can_send_holds_a_character_outside_ascii(package: str) -> None:
    """Descriptions say "section", never "§"; docstrings and comments keep "§", which no client sees."""
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for path in sorted((ROOT / package).rglob("*.py"))
             for line, text in _string_literals(path) if not text.isascii()]
    assert not found, "\n".join(found)


def test_rfc6749_5_2_policy_reasons_hold_only_ascii() -> None:
    """The packaged policy's reasons reach clients as `policy refused: <reason>`."""
    strings = [(path.name, text) for path in (ROOT / "policies").rglob("*.rego")
               for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
               for text in re.findall(r'"([^"]*)"', line)]
    assert strings and all(text.isascii() and RFC6749_CHARSET.fullmatch(text) for _, text in strings)


# --- Descriptions Deputy produces, over HTTP: each sent whole -------------------------------------------


Request = Callable[[Deployment], httpx2.Response]


def _exchange(**overrides: Any) -> Request:
    return lambda d: d.exchange(**overrides)


def _with(which: str, make: Callable[[Deployment], str]) -> Request:
    return lambda d: d.exchange(**{which: make(d)})


def _signed(which: str, header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> Request:
    return _with(which, lambda d: legit(d, which).signed(header, claims))


def _attack(which: str, name: str) -> Request:
    return _with(which, lambda d: ALGORITHM_ATTACKS[name](legit(d, which)))


def _post(**kw: Any) -> Request:
    return lambda d: d.client.post("/token", **kw)


SUBJECT_TYPES = ", ".join(sorted([ACCESS_TOKEN, ID_TOKEN, JWT, TXN]))

# (name, request, the whole description or a fragment of it)
DESCRIBED: list[tuple[str, Request, str]] = [
    ("subject_token_type_list", _exchange(subject_token_type="urn:x"),
     f"subject_token_type must be one of: {SUBJECT_TYPES}"),
    ("actor_token_type_list", _exchange(actor_token_type="urn:x"), f"actor_token_type must be one of: {JWT}"),
    ("requested_token_type", _exchange(requested_token_type="urn:x"), "requested_token_type must be the"),
    ("resource_with_fragment", _exchange(resource=MAIL + "#f"), "fragment (RFC 8707 section 2)"),
    ("svid_extra_header", _signed("actor_token", {"cty": "x"}),
     "actor_token rejected: header parameters other than alg, kid and typ are not allowed (JWT-SVID section 2)"),
    ("svid_typ", _signed("actor_token", {"typ": "at+jwt"}),
     "actor_token rejected: typ must be JWT or JOSE (JWT-SVID section 2.3)"),
    ("kid_with_quotes", _signed("subject_token", {"kid": "' OR '1'='1"}), "no trusted key with kid '' OR '1'='1'"),
    ("kid_with_nul", _signed("subject_token", {"kid": "key\x00"}), "no trusted key with kid (not shown)"),
    ("kid_with_backslash_and_quote", _signed("actor_token", {"kid": 'k\\"'}), "no trusted key with kid (not shown)"),
    ("kid_long", _signed("subject_token", {"kid": "k" * 200}), "no trusted key with kid (not shown)"),
    ("alg_list", _signed("subject_token", {"alg": ["ES256"]}), "alg header is missing or not a string"),
    ("alg_with_quote", _signed("subject_token", {"alg": 'ES256"'}), "algorithm (not shown) is not allowed"),
    ("alg_hs256", _attack("subject_token", "hs256_public_key_pem"), "algorithm 'HS256' is not allowed"),
    ("alg_mismatch", _attack("actor_token", "rs256_header_on_ec_kid"), "algorithm RS256 does not match key '"),
    ("signature_of_another_key", _attack("subject_token", "other_key_same_kid"),
     "signature rejected: it does not verify with key '"),
    ("malformed_header", _with("subject_token", lambda d: "e30." + legit(d, "subject_token").signed().split(
        ".", 1)[1].replace(".", "x.", 1)), "subject_token rejected: malformed: header and payload must be"),
    ("sub_number", _signed("subject_token", claims={"sub": 42}), "subject_token rejected: sub claim is not a string"),
    ("exp_huge", _signed("actor_token", claims={"exp": 2**64}),
     "actor_token rejected: exp claim is not an integer from 0 to 2**53 - 1 (a NumericDate)"),
    ("sub_with_nul", _signed("subject_token", claims={"sub": "alice\x00mallory"}),
     "subject_token rejected: sub claim contains a control character"),
    ("svid_sub_not_a_spiffe_id", _signed("actor_token", claims={"sub": "spiffe://example.org/a b"}),
     "sub is not a SPIFFE ID: path segments must be non-empty, not . or .., and [a-zA-Z0-9._-]"),
    ("policy_refused", lambda d: d.exchange(actor_token=d.svid("/agents/helper")), "policy refused: "),
    ("purpose_too_long", _exchange(purpose="p" * 201, requested_token_type=TXN),
     "purpose must be printable text of at most 200 characters"),
    ("target_too_long", _exchange(resource="https://x.example/" + "a" * 2048), "limited to 2048 characters"),
    ("client_secret", _exchange(client_secret="s"), "client_secret is not accepted: agents authenticate with"),
    ("authorization_header", _post(data={"grant_type": GRANT}, headers={"Authorization": "Basic eDp5"}),
     "client authentication is not accepted here: agents authenticate with actor_token"),
    ("not_a_form", _post(content=b"{}", headers={"content-type": "application/json"}),
     "the body must be application/x-www-form-urlencoded"),
    ("repeated_hostile_name", _post(content=f"grant_type={GRANT}&a%22b=1&a%22b=2".encode(),
                                    headers={"content-type": "application/x-www-form-urlencoded"}),
     "a parameter is repeated"),
    *[(f"hostile_{name}", _exchange(**{name: HOSTILE_TEXT}), "") for name in (
        "grant_type", "scope", "subject_token_type", "subject_token", "actor_token", "requested_token_type")],
    ("hostile_audience", _exchange(audience=HOSTILE_TEXT, resource=None), "audience contains control characters"),
    ("hostile_resource", _exchange(resource="https://" + HOSTILE_TEXT), "absolute URI without a fragment"),
]


@pytest.mark.parametrize(("name", "request_", "says"), DESCRIBED, ids=[c[0] for c in DESCRIBED])
def test_rfc6749_5_2_descriptions_deputy_produces_are_sent_whole(probe: Probe, name: str, request_: Request,
                                                                 says: str) -> None:
    response = request_(probe.deployment)
    assert 400 <= response.status_code < 500, response.text
    description = response.json()["error_description"]
    assert_sent_whole(description)
    assert says in description, description
    assert probe.deployment.issued_count() == probe.issued_before


def test_rfc6749_5_2_the_token_type_list_is_sent_whole(probe: Probe) -> None:
    """It was cut at 200 characters (`...token-type:txn_`): all four URIs now arrive."""
    description = probe.refused(probe.deployment.exchange(subject_token_type="urn:x"), 400, "invalid_request")
    assert description == f"subject_token_type must be one of: {SUBJECT_TYPES}"
    assert description.endswith(TXN)


def test_rfc6749_5_2_an_echoed_kid_arrives_exactly(probe: Probe) -> None:
    d = probe.deployment
    t = legit(d, "subject_token")
    token = compact({**t.header, "kid": "no-such-key-01"}, t.claims, signer_for("ES256", t.key.private_key))
    description = probe.refused(d.exchange(subject_token=token), 400, "invalid_request")
    assert description == "subject_token rejected: no trusted key with kid 'no-such-key-01'"
