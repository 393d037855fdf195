"""RFC 8693 §2.1 request parsing, pure: `FormParams.parse` (RFC 6749 §3.1, §3.2) then `rfc8693.parse`.

Every refusal checks the exact OAuthError class, its `error` code (written out here, not read from the
class), and that the description names the parameter at fault.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from token_exchange import rfc8693
from token_exchange.errors import InvalidClient, InvalidRequest, InvalidScope, InvalidTarget, OAuthError
from token_exchange.jws import MAX_TOKEN_BYTES
from token_exchange.rfc6749 import FormParams
from token_exchange.rfc8693 import (
    ACCESS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    JWT_TYPE,
    TXN_TOKEN_TYPE,
    ExchangeRequest,
    Target,
)
from token_exchange.scope import Scope

MAIL = "https://mail.example.com"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
SAML2_TYPE = "urn:ietf:params:oauth:token-type:saml2"
CODES: dict[type[OAuthError], str] = {
    InvalidRequest: "invalid_request",
    InvalidClient: "invalid_client",
    InvalidScope: "invalid_scope",
    InvalidTarget: "invalid_target",
}
BASE: dict[str, str] = {
    "grant_type": rfc8693.GRANT_TYPE,
    "subject_token": "user.token.value",
    "subject_token_type": ACCESS_TOKEN_TYPE,
    "actor_token": "agent.token.value",
    "actor_token_type": JWT_TYPE,
    "resource": MAIL,
    "scope": "mail.read",
}


def form(**changes: str | None) -> list[tuple[str, str]]:
    """The base form with some parameters replaced (a value) or left out (None)."""
    merged: dict[str, str | None] = {**BASE, **changes}
    return [(name, value) for name, value in merged.items() if value is not None]


def parse(pairs: list[tuple[str, str]]) -> ExchangeRequest:
    return rfc8693.parse(FormParams.parse(pairs))


def refused(pairs: list[tuple[str, str]], cls: type[OAuthError], names: str) -> OAuthError:
    """Parsing `pairs` raises exactly `cls`, with its code, and a description naming `names`."""
    with pytest.raises(OAuthError) as info:
        parse(pairs)
    error = info.value
    assert type(error) is cls, repr(error)
    assert error.error == CODES[cls]
    assert names in error.description, error.description
    return error


def error_of(pairs: list[tuple[str, str]]) -> OAuthError | None:
    """The OAuthError parsing raises, or None if it parses (for xfail cases: a wrong outcome asserts)."""
    try:
        parse(pairs)
    except OAuthError as error:
        return error
    return None


def test_rfc8693_2_1_a_complete_form_parses_into_a_typed_request() -> None:
    req = parse(form(client_id="spiffe://example.org/agents/mail", purpose="triage the inbox", task_ttl="600"))
    assert req.subject == rfc8693.PresentedToken("user.token.value", ACCESS_TOKEN_TYPE)
    assert req.actor == rfc8693.PresentedToken("agent.token.value", JWT_TYPE)
    assert req.targets == (Target("resource", MAIL),)
    assert req.scope == Scope(frozenset({"mail.read"}))
    assert req.requested_token_type == ACCESS_TOKEN_TYPE
    assert (req.client_id, req.purpose, req.task_ttl) == ("spiffe://example.org/agents/mail", "triage the inbox", 600)
    assert (dict(req.context), dict(req.details)) == ({}, {})


# --- §2.1: required parameters and token type URIs ------------------------------------------------------


@pytest.mark.parametrize(("changes", "names"), [
    ({"subject_token": None}, "subject_token is required"),
    ({"subject_token_type": None}, "subject_token_type is required with subject_token"),
    ({"subject_token": None, "subject_token_type": None}, "subject_token is required"),
    ({"actor_token": None}, "actor_token is required"),  # Deputy: required by the interface
    ({"actor_token_type": None}, "actor_token_type is required with actor_token"),
    ({"actor_token": None, "actor_token_type": None}, "actor_token is required"),
])
def test_rfc8693_2_1_token_and_its_type_are_both_required(changes: dict[str, str | None], names: str) -> None:
    refused(form(**changes), InvalidRequest, names)


def test_rfc8693_2_1_the_subject_token_is_checked_before_the_actor_token() -> None:
    refused(form(subject_token=None, actor_token=None), InvalidRequest, "subject_token")


@pytest.mark.parametrize("token_type", [ACCESS_TOKEN_TYPE, JWT_TYPE, ID_TOKEN_TYPE, TXN_TOKEN_TYPE])
def test_rfc8693_3_subject_token_types_accepted(token_type: str) -> None:
    assert parse(form(subject_token_type=token_type)).subject.token_type == token_type


BAD_TYPE_URIS = [
    REFRESH_TOKEN_TYPE,
    SAML2_TYPE,
    ACCESS_TOKEN_TYPE.upper(),  # §3: compared as exact strings
    ACCESS_TOKEN_TYPE + " ",
    " " + ACCESS_TOKEN_TYPE,
    "access_token",
    "urn:ietf:params:oauth:token-type:",
]


@pytest.mark.parametrize("token_type", BAD_TYPE_URIS)
def test_rfc8693_3_subject_token_type_must_be_a_supported_uri(token_type: str) -> None:
    refused(form(subject_token_type=token_type), InvalidRequest, "subject_token_type must be one of")


@pytest.mark.parametrize("token_type", [*BAD_TYPE_URIS, ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, TXN_TOKEN_TYPE])
def test_rfc8693_3_actor_token_type_must_be_the_jwt_uri(token_type: str) -> None:
    refused(form(actor_token_type=token_type), InvalidRequest, "actor_token_type must be one of")


@pytest.mark.parametrize("which", ["subject_token", "actor_token"])
def test_rfc8725_oversized_tokens_are_refused_before_any_verification(which: str) -> None:
    req = parse(form(**{which: "a" * MAX_TOKEN_BYTES}))
    assert len((req.subject if which == "subject_token" else req.actor).token) == MAX_TOKEN_BYTES
    refused(form(**{which: "a" * (MAX_TOKEN_BYTES + 1)}), InvalidRequest, f"{which} is longer than")


# --- RFC 6749 §3.1 / §3.2: empty values are absent; single-valued parameters do not repeat -------------


def test_rfc6749_3_1_an_empty_scope_is_no_scope() -> None:
    refused(form(scope=""), InvalidScope, "scope is required")


def test_rfc6749_3_1_an_empty_actor_token_is_a_missing_one() -> None:
    refused(form(actor_token=""), InvalidRequest, "actor_token is required")


def test_rfc6749_3_1_empty_optional_parameters_are_absent() -> None:
    req = parse(form(requested_token_type="", purpose="", task_ttl="", request_context="", request_details="",
                     client_id="", client_secret="", client_assertion=""))
    assert req.requested_token_type == ACCESS_TOKEN_TYPE
    assert (req.purpose, req.task_ttl, req.client_id) == (None, None, None)
    assert (dict(req.context), dict(req.details)) == ({}, {})


def test_rfc6749_3_1_an_empty_resource_is_dropped_and_the_audience_stays() -> None:
    req = parse([*form(resource=""), ("audience", "mail-api")])
    assert req.targets == (Target("audience", "mail-api"),)


def test_rfc6749_3_1_an_empty_repeat_is_not_a_repeat() -> None:
    assert parse([*form(), ("scope", "")]).scope == Scope(frozenset({"mail.read"}))


SINGLE_VALUED = ["grant_type", "subject_token", "subject_token_type", "actor_token", "actor_token_type", "scope",
                 "requested_token_type", "purpose", "task_ttl", "request_context", "request_details", "client_id"]
VALUES = {"requested_token_type": ACCESS_TOKEN_TYPE, "task_ttl": "60", "request_context": "{}",
          "request_details": "{}"}


@pytest.mark.parametrize("same_value", [True, False], ids=["same_value", "other_value"])
@pytest.mark.parametrize("name", SINGLE_VALUED)
def test_rfc6749_3_2_a_repeated_single_valued_parameter_is_invalid_request(name: str, same_value: bool) -> None:
    value = BASE.get(name) or VALUES.get(name, "x")
    first = [] if name in BASE else [(name, value)]  # the base form already holds the first one
    refused([*form(), *first, (name, value if same_value else value + "2")], InvalidRequest, f"'{name}' is repeated")


def test_rfc6749_3_2_a_repeated_name_that_cannot_be_quoted_is_not_echoed() -> None:
    error = refused([*form(), ("x\n\x00", "1"), ("x\n\x00", "2")], InvalidRequest, "a parameter is repeated")
    assert "\n" not in error.description


def test_rfc6749_3_2_a_repeated_unknown_parameter_is_refused_too() -> None:
    """The module's rule: only the parameters a grant declares repeatable may repeat, known or not."""
    refused([*form(), ("foo", "1"), ("foo", "2")], InvalidRequest, "'foo' is repeated")


