"""The token endpoint over real HTTP: RFC 8693 token exchange, RFC 6749 §5 responses and errors.

Every refusal checks the status, the `error` code, the RFC 6749 §5.2 character set of the description,
and that no token was recorded (`Probe.refused`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx2
import jwt
import pytest

from tests.conftest import (
    AUDIENCE,
    AUDIENCE_IDP,
    CALENDAR,
    FILES,
    HELPER_AGENT,
    IDP,
    MAIL,
    MAIL_AGENT,
    POLICY_TTL,
    REMOTE_AGENT,
    Deployment,
    Probe,
    deployed,
)
from tests.support import ACCESS_TOKEN, GRANT, ID_TOKEN, JWT, REFRESH_TOKEN, RFC6749_CHARSET, UserIdp

FORM = "application/x-www-form-urlencoded"
Overrides = Callable[[Deployment], dict[str, Any]]


def claims_of(access_token: str) -> dict[str, Any]:
    return dict(jwt.decode(access_token, options={"verify_signature": False}))


def post_raw(deployment: Deployment, body: bytes | str | Iterator[bytes], content_type: str | None = FORM,
             **headers: str) -> httpx2.Response:
    if content_type is not None:
        headers["content-type"] = content_type
    return deployment.client.post("/token", content=body, headers=headers)


def pairs_of(deployment: Deployment, **overrides: Any) -> list[tuple[str, str]]:
    return list(deployment.exchange_form(**overrides).items())


def issued_row(deployment: Deployment, jti: str) -> dict[str, Any]:
    rows = deployment.rows("SELECT * FROM issued_tokens WHERE jti = ?", jti)
    assert rows, f"issued token {jti} was not recorded"
    return rows[0]


def carol(d: Deployment, **claims: Any) -> str:
    """A user with no delegation in the policy data."""
    return d.user_token("carol", **claims)


# --- Success (RFC 8693 §2.2.1, RFC 6749 §5.1) -----------------------------------------------------------


def test_rfc8693_2_2_1_exchange_returns_a_bearer_access_token(probe: Probe) -> None:
    response = probe.deployment.exchange()
    body = probe.granted(response)
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["scope"] == "mail.read"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert "refresh_token" not in body  # RFC 8693 §2.2.1: Deputy never issues one
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"  # RFC 6749 §5.1
    assert response.headers["pragma"] == "no-cache"


def test_rfc8693_2_2_1_every_issued_token_is_recorded(probe: Probe) -> None:
    body = probe.granted(probe.deployment.exchange(scope="mail.read mail.send"))
    claims = claims_of(body["access_token"])
    row = issued_row(probe.deployment, claims["jti"])
    assert (row["user_issuer"], row["user_subject"], row["agent"]) == (IDP, "alice", MAIL_AGENT)
    assert (row["audience"], row["scope"], row["expires_at"]) == (MAIL, "mail.read mail.send", claims["exp"])


@pytest.mark.parametrize("subject_token_type", [ACCESS_TOKEN, JWT, ID_TOKEN])
def test_rfc8693_2_1_each_subject_token_type_is_accepted(probe: Probe, subject_token_type: str) -> None:
    probe.granted(probe.deployment.exchange(subject_token_type=subject_token_type))


@pytest.mark.parametrize("target", ["resource", "audience"])
def test_rfc8693_2_1_target_by_resource_or_audience(probe: Probe, target: str) -> None:
    d = probe.deployment
    form = d.exchange_form(**{"resource": None, target: MAIL})
    body = probe.granted(d.client.post("/token", data=form))
    assert claims_of(body["access_token"])["aud"] == MAIL


def test_rfc8693_2_1_subject_from_remote_jwks_uri(probe: Probe) -> None:
    d = probe.deployment
    body = probe.granted(d.exchange(subject_token=d.remote_idp.token("bob", audience=d.issuer)))
    assert claims_of(body["access_token"])["sub"] == "bob"
    assert d.jwks_server.hits.get("/idp", 0) >= 1


def test_jwt_svid_6_actor_from_remote_bundle_uri(probe: Probe) -> None:
    d = probe.deployment
    body = probe.granted(d.exchange(actor_token=d.remote_domain.svid(audience=d.issuer)))
    assert claims_of(body["access_token"])["client_id"] == REMOTE_AGENT
    assert d.jwks_server.hits.get("/bundle", 0) >= 1


def test_rfc9068_2_1_rs256_user_token_verifies_with_its_rsa_key(probe: Probe) -> None:
    d = probe.deployment
    assert d.setup is not None
    key = d.setup.rsa_key
    token = jwt.encode(d.idp.claims(audience=d.issuer), key.private_key, algorithm="RS256",
                       headers={"kid": key.kid})
    probe.granted(d.exchange(subject_token=token))


PARTIAL_GRANTS: list[tuple[str, Overrides, str]] = [
    ("user_holds_less", lambda d: {"subject_token": d.user_token(scope="mail.read")}, "mail.read"),
    ("policy_grants_less", lambda d: {"actor_token": d.remote_domain.svid(audience=d.issuer)}, "mail.read"),
    ("resource_offers_less", lambda d: {"scope": "mail.read calendar.read",
                                        "subject_token": d.user_token(scope="mail.read calendar.read")},
     "mail.read"),
]


@pytest.mark.parametrize(("case", "overrides", "granted"), PARTIAL_GRANTS, ids=[c[0] for c in PARTIAL_GRANTS])
def test_rfc6749_3_3_partial_grant_returns_the_narrowed_scope(probe: Probe, case: str, overrides: Overrides,
                                                              granted: str) -> None:
    d = probe.deployment
    form = {"scope": "mail.read mail.send", **overrides(d)}
    body = probe.granted(d.exchange(**form))
    assert body["scope"] == granted  # RFC 8693 §2.2.1: REQUIRED when it differs from the request
    assert claims_of(body["access_token"])["scope"] == granted


def test_rfc8693_4_2_user_scope_from_scp_claim(probe: Probe) -> None:
    d = probe.deployment
    token = d.user_token(scope=None, scp=["mail.read"])
    body = probe.granted(d.exchange(subject_token=token, scope="mail.read mail.send"))
    assert body["scope"] == "mail.read"


def test_rfc8693_4_4_may_act_authorizes_an_agent_not_in_the_delegation_data(probe: Probe) -> None:
    d = probe.deployment
    token = carol(d, may_act={"sub": HELPER_AGENT})
    body = probe.granted(d.exchange(subject_token=token, actor_token=d.svid("/agents/helper")))
    claims = claims_of(body["access_token"])
    assert (claims["sub"], claims["act"]["sub"]) == ("carol", HELPER_AGENT)


def test_issue2_subject_issuer_audience_setting_is_the_expected_aud(probe: Probe) -> None:
    d = probe.deployment
    idp = UserIdp(AUDIENCE_IDP, key=d.idp.key)
    probe.granted(d.exchange(subject_token=idp.token(audience=AUDIENCE, may_act={"sub": MAIL_AGENT})))
    token = idp.token(audience=d.issuer, may_act={"sub": MAIL_AGENT})  # the default, replaced by the setting
    probe.issued_before = d.issued_count()
    probe.refused(d.exchange(subject_token=token), 400, "invalid_request", names="subject_token")


def test_rfc6749_3_2_empty_and_unknown_parameters_are_ignored(probe: Probe) -> None:
    d = probe.deployment
    form = d.exchange_form(resource="", audience=MAIL, foo="bar", requested_token_type=ACCESS_TOKEN)
    probe.granted(d.client.post("/token", data=form))


def test_rfc8693_4_3_client_id_equal_to_the_agent_is_accepted(probe: Probe) -> None:
    probe.granted(probe.deployment.exchange(client_id=MAIL_AGENT))


# --- Lifetime: expires_in <= min(policy ttl, resource max_ttl, tokens.max_ttl, subject remaining life) ---


def lifetime_of(probe: Probe, **overrides: Any) -> int:
    body = probe.granted(probe.deployment.exchange(**overrides))
    claims = claims_of(body["access_token"])
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert abs(claims["iat"] - time.time()) < 5
    return int(body["expires_in"])


def test_issue2_lifetime_bounded_by_resource_max_ttl(probe: Probe) -> None:
    assert lifetime_of(probe) == 300  # mail max_ttl 300 < policy 600 < tokens.max_ttl 900


def test_issue2_lifetime_bounded_by_policy_ttl(probe: Probe) -> None:
    d = probe.deployment
    token = d.user_token(scope="files.read", ttl=3600)
    assert lifetime_of(probe, resource=FILES, scope="files.read", subject_token=token) == POLICY_TTL


def test_issue2_lifetime_bounded_by_subject_token_remaining_life(probe: Probe) -> None:
    expires_in = lifetime_of(probe, subject_token=probe.deployment.user_token(ttl=45))
    assert 40 <= expires_in <= 45


def test_rfc8693_2_2_2_subject_token_expired_within_clock_leeway_is_refused(probe: Probe) -> None:
    d = probe.deployment
    token = d.idp.sign(d.idp.claims(audience=d.issuer, exp=int(time.time()) - 5))
    probe.refused(d.exchange(subject_token=token), 400, "invalid_request", names="subject_token")


@pytest.fixture(scope="module")
def short_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A second gateway whose tokens.max_ttl (450) is below the policy's ttl (600)."""
    with deployed(tmp_path_factory.mktemp("short"), extra="\n[tokens]\ndefault_ttl = 300\nmax_ttl = 450\n") as d:
        yield d


