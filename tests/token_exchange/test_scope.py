"""RFC 6749 §3.3 scope values, pure: `Scope.parse` (a request), `from_claim` (a verified token), `of` (a list)."""

from __future__ import annotations

import pytest

from token_exchange.errors import InvalidScope
from token_exchange.scope import MAX_SCOPE_TOKENS, Scope


def scope(*values: str) -> Scope:
    return Scope(frozenset(values))


# --- §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), at the edges of each range ----------------------

ALLOWED = {"0x21": "\x21", "0x23": "\x23", "0x5B": "\x5b", "0x5D": "\x5d", "0x7E": "\x7e", "letters": "mail.read",
           "every_allowed_character": "".join(chr(c) for c in range(0x21, 0x7f) if c not in (0x22, 0x5c))}
FORBIDDEN = {"0x22": "\x22", "0x5C": "\x5c", "0x7F": "\x7f", "0x1F": "\x1f", "0x00": "\x00",
             "0x80": "\x80", "non_ascii": "é", "emoji": "\U0001f600", "tab": "\t", "newline": "\n",
             "line_separator": "\u2028"}


@pytest.mark.parametrize("token", ALLOWED.values(), ids=ALLOWED.keys())
def test_rfc6749_3_3_scope_token_characters_at_the_range_boundaries_are_allowed(token: str) -> None:
    assert Scope.parse(token) == scope(token)
    assert Scope.parse(f"x{token}y") == scope(f"x{token}y")
    assert Scope.from_claim(token) == scope(token)
    assert Scope.of([token]) == scope(token)


@pytest.mark.parametrize("char", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_rfc6749_3_3_characters_outside_the_scope_token_ranges_are_refused(char: str) -> None:
    with pytest.raises(InvalidScope) as info:
        Scope.parse(f"mail.read mail{char}send")
    assert info.value.error == "invalid_scope"
    assert "scope" in info.value.description
    assert Scope.of(["mail.read", f"mail{char}send"]) == scope("mail.read")


def test_rfc6749_3_3_0x20_separates_scope_tokens_and_is_never_inside_one() -> None:
    assert Scope.parse("mail.read mail.send") == scope("mail.read", "mail.send")
    assert Scope.of(["mail.read mail.send", "mail.read"]) == scope("mail.read")
    with pytest.raises(InvalidScope):
        Scope.parse("mail.read\x20")


@pytest.mark.parametrize("char", ["\x22", "\x5c", "\x7f", "\x00", "é", "\U0001f600"])
def test_rfc6749_3_3_a_claim_keeps_its_well_formed_values_and_drops_the_rest(char: str) -> None:
    assert Scope.from_claim(f"mail.read mail{char}send") == scope("mail.read")


# --- parse (a request) vs from_claim (a verified token) vs of (policy output, configuration) --------------


@pytest.mark.parametrize("text", [None, ""])
def test_rfc6749_3_3_a_missing_scope_parameter_is_invalid_scope(text: str | None) -> None:
    with pytest.raises(InvalidScope, match="scope is required"):
        Scope.parse(text)


@pytest.mark.parametrize("text", ["a  b", " a", "a ", " ", "a\tb", "a\nb", "a\u00a0b", "a\u3000b"])
def test_rfc6749_3_3_request_scope_is_separated_by_single_spaces_only(text: str) -> None:
    with pytest.raises(InvalidScope, match="single spaces"):
        Scope.parse(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("a  b", {"a", "b"}), (" a ", {"a"}), ("a\tb\nc", {"a", "b", "c"}), ("", set()), ("   ", set()),
])
def test_rfc8693_4_2_a_scope_claim_is_split_on_any_whitespace(text: str, expected: set[str]) -> None:
    assert Scope.from_claim(text) == Scope(frozenset(expected))


def test_rfc6749_3_3_a_request_holds_at_most_64_scope_values() -> None:
    assert len(Scope.parse(" ".join(f"s{i}" for i in range(MAX_SCOPE_TOKENS))).values) == MAX_SCOPE_TOKENS
    with pytest.raises(InvalidScope, match="more than 64 values"):
        Scope.parse(" ".join(f"s{i}" for i in range(MAX_SCOPE_TOKENS + 1)))
    with pytest.raises(InvalidScope, match="more than 64 values"):
        Scope.parse(" ".join(["same"] * (MAX_SCOPE_TOKENS + 1)))  # counted as sent, not after dedup


def test_rfc6749_3_3_a_repeated_value_is_one_value() -> None:
    assert Scope.parse("a b a") == scope("a", "b")


@pytest.mark.parametrize(("values", "expected"), [
    (["a", "b"], {"a", "b"}),
    (("a", "b"), {"a", "b"}),
    ({"a"}, {"a"}),
    (frozenset({"a"}), {"a"}),
    (["a", 1, None, b"b", ["c"], "", "d e"], {"a"}),  # non-strings, empty and multi-token items dropped
    ("mail.read", set()),  # a bare string is not a list of scope values (never its characters)
    (None, set()),
    ({"a": True}, set()),
    (42, set()),
])
def test_deputy_scope_of_keeps_only_well_formed_strings_of_a_list(values: object, expected: set[str]) -> None:
    assert Scope.of(values) == Scope(frozenset(expected))


# --- §3.3: order irrelevant, case-sensitive; the set operations the flows narrow with --------------------


def test_rfc6749_3_3_order_is_irrelevant_and_values_are_case_sensitive() -> None:
    assert Scope.parse("mail.read mail.send") == Scope.parse("mail.send mail.read")
    assert Scope.parse("Mail.Read") != Scope.parse("mail.read")
    assert hash(Scope.parse("b a")) == hash(Scope.parse("a b"))


def test_deputy_intersection_narrows() -> None:
    assert scope("a", "b", "c") & scope("b", "c", "d") == scope("b", "c")
    assert scope("a") & scope("A") == scope()
    assert not (scope("a") & scope("b"))


@pytest.mark.parametrize(("left", "right", "expected"), [
    (scope("a"), scope("a", "b"), True),
    (scope("a", "b"), scope("a", "b"), True),
    (scope(), scope("a"), True),
    (scope("a", "b"), scope("a"), False),
    (scope("a"), scope("b"), False),
])
def test_deputy_subset(left: Scope, right: Scope, expected: bool) -> None:
    assert (left <= right) is expected


def test_deputy_an_empty_scope_is_false() -> None:
    assert bool(scope()) is False
    assert bool(scope("a")) is True
    assert bool(Scope.from_claim('"')) is False


@pytest.mark.parametrize(("value", "text"), [
    (scope("mail.send", "mail.read"), "mail.read mail.send"),
    (scope("b", "B", "a", "_", "~"), "B _ a b ~"),  # code-point order: uppercase before "_" before lowercase
    (scope(), ""),
])
def test_rfc6749_3_3_str_is_sorted_space_separated_and_parses_back(value: Scope, text: str) -> None:
    assert str(value) == text
    assert value.sorted() == sorted(value.values)
    if value:
        assert Scope.parse(str(value)) == value