def test_rfc6749_3_2_unknown_parameters_are_ignored() -> None:
    assert parse([*form(), ("foo", "bar"), ("x-extension", "1")]).targets == (Target("resource", MAIL),)


def test_rfc8707_2_rfc8693_2_1_resource_and_audience_may_repeat() -> None:
    pairs = [*form(), ("audience", "mail-api"), ("resource", "https://calendar.example.com"), ("audience", "b")]
    params = FormParams.parse(pairs)
    assert params.all("resource") == (MAIL, "https://calendar.example.com")
    assert params.all("audience") == ("mail-api", "b")
    req = rfc8693.parse(params)
    assert req.targets == (Target("resource", MAIL), Target("resource", "https://calendar.example.com"),
                           Target("audience", "mail-api"), Target("audience", "b"))
    with pytest.raises(InvalidTarget, match="exactly one resource or audience"):
        req.single_target()  # Deputy: one target per access token


def test_rfc8707_2_a_request_without_any_target_has_no_single_target() -> None:
    req = parse(form(resource=None))
    assert req.targets == ()
    with pytest.raises(InvalidTarget) as info:
        req.single_target()
    assert info.value.error == "invalid_target"


# --- RFC 6749 §2.3: Deputy authenticates agents by actor_token only ---------------------------------------