def test_issue2_lifetime_bounded_by_tokens_max_ttl(short_tokens: Deployment) -> None:
    probe = Probe(short_tokens, short_tokens.issued_count(), 0)
    token = short_tokens.user_token(scope="files.read", ttl=3600)
    assert lifetime_of(probe, resource=FILES, scope="files.read", subject_token=token) == 450


# --- unsupported_grant_type, invalid_request (RFC 6749 §5.2, RFC 8693 §2.2.2) ----------------------------


@pytest.mark.parametrize("grant_type", [
    "password", "client_credentials", "authorization_code", "refresh_token",
    "urn:ietf:params:oauth:grant-type:jwt-bearer", "urn:ietf:params:oauth:grant-type:device_code",
    GRANT.upper(), GRANT + " ", GRANT + "x",
])
def test_rfc6749_5_2_unsupported_grant_type(probe: Probe, grant_type: str) -> None:
    probe.refused(probe.deployment.exchange(grant_type=grant_type), 400, "unsupported_grant_type")


@pytest.mark.parametrize("missing", ["grant_type", "subject_token", "subject_token_type", "actor_token",
                                     "actor_token_type"])
def test_rfc8693_2_1_missing_required_parameter_is_invalid_request(probe: Probe, missing: str) -> None:
    response = probe.deployment.exchange(**{missing: None})
    probe.refused(response, 400, "invalid_request", names=missing)


