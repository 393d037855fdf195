"""SpiffeId.parse (SPIFFE-ID §2): an invalid SPIFFE ID cannot exist; `str()` gives back the exact text."""

from __future__ import annotations

import pytest

from token_exchange.spiffe import SpiffeId, SpiffeIdError

GOOD = [
    ("spiffe://example.org/agents/mail", "example.org", "/agents/mail"),
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://a-b_c.d9/A.b-c_D/x", "a-b_c.d9", "/A.b-c_D/x"),
    ("spiffe://192.168.0.1/a", "192.168.0.1", "/a"),  # §2.1: a dotted quad is just a name
    ("spiffe://example.org/.../a", "example.org", "/.../a"),  # only '.' and '..' are dot segments
    ("spiffe://example.org/" + "a" * (2048 - len("spiffe://example.org/")), "example.org",
     "/" + "a" * (2048 - len("spiffe://example.org/"))),  # §2.3: exactly 2048 bytes
    ("spiffe://" + "d" * 255 + "/a", "d" * 255, "/a"),  # §2.3: a 255-byte trust domain
]


@pytest.mark.parametrize(("text", "trust_domain", "path"), GOOD, ids=range(len(GOOD)))
def test_spiffe_id_2_good_ids_parse_and_round_trip(text: str, trust_domain: str, path: str) -> None:
    spiffe_id = SpiffeId.parse(text)
    assert (spiffe_id.trust_domain, spiffe_id.path) == (trust_domain, path)
    assert str(spiffe_id) == text
    assert SpiffeId.parse(text) == spiffe_id and hash(SpiffeId.parse(text)) == hash(spiffe_id)


BAD = {
    "uppercase_scheme": "SPIFFE://example.org/a",
    "uppercase_trust_domain": "spiffe://Example.org/a",  # §2.1; Deputy rejects rather than lowercases
    "port": "spiffe://example.org:8443/a",
    "userinfo": "spiffe://u@example.org/a",
    "trailing_slash": "spiffe://example.org/a/",
    "trust_domain_and_slash": "spiffe://example.org/",
    "empty_segment": "spiffe://example.org//a",
    "dot_segment": "spiffe://example.org/./a",
    "dot_dot_segment": "spiffe://example.org/a/..",
    "percent_encoded_path": "spiffe://example.org/a%41",
    "percent_encoded_trust_domain": "spiffe://exa%6dple.org/a",
    "query": "spiffe://example.org/a?x",
    "fragment": "spiffe://example.org/a#f",
    "empty_trust_domain": "spiffe:///a",
    "ipv6": "spiffe://[::1]/a",
    "space": "spiffe://example.org/a b",
    "non_ascii": "spiffe://example.org/é",
    "no_authority": "spiffe:example.org/a",
    "other_scheme": "http://example.org/a",
    "empty": "",
    "scheme_only": "spiffe://",
    "newline_after": "spiffe://example.org/a\n",
    "nul": "spiffe://example.org/a\x00",
    "too_long": "spiffe://example.org/" + "a" * (2049 - len("spiffe://example.org/")),
    "trust_domain_too_long": "spiffe://" + "d" * 256 + "/a",
    "backslash": "spiffe://example.org\\a",
    "plus_in_path": "spiffe://example.org/a+b",
}


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_spiffe_id_2_bad_ids_are_rejected(text: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(text)


@pytest.mark.parametrize("value", [None, 7, b"spiffe://example.org/a"])
def test_spiffe_id_2_non_text_is_rejected(value: object) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(value)  # type: ignore[arg-type]


def test_spiffe_id_error_is_a_value_error() -> None:
    assert issubclass(SpiffeIdError, ValueError)