@pytest.mark.parametrize("name", ["client_secret", "client_assertion", "client_assertion_type"])
def test_rfc6749_2_3_client_credentials_in_the_form_are_invalid_client(name: str) -> None:
    error = refused(form(**{name: "secret-value"}), InvalidClient, name)
    assert error.status == 401
    assert error.headers()["WWW-Authenticate"] == 'Bearer realm="deputy"'
    assert "secret-value" not in error.description


def test_rfc6749_2_3_client_credentials_are_refused_before_anything_else() -> None:
    refused(form(client_secret="s", subject_token=None, scope=None), InvalidClient, "client_secret")


# --- requested_token_type -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (None, ACCESS_TOKEN_TYPE), ("", ACCESS_TOKEN_TYPE), (ACCESS_TOKEN_TYPE, ACCESS_TOKEN_TYPE),
    (TXN_TOKEN_TYPE, TXN_TOKEN_TYPE),
])
def test_rfc8693_2_1_requested_token_type_defaults_to_an_access_token(value: str | None, expected: str) -> None:
    assert parse(form(requested_token_type=value)).requested_token_type == expected


@pytest.mark.parametrize("value", [REFRESH_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TYPE, SAML2_TYPE,
                                   ACCESS_TOKEN_TYPE.upper(), ACCESS_TOKEN_TYPE + " ", "Bearer"])
def test_rfc8693_2_1_requested_token_type_must_be_issuable(value: str) -> None:
    refused(form(requested_token_type=value), InvalidRequest, "requested_token_type")


# --- RFC 8707 §2: resource is an absolute URI without a fragment; audience has no control characters -----


@pytest.mark.parametrize("resource", [
    MAIL, MAIL + "/api?tenant=1", "urn:example:mail", "https://mail.example.com:8443/a/b",
    "https://mail.example.com/" + "a" * (rfc8693.MAX_TARGET_CHARS - len("https://mail.example.com/")),
])
def test_rfc8707_2_absolute_resource_uris_are_accepted(resource: str) -> None:
    assert parse(form(resource=resource)).targets == (Target("resource", resource),)