def test_rfc8693_2_1_actor_token_type_without_actor_token(probe: Probe) -> None:
    probe.refused(probe.deployment.exchange(actor_token=None), 400, "invalid_request", names="actor_token")


def test_rfc8693_2_1_actor_token_without_actor_token_type(probe: Probe) -> None:
    response = probe.deployment.exchange(actor_token_type=None)
    probe.refused(response, 400, "invalid_request", names="actor_token_type")


@pytest.mark.parametrize("name", ["grant_type", "subject_token", "subject_token_type", "actor_token",
                                  "actor_token_type", "scope", "requested_token_type"])
@pytest.mark.parametrize("same_value", [True, False], ids=["same", "different"])
def test_rfc6749_3_2_repeated_parameter_is_invalid_request(probe: Probe, name: str, same_value: bool) -> None:
    d = probe.deployment
    pairs = pairs_of(d, requested_token_type=ACCESS_TOKEN)
    value = dict(pairs)[name]
    pairs.append((name, value if same_value else value + "x"))
    probe.refused(post_raw(d, urlencode(pairs)), 400, "invalid_request", names="repeated")


@pytest.mark.parametrize(("name", "token_type"), [
    ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"),
    ("subject_token_type", REFRESH_TOKEN),
    ("subject_token_type", ACCESS_TOKEN.upper()),
    ("subject_token_type", ACCESS_TOKEN + " "),
    ("subject_token_type", "access_token"),
    ("actor_token_type", ACCESS_TOKEN),
    ("actor_token_type", ID_TOKEN),
    ("actor_token_type", JWT.upper()),
    ("actor_token_type", " " + JWT),
    ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt-svid"),
])
def test_rfc8693_3_wrong_token_type_is_invalid_request(probe: Probe, name: str, token_type: str) -> None:
    probe.refused(probe.deployment.exchange(**{name: token_type}), 400, "invalid_request", names=name)


@pytest.mark.parametrize("requested", [REFRESH_TOKEN, ID_TOKEN, "urn:example:unknown"])
def test_rfc8693_2_1_unsupported_requested_token_type(probe: Probe, requested: str) -> None:
    response = probe.deployment.exchange(requested_token_type=requested)
    probe.refused(response, 400, "invalid_request", names="requested_token_type")


BAD_TOKENS: list[tuple[str, str, Callable[[Deployment], str]]] = [
    ("subject_token", "garbage", lambda d: "not-a-token"),
    ("subject_token", "expired", lambda d: d.user_token(ttl=-3600)),
    ("subject_token", "untrusted_issuer", lambda d: UserIdp("https://evil.example.com").token(audience=d.issuer)),
    ("subject_token", "wrong_audience", lambda d: d.user_token(audience="https://elsewhere.example.com")),
    ("subject_token", "is_an_svid", lambda d: d.svid()),
    ("actor_token", "garbage", lambda d: "a.b.c"),
    ("actor_token", "expired", lambda d: d.svid(ttl=-3600)),
    ("actor_token", "wrong_audience", lambda d: d.svid(audience="https://elsewhere.example.com")),
    ("actor_token", "is_a_user_token", lambda d: d.user_token()),
]


@pytest.mark.parametrize(("which", "case", "make"), BAD_TOKENS, ids=[f"{w}-{c}" for w, c, _ in BAD_TOKENS])
def test_rfc8693_2_2_2_bad_token_is_invalid_request_naming_the_token(probe: Probe, which: str, case: str,
                                                                     make: Callable[[Deployment], str]) -> None:
    d = probe.deployment
    probe.refused(d.exchange(**{which: make(d)}), 400, "invalid_request", names=f"{which} ")


# --- invalid_target (RFC 8707 §2, RFC 8693 §2.2.2) -------------------------------------------------------


TARGETS: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("two_resources", {"resource": [MAIL, CALENDAR]}),
    ("same_resource_twice", {"resource": [MAIL, MAIL]}),
    ("resource_and_audience", {"resource": MAIL, "audience": MAIL}),
    ("two_audiences", {"audience": [MAIL, CALENDAR]}),
    ("fragment", {"resource": MAIL + "/#x"}),
    ("empty_fragment", {"resource": MAIL + "#"}),
    ("relative_path", {"resource": "/api"}),
    ("no_scheme", {"resource": "mail.example.com"}),
    ("network_path", {"resource": "//mail.example.com"}),
    ("unknown", {"resource": "https://evil.example.com"}),
    ("unknown_audience", {"audience": "mail"}),
    ("trailing_slash", {"resource": MAIL + "/"}),
    ("uppercase_host", {"resource": "https://MAIL.example.com"}),
    ("explicit_port", {"resource": "https://mail.example.com:443"}),
    ("http_scheme", {"resource": "http://mail.example.com"}),
    ("percent_encoded", {"resource": "https://mail%2Eexample.com"}),
    ("query", {"resource": MAIL + "?tenant=a"}),
    ("leading_space", {"resource": " " + MAIL}),
    ("inner_whitespace", {"resource": "https://mail.example.com/a b"}),
    ("iri", {"resource": "https://mail.exämple.com"}),
    ("very_long", {"resource": MAIL + "/" + "a" * 5000}),
    ("audience_near_miss", {"audience": MAIL + "/"}),
    ("audience_control_character", {"audience": MAIL + "\x01"}),
]