BAD_RESOURCES = {
    "relative_path": "/api",
    "bare_host": "mail.example.com",
    "network_path": "//mail.example.com",
    "scheme_only": "https:",
    "scheme_not_starting_with_a_letter": "1https://mail.example.com",
    "scheme_with_a_space": "ht tp://mail.example.com",
    "fragment": MAIL + "/#x",
    "empty_fragment": MAIL + "#",
    "space_inside": MAIL + "/a b",
    "leading_space": " " + MAIL,
    "trailing_tab": MAIL + "\t",
    "newline": MAIL + "/\n",
    "non_ascii_host": "https://maïl.example.com",
    "non_ascii_path": MAIL + "/café",
    "line_separator": MAIL + "/\u2028",
    "nul": MAIL + "/\x00",
    "unit_separator": MAIL + "/\x1f",
}


@pytest.mark.parametrize("resource", BAD_RESOURCES.values(), ids=BAD_RESOURCES.keys())
def test_rfc8707_2_resource_must_be_absolute_without_a_fragment(resource: str) -> None:
    refused(form(resource=resource), InvalidTarget, "resource must be an absolute URI")


def test_rfc8707_2_resource_with_a_delete_control_character_is_refused() -> None:
    assert type(error_of(form(resource=MAIL + "/\x7f"))) is InvalidTarget


@pytest.mark.parametrize("name", ["resource", "audience"])
def test_rfc8707_2_overlong_targets_are_refused(name: str) -> None:
    value = "https://mail.example.com/" + "a" * rfc8693.MAX_TARGET_CHARS
    changes: dict[str, str | None] = {"resource": None, name: value}
    refused(form(**changes), InvalidTarget, "resource and audience values are limited to 2048 characters")


@pytest.mark.parametrize("audience", ["mail-api", "Mail API", "café", "spiffe://example.org/rs"])
def test_rfc8693_2_1_audience_is_a_logical_name(audience: str) -> None:
    assert parse(form(resource=None, audience=audience)).targets == (Target("audience", audience),)


@pytest.mark.parametrize("audience", ["mail\n", "mail\r\napi", "\tmail", "mail\x00", "mail\x7f", "mail\x1b[31m",
                                      "mail\u200b", "mail\u2028", "mail\x85"])
def test_rfc8693_2_1_audience_with_control_characters_is_invalid_target(audience: str) -> None:
    refused(form(resource=None, audience=audience), InvalidTarget, "audience contains control characters")


# --- RFC 6749 §3.3: scope -------------------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "names"), [
    (None, "scope is required"),
    ("mail.read  mail.send", "scope must be scope-tokens separated by single spaces"),
    (" mail.read", "scope must be scope-tokens"),
    ("mail.read ", "scope must be scope-tokens"),
    ("mail.read\tmail.send", "scope must be scope-tokens"),
    ("mail.read\nmail.send", "scope must be scope-tokens"),
    ('mail."read"', "scope must be scope-tokens"),
    ("mail\\read", "scope must be scope-tokens"),
    ("mail.réad", "scope must be scope-tokens"),
    (" ".join(f"s{i}" for i in range(65)), "scope has more than 64 values"),
])
def test_rfc6749_3_3_scope_missing_or_malformed_is_invalid_scope(scope: str | None, names: str) -> None:
    refused(form(scope=scope), InvalidScope, names)


def test_rfc6749_3_3_scope_of_64_values_is_accepted() -> None:
    values = [f"s{i}" for i in range(64)]
    assert parse(form(scope=" ".join(values))).scope == Scope(frozenset(values))


# --- purpose and task_ttl (Deputy) ----------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["triage the inbox", "x" * rfc8693.MAX_PURPOSE_CHARS, "café ☕", "a\"b\\c"])
def test_deputy_purpose_is_printable_text_of_at_most_200_characters(purpose: str) -> None:
    assert parse(form(purpose=purpose)).purpose == purpose


@pytest.mark.parametrize("purpose", ["x" * (rfc8693.MAX_PURPOSE_CHARS + 1), "a\nb", "a\tb", "\x00", "a\x7f",
                                     "a\u2028b", "a\x1b[2J"])
def test_deputy_purpose_that_is_not_printable_or_too_long_is_invalid_request(purpose: str) -> None:
    refused(form(purpose=purpose), InvalidRequest, "purpose must be printable text")