@pytest.mark.parametrize(("case", "targets"), TARGETS, ids=[t[0] for t in TARGETS])
def test_rfc8707_2_invalid_target(probe: Probe, case: str, targets: dict[str, Any]) -> None:
    d = probe.deployment
    form = {**d.exchange_form(resource=None), **targets}
    probe.refused(d.client.post("/token", data=form), 400, "invalid_target")


# --- invalid_scope (RFC 6749 §3.3, RFC 8693 §2.2.2) ------------------------------------------------------


MALFORMED_SCOPES = ["mail.read  mail.send", " mail.read", "mail.read ", 'mail"read', "mail\\read", "mail\tread",
                    "mail.read\x00", "mail.réad", "mail.read\nmail.send", " ".join(f"s{i}" for i in range(65))]


@pytest.mark.parametrize("scope", [None, "", *MALFORMED_SCOPES])
def test_rfc6749_3_3_missing_or_malformed_scope_is_invalid_scope(probe: Probe, scope: str | None) -> None:
    probe.refused(probe.deployment.exchange(scope=scope), 400, "invalid_scope")


OUT_OF_SCOPE: list[tuple[str, Overrides]] = [
    ("beyond_the_user", lambda d: {"scope": "mail.send", "subject_token": d.user_token(scope="mail.read")}),
    ("user_holds_no_scope", lambda d: {"subject_token": d.user_token(scope=None)}),
    ("beyond_the_resource", lambda d: {"scope": "calendar.read",
                                       "subject_token": d.user_token(scope="mail.read calendar.read")}),
    ("scope_of_another_resource", lambda d: {"scope": "mail.read", "resource": FILES}),
    ("beyond_the_policy", lambda d: {"scope": "mail.send", "actor_token": d.remote_domain.svid(audience=d.issuer)}),
    ("case_differs", lambda d: {"scope": "Mail.Read"}),
]


@pytest.mark.parametrize(("case", "overrides"), OUT_OF_SCOPE, ids=[c[0] for c in OUT_OF_SCOPE])
def test_rfc8693_2_2_2_scope_outside_what_may_be_granted_is_invalid_scope(probe: Probe, case: str,
                                                                          overrides: Overrides) -> None:
    d = probe.deployment
    probe.refused(d.exchange(**overrides(d)), 400, "invalid_scope")


# --- unauthorized_client (the policy refuses this agent) -------------------------------------------------


REFUSED_AGENTS: list[tuple[str, Overrides]] = [
    ("user_did_not_delegate", lambda d: {"actor_token": d.svid("/agents/helper")}),
    ("may_act_names_another_agent", lambda d: {"subject_token": carol(d, may_act={"sub": HELPER_AGENT})}),
    ("may_act_same_sub_other_iss", lambda d: {"subject_token": carol(d, may_act={"sub": MAIL_AGENT, "iss": IDP})}),
    ("may_act_not_an_object", lambda d: {"subject_token": carol(d, may_act=MAIL_AGENT)}),
    ("planted_act_claim_grants_nothing", lambda d: {"subject_token": carol(d, act={"sub": MAIL_AGENT})}),
    ("delegation_of_another_issuer", lambda d: {"subject_token": d.user_token("bob")}),
    ("agent_has_no_grant_for_the_resource", lambda d: {
        "resource": CALENDAR, "scope": "calendar.read", "subject_token": d.user_token(scope="calendar.read")}),
    ("unknown_agent_of_a_trusted_domain", lambda d: {"actor_token": d.svid("/agents/stranger")}),
    ("client_id_is_not_the_agent", lambda d: {"client_id": HELPER_AGENT}),
]


@pytest.mark.parametrize(("case", "overrides"), REFUSED_AGENTS, ids=[c[0] for c in REFUSED_AGENTS])
def test_rfc6749_5_2_unauthorized_client_when_the_policy_refuses(probe: Probe, case: str,
                                                                 overrides: Overrides) -> None:
    d = probe.deployment
    probe.refused(d.exchange(**overrides(d)), 400, "unauthorized_client")


# --- invalid_client (RFC 6749 §5.2: 401 + WWW-Authenticate) ---------------------------------------------


@pytest.mark.parametrize(("authorization", "scheme"), [
    ("Basic ZGVwdXR5OnNlY3JldA==", "Basic"),
    ("Basic !!!not-base64", "Basic"),
    ("Bearer abc", "Bearer"),
])
def test_rfc6749_5_2_authorization_header_gets_401_with_challenge(probe: Probe, authorization: str,
                                                                  scheme: str) -> None:
    d = probe.deployment
    response = d.client.post("/token", data=d.exchange_form(), headers={"Authorization": authorization})
    probe.refused(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith(scheme)


@pytest.mark.parametrize("credential", [{"client_secret": "s3cret"},
                                        {"client_assertion": "a.b.c", "client_assertion_type": "urn:x"}])
def test_rfc6749_2_3_client_credentials_in_body_are_invalid_client(probe: Probe, credential: dict[str, str]) -> None:
    response = probe.deployment.exchange(**credential)
    probe.refused(response, 401, "invalid_client")
    assert response.headers["www-authenticate"]  # RFC 9110 §15.5.2: every 401 carries a challenge
    assert "s3cret" not in response.text


# --- Transport: size, media type, encoding, method (RFC 6749 §3.2, Appendix B) -------------------------


def test_issue2_body_over_64_kib_is_413(probe: Probe) -> None:
    d = probe.deployment
    body = urlencode([*pairs_of(d), ("padding", "x" * (64 * 1024))])
    probe.refused(post_raw(d, body), 413, "invalid_request")


def test_issue2_chunked_body_over_64_kib_is_413(probe: Probe) -> None:
    d = probe.deployment
    chunks = [urlencode(pairs_of(d)).encode(), b"&padding=", *[b"x" * 4096] * 20]
    probe.refused(post_raw(d, iter(chunks)), 413, "invalid_request")


def test_issue2_body_just_under_64_kib_is_read(probe: Probe) -> None:
    d = probe.deployment
    body = urlencode(pairs_of(d))
    body += "&padding=" + "x" * (64 * 1024 - len(body) - len("&padding="))
    assert len(body) == 64 * 1024
    probe.granted(post_raw(d, body))


@pytest.mark.parametrize("which", ["subject_token", "actor_token"])
def test_issue2_token_over_16_kib_is_invalid_request(probe: Probe, which: str) -> None:
    d = probe.deployment
    padded = d.user_token(padding="x" * 17000) if which == "subject_token" else d.svid(padding="x" * 17000)
    probe.refused(d.exchange(**{which: padded}), 400, "invalid_request", names=which)


@pytest.mark.parametrize("content_type", [
    "application/json", "multipart/form-data; boundary=x", "text/plain", None,
    "application/x-www-form-urlencoded; charset=iso-8859-1", "application/x-www-form-urlencoded-evil",
])
def test_rfc6749_appendix_b_non_form_content_type_is_invalid_request(probe: Probe, content_type: str | None) -> None:
    d = probe.deployment
    body = json.dumps(d.exchange_form()) if content_type == "application/json" else urlencode(pairs_of(d))
    probe.refused(post_raw(d, body, content_type), 400, "invalid_request")


def test_rfc6749_appendix_b_form_with_utf8_charset_is_accepted(probe: Probe) -> None:
    d = probe.deployment
    probe.granted(post_raw(d, urlencode(pairs_of(d)), FORM + "; charset=UTF-8"))


@pytest.mark.parametrize("tail", [b"&scope=%FF", b"&scope=\xff", b"&x\xff=1", b"&scope=%C0%AF",
                                  b"&scope=%ED%A0%80", b"&%FF=1", b"&scope=mail.read\xc3"])
def test_rfc6749_appendix_b_non_utf8_body_is_invalid_request(probe: Probe, tail: bytes) -> None:
    d = probe.deployment
    body = urlencode(pairs_of(d, scope=None)).encode() + tail
    probe.refused(post_raw(d, body), 400, "invalid_request")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_rfc6749_3_2_token_endpoint_only_answers_post(probe: Probe, method: str) -> None:
    response = probe.deployment.client.request(method, "/token", params={"grant_type": GRANT})
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]
    assert probe.deployment.issued_count() == probe.issued_before