@pytest.mark.parametrize(("text", "seconds"), [
    ("1", 1), ("600", 600), (str(86400 * 7), 86400 * 7),
    ("05", 5),  # digits only: a leading zero is still a number of seconds
])
def test_deputy_task_ttl_is_a_positive_number_of_seconds_up_to_7_days(text: str, seconds: int) -> None:
    assert parse(form(task_ttl=text)).task_ttl == seconds


BAD_TASK_TTLS = {
    "zero": "0", "zeros": "000", "negative": "-5", "plus_sign": "+5", "exponent": "1e3", "decimal": "5.0",
    "hex": "0x10", "leading_space": " 5", "trailing_space": "5 ", "underscore": "1_000",
    "over_7_days": str(86400 * 7 + 1), "huge": "9" * 30, "arabic_indic_digit": "٥", "superscript_two": "²",
    "fullwidth_digit": "５",
}


@pytest.mark.parametrize("text", BAD_TASK_TTLS.values(), ids=BAD_TASK_TTLS.keys())
def test_deputy_task_ttl_other_than_1_to_604800_digits_is_invalid_request(text: str) -> None:
    refused(form(task_ttl=text), InvalidRequest, "task_ttl must be a positive number of seconds")


def test_deputy_task_ttl_beyond_the_integer_conversion_limit_is_invalid_request() -> None:
    refused(form(task_ttl="9" * 5000), InvalidRequest, "task_ttl")


# --- Transaction tokens draft §11.1: request_context and request_details ---------------------------------

CONTEXT_PARAMETERS = ["request_context", "request_details"]
LIMIT = rfc8693.MAX_CONTEXT_BYTES


def _exactly(size: int, fill: str = "é") -> str:
    """A JSON object of exactly `size` UTF-8 bytes (`fill` may be multi-byte)."""
    text = '{"a":""}'
    while len((grown := text[:-2] + fill + '"}').encode()) <= size:
        text = grown
    text = text[:-2] + "x" * (size - len(text.encode())) + '"}'
    assert len(text.encode()) == size
    return text


GOOD_CONTEXTS: dict[str, tuple[str, dict[str, Any]]] = {
    "empty_object": ("{}", {}),
    "flat": ('{"ip":"192.0.2.1","n":1,"f":1.5,"t":true,"z":null}',
             {"ip": "192.0.2.1", "n": 1, "f": 1.5, "t": True, "z": None}),
    "four_levels": ('{"a":{"b":{"c":{"d":1}}}}', {"a": {"b": {"c": {"d": 1}}}}),
    "lists_count_as_levels": ('{"a":[[[1]]]}', {"a": [[[1]]]}),
    "largest_safe_integer": (json.dumps({"n": 2**53 - 1}), {"n": 2**53 - 1}),
    "smallest_safe_integer": (json.dumps({"n": -(2**53 - 1)}), {"n": -(2**53 - 1)}),
    "large_float_is_not_an_integer": ('{"n":9007199254740993.0}', {"n": 9007199254740993.0}),
}


@pytest.mark.parametrize("name", CONTEXT_PARAMETERS)
@pytest.mark.parametrize("case", GOOD_CONTEXTS)
def test_txn_tokens_11_1_context_parameters_are_json_objects(name: str, case: str) -> None:
    text, value = GOOD_CONTEXTS[case]
    req = parse(form(**{name: text}))
    assert dict(req.context if name == "request_context" else req.details) == value


@pytest.mark.parametrize("name", CONTEXT_PARAMETERS)
def test_txn_tokens_11_1_context_of_exactly_2048_utf8_bytes_is_accepted(name: str) -> None:
    req = parse(form(**{name: _exactly(LIMIT)}))
    value = (req.context if name == "request_context" else req.details)["a"]
    assert len(json.dumps({"a": value}, ensure_ascii=False, separators=(",", ":")).encode()) == LIMIT