def test_rfc6749_2_3_1_parameters_in_the_query_are_not_read(probe: Probe) -> None:
    d = probe.deployment
    response = d.client.post("/token", params=d.exchange_form(), content=b"", headers={"content-type": FORM})
    probe.refused(response, 400, "invalid_request", names="grant_type")


@pytest.mark.parametrize("body", [b"", b"=", b"&", b"&&", b"grant_type", b"%", b"a=%zz", b"a=b&&c=d",
                                  "&".join(f"f{i}=1" for i in range(40)).encode()])
def test_rfc6749_5_2_malformed_forms_are_invalid_request(probe: Probe, body: bytes) -> None:
    probe.refused(post_raw(probe.deployment, body), 400, "invalid_request")


def test_issue2_no_input_yields_a_server_error(probe: Probe) -> None:
    """Seeded random bodies and byte-flipped valid forms: a JSON 4xx (or a harmless 200), never a 5xx."""
    d = probe.deployment
    rng = random.Random(2)
    valid = urlencode(pairs_of(d)).encode()
    bodies = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(30)]
    for _ in range(30):
        mutated = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
        bodies.append(bytes(mutated))
    for body in bodies:
        response = post_raw(d, body)
        assert response.status_code < 500, (body, response.text)
        if response.status_code != 200:  # a flip can be harmless (same byte, unused base64 bits)
            assert response.status_code >= 400, response.text
            assert RFC6749_CHARSET.fullmatch(response.json()["error_description"])


HOSTILE_TEXT = 'quote" backslash\\ newline\n tab\t emoji😀 nul\x00 del\x7f'


@pytest.mark.parametrize("overrides", [
    {"grant_type": HOSTILE_TEXT},
    {"scope": HOSTILE_TEXT},
    {"resource": "https://" + HOSTILE_TEXT},
    {"audience": HOSTILE_TEXT, "resource": None},
    {"subject_token_type": HOSTILE_TEXT},
    {"subject_token": HOSTILE_TEXT},
    {"actor_token": HOSTILE_TEXT},
    {"requested_token_type": HOSTILE_TEXT},
], ids=lambda o: next(iter(o)))
def test_rfc6749_5_2_error_description_stays_in_the_allowed_charset(probe: Probe, overrides: dict[str, Any]) -> None:
    response = probe.deployment.exchange(**overrides)
    assert response.status_code == 400, response.text
    body = response.json()
    assert RFC6749_CHARSET.fullmatch(body["error"]) and RFC6749_CHARSET.fullmatch(body["error_description"])
    assert probe.deployment.issued_count() == probe.issued_before


def test_rfc6749_5_2_repeated_hostile_parameter_name_is_not_echoed(probe: Probe) -> None:
    d = probe.deployment
    body = urlencode([*pairs_of(d), (HOSTILE_TEXT, "1"), (HOSTILE_TEXT, "2")])
    probe.refused(post_raw(d, body), 400, "invalid_request")


# --- Audit trail: every decision, granted or refused, with reasons, agent and user ----------------------