BAD_CONTEXTS: dict[str, tuple[str, str]] = {
    "array": ("[]", "must be a JSON object"),
    "string": ('"text"', "must be a JSON object"),
    "number": ("1", "must be a JSON object"),
    "boolean": ("true", "must be a JSON object"),
    "null": ("null", "must be a JSON object"),
    "truncated": ('{"a":', "is not valid JSON"),
    "single_quotes": ("{'a': 1}", "is not valid JSON"),
    "trailing_garbage": ('{"a":1} x', "is not valid JSON"),
    "trailing_comma": ('{"a":1,}', "is not valid JSON"),
    "nan": ('{"a":NaN}', "is not valid JSON"),
    "infinity": ('{"a":Infinity}', "is not valid JSON"),
    "negative_infinity": ('{"a":[-Infinity]}', "is not valid JSON"),
    "over_2048_bytes": (_exactly(LIMIT + 1, fill="x"), "is longer than 2048 bytes"),
    "over_2048_bytes_in_multibyte_characters": (_exactly(LIMIT + 1), "is longer than 2048 bytes"),
    "five_levels": ('{"a":{"b":{"c":{"d":{"e":1}}}}}', "is nested deeper than 4 levels"),
    "five_levels_of_lists": ('{"a":[[[[1]]]]}', "is nested deeper than 4 levels"),
    "nul_in_a_value": ('{"a":"x\\u0000y"}', "holds a string with U+0000"),
    "nul_in_a_key": ('{"\\u0000":1}', "holds a string with U+0000"),
    "nul_in_a_list": ('{"a":["ok","\\u0000"]}', "holds a string with U+0000"),
    "integer_2_to_the_53": (json.dumps({"n": 2**53}), "holds an integer beyond 2^53"),
    "integer_minus_2_to_the_53": (json.dumps({"n": -(2**53)}), "holds an integer beyond 2^53"),
    "integer_2_to_the_64_nested": (json.dumps({"a": [{"n": 2**64}]}), "holds an integer beyond 2^53"),
}


@pytest.mark.parametrize("name", CONTEXT_PARAMETERS)
@pytest.mark.parametrize("case", BAD_CONTEXTS)
def test_txn_tokens_11_1_malformed_context_parameters_are_invalid_request(name: str, case: str) -> None:
    text, why = BAD_CONTEXTS[case]
    refused(form(**{name: text}), InvalidRequest, f"{name} {why}")


@pytest.mark.parametrize("name", CONTEXT_PARAMETERS)
@pytest.mark.parametrize("text", ['{"a":1e400}', '{"a":[-1e400]}'])
def test_txn_tokens_11_1_a_number_that_overflows_to_infinity_is_invalid_request(name: str, text: str) -> None:
    assert type(error_of(form(**{name: text}))) is InvalidRequest


@pytest.mark.parametrize("text", ['{"a":{"b":{"c":{"d":{}}}}}', '{"a":[[[[]]]]}'])
def test_txn_tokens_11_1_five_levels_of_containers_are_refused_even_when_the_innermost_is_empty(text: str) -> None:
    assert type(error_of(form(request_details=text))) is InvalidRequest


@pytest.mark.parametrize("name", CONTEXT_PARAMETERS)
def test_txn_tokens_11_1_json_nested_past_the_parser_recursion_limit_is_invalid_request(name: str) -> None:
    text = '{"a":' + "[" * 1000 + "]" * 1000 + "}"
    assert len(text.encode()) <= LIMIT
    refused(form(**{name: text}), InvalidRequest, name)


def test_txn_tokens_11_1_request_details_must_not_hold_purpose() -> None:
    refused(form(request_details='{"purpose":"x"}'), InvalidRequest, "request_details must not hold purpose")


def test_txn_tokens_11_1_request_context_may_hold_a_purpose_key() -> None:
    """Only `tctx` carries the task's purpose; `rctx` is the request's environment and may name anything."""
    assert dict(parse(form(request_context='{"purpose":"x"}')).context) == {"purpose": "x"}


def test_txn_tokens_11_1_parsed_context_is_read_only() -> None:
    req = parse(form(request_context='{"a":1}', request_details='{"b":2}'))
    with pytest.raises(TypeError):
        req.context["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        req.details["b"] = 3  # type: ignore[index]


@pytest.mark.parametrize("name", CONTEXT_PARAMETERS)
@pytest.mark.parametrize("text", ['{"a": "\\ud800"}', '{"\\udfff": 1}', '{"a": ["x\\ud83d"]}'])
def test_txn_tokens_11_1_a_lone_surrogate_in_context_is_invalid_request(name: str, text: str) -> None:
    refused(form(**{name: text}), InvalidRequest, f"{name} holds a string with U+0000 or a lone surrogate")