def only_event(probe: Probe) -> dict[str, Any]:
    events = probe.new_audit()
    assert len(events) == 1, events
    event = events[0]
    event["reasons"] = json.loads(event["reasons"])
    return event


def test_issue2_audit_records_a_granted_exchange(probe: Probe) -> None:
    d = probe.deployment
    body = probe.granted(d.exchange(scope="mail.read mail.send"))
    event = only_event(probe)
    assert event["outcome"] == "granted" and event["error"] is None
    assert (event["agent"], event["user_issuer"], event["user_subject"]) == (MAIL_AGENT, IDP, "alice")
    assert (event["audience"], event["granted_scope"]) == (MAIL, "mail.read mail.send")
    assert event["jti"] == claims_of(body["access_token"])["jti"]
    assert event["reasons"] and event["policy_revision"]


def test_issue2_audit_records_a_policy_refusal_with_its_reasons(probe: Probe) -> None:
    d = probe.deployment
    probe.refused(d.exchange(actor_token=d.svid("/agents/helper")), 400, "unauthorized_client")
    event = only_event(probe)
    assert (event["outcome"], event["error"]) == ("refused", "unauthorized_client")
    assert (event["agent"], event["user_subject"], event["audience"]) == (HELPER_AGENT, "alice", MAIL)
    assert event["requested_scope"] == "mail.read" and event["jti"] is None
    assert any("delegated" in reason for reason in event["reasons"]), event["reasons"]


def test_issue2_audit_records_a_refused_actor_token(probe: Probe) -> None:
    d = probe.deployment
    probe.refused(d.exchange(actor_token=d.svid(ttl=-3600)), 400, "invalid_request", names="actor_token")
    event = only_event(probe)
    assert (event["outcome"], event["error"], event["agent"]) == ("refused", "invalid_request", None)
    assert any("actor_token" in reason for reason in event["reasons"]), event["reasons"]


def test_issue2_audit_records_an_invalid_scope_with_agent_and_user(probe: Probe) -> None:
    d = probe.deployment
    probe.refused(d.exchange(scope="mail.send", subject_token=d.user_token("bob", scope="mail.read")),
                  400, "invalid_scope")
    event = only_event(probe)
    assert (event["outcome"], event["error"]) == ("refused", "invalid_scope")
    assert (event["agent"], event["user_subject"], event["audience"]) == (MAIL_AGENT, "bob", MAIL)
    assert event["reasons"]


def test_issue2_audit_records_an_invalid_target(probe: Probe) -> None:
    d = probe.deployment
    probe.refused(d.exchange(resource="https://evil.example.com"), 400, "invalid_target")
    event = only_event(probe)
    assert (event["outcome"], event["error"], event["agent"]) == ("refused", "invalid_target", MAIL_AGENT)
    assert event["user_subject"] == "alice" and event["reasons"]


def test_issue2_audit_never_holds_a_token(probe: Probe) -> None:
    d = probe.deployment
    subject, actor = d.user_token(), d.svid("/agents/helper")
    probe.refused(d.exchange(subject_token=subject, actor_token=actor), 400, "unauthorized_client")
    text = json.dumps(probe.new_audit())
    assert subject.split(".")[2] not in text and actor.split(".")[2] not in text


@pytest.mark.parametrize("typ", ["txntoken+jwt", "dpop+jwt", "oauth-client-attestation+jwt",
                                 "oauth-client-attestation-pop+jwt", "application/oauth-client-attestation+jwt"])
def test_rfc8725_3_11_a_token_typed_for_another_use_is_never_a_user_token(probe: Probe, typ: str) -> None:
    """Explicit typing (RFC 8725 §3.11): a JWT the IdP's keys signed, typed as a task token, a DPoP proof
    or a client attestation (or its PoP), is refused as subject_token."""
    d = probe.deployment
    token = d.idp.sign(d.idp.claims(audience=d.issuer), headers={"typ": typ})
    probe.refused(d.exchange(subject_token=token), 400, "invalid_request", names="is not a user token")
