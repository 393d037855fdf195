"""Issue 6 item 7: the config reports an unknown key before a missing one, so a misspelt required key is
named as what it is (the one-line `key: reason` form of every config error)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import ConfigError, parse_settings

ISSUER = {"issuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/jwks"}


@pytest.mark.parametrize(("document", "message"), [
    ({"resources": [{"audiance": "https://mail.example.com", "scopes": ["mail.read"]}]},
     "resources[0].audiance: unknown key"),
    ({"subject_issuers": [{"isuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/j"}]},
     "subject_issuers[0].isuer: unknown key"),
    ({"trust_domains": [{"nmae": "example.org", "bundle_uri": "https://example.org/b"}]},
     "trust_domains[0].nmae: unknown key"),
    ({"subject_issuers": [ISSUER, {"jwks_uri": "https://x.example/j"}]}, "subject_issuers[1].issuer: required"),
])
def test_issue6_an_unknown_key_is_reported_before_a_missing_one(document: dict[str, Any], message: str,
                                                               tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, base=tmp_path)
    assert str(caught.value) == message


WORKLOAD = {"issuer": "https://k8s.example.com", "jwks_uri": "https://k8s.example.com/jwks", "kind": "kubernetes"}


@pytest.mark.parametrize(("document", "message"), [
    ({"policy": {"engine": "rego"}}, "policy.engine: must be 'embedded' or 'opa'"),
    ({"policy": {"engine": "opa", "opa_url": "http://opa.example.com:8181"}},
     "policy.opa_url: must use https (plain http is allowed on loopback only)"),
    ({"policy": {"engine": "opa", "opa_url": "http://127.0.0.1:8181/v1/data"}},
     "policy.opa_url: must be the OPA server's address, without a path (e.g. http://127.0.0.1:8181)"),
    ({"policy": {"engine": "opa", "opa_url": "https://user:secret@opa.example.com"}},
     "policy.opa_url: must not hold a user name or password (it would be logged and sent as a static secret)"),
    ({"policy": {"engine": "opa", "timeout_ms": 0}}, "policy.timeout_ms: must be between 1 and 60000 milliseconds"),
    ({"policy": {"timeout_ms": "250"}}, "policy.timeout_ms: must be an integer"),
    ({"attesters": [{"name": "a", "jwks_uri": "https://a.example/j"}, {"name": "a", "jwks_uri": "https://b.example/j"}]},
     "attesters[1].name: 'a' is configured twice"),
    ({"attesters": [{"name": "a"}]}, "attesters[0].jwks_file: exactly one of jwks_file or jwks_uri is required"),
    ({"attesters": [{"name": "a", "jwks_uri": "https://a.example/j", "max_age": 0}]},
     "attesters[0].max_age: must be a positive number of seconds"),
    ({"workload_issuers": [{**WORKLOAD, "kind": "spire"}]}, "workload_issuers[0].kind: must be 'kubernetes' or 'oidc'"),
    ({"workload_issuers": [{**WORKLOAD, "discovery": True}]},
     "workload_issuers[0].discovery: give discovery = true or a jwks_file or jwks_uri, not both"),
    ({"workload_issuers": [WORKLOAD, WORKLOAD]},
     "workload_issuers[1].issuer: 'https://k8s.example.com' is configured twice"),
    ({"workload_issuers": [{**WORKLOAD, "issuer": ISSUER["issuer"]}], "subject_issuers": [ISSUER]},
     "workload_issuers[0].issuer: 'https://idp.example.com' is also a subject issuer; a token must not serve "
     "both as a user's and as an agent's"),
    ({"metrics": {"listen": "127.0.0.1:8600"}},
     "metrics.listen: must differ from listen (metrics are never served on the public port)"),
    ({"metrics": {"listen": "nowhere"}}, "metrics.listen: must be host:port, e.g. 127.0.0.1:8600"),
])
def test_issue8_policy_attester_workload_and_metrics_settings_are_checked(document: dict[str, Any], message: str,
                                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, base=tmp_path)
    assert str(caught.value) == message


def test_issue8_settings_defaults_and_a_full_opa_configuration(tmp_path: Path) -> None:
    defaults = parse_settings({}, base=tmp_path)
    assert (defaults.policy.engine, defaults.policy.timeout_ms, defaults.metrics.listen) == ("embedded", 250, None)
    assert defaults.audit.decision_log is None and defaults.attesters == () and defaults.workload_issuers == ()
    settings = parse_settings({"policy": {"engine": "opa", "opa_url": "http://127.0.0.1:8181/", "timeout_ms": 100},
                               "audit": {"decision_log": "decisions.jsonl"}, "metrics": {"listen": "127.0.0.1:9600"},
                               "workload_issuers": [{**WORKLOAD, "discovery": False}]}, base=tmp_path)
    assert (settings.policy.engine, settings.policy.opa_url, settings.policy.timeout_ms) == (
        "opa", "http://127.0.0.1:8181", 100)
    assert settings.audit.decision_log == tmp_path / "decisions.jsonl"
    assert settings.metrics.listen == ("127.0.0.1", 9600)
    workload = settings.workload_issuers[0]
    assert (workload.kind, workload.audience, workload.id_claim, workload.discovery) == (
        "kubernetes", settings.issuer, "sub", False)


@pytest.mark.parametrize(("document", "message"), [
    ({"ssf": {"poll_timout": 15}}, "ssf.poll_timout: unknown key"),
    ({"ssf": {"poll_timeout": 0}}, "ssf.poll_timeout: must be a positive number of seconds"),
    ({"ssf": {"poll_timeout": 301}}, "ssf.poll_timeout: must be at most 300 seconds (a long poll holds a connection)"),
    ({"ssf": {"poll_timeout": 1.5}}, "ssf.poll_timeout: must be an integer"),
    ({"ssf": {"min_verification_interval": -1}},
     "ssf.min_verification_interval: must be a number of seconds (0: no limit)"),
    ({"ssf": {"inactivity_timeout": 90000}},
     "ssf.inactivity_timeout: must not exceed tasks.retention (a stream left alone longer could miss events purged "
     "from the feed)"),
    ({"ssf": {"push_timeout": 0}}, "ssf.push_timeout: must be a positive number of seconds"),
])
def test_issue9_ssf_settings_are_checked(document: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, base=tmp_path)
    assert str(caught.value) == message


def test_issue9_ssf_defaults_and_an_inactivity_timeout_that_follows_a_shorter_retention(tmp_path: Path) -> None:
    ssf = parse_settings({}, base=tmp_path).ssf
    assert (ssf.poll_timeout, ssf.min_verification_interval, ssf.inactivity_timeout, ssf.push_timeout) == (
        15, 1, 86400, 5)
    assert parse_settings({"tasks": {"retention": 7200}}, base=tmp_path).ssf.inactivity_timeout == 7200
    assert parse_settings({"ssf": {"min_verification_interval": 0, "poll_timeout": 30}}, base=tmp_path).ssf == (
        replace(ssf, min_verification_interval=0, poll_timeout=30))


RESOURCE = {"audience": "https://mail.example.com", "scopes": ["mail.read"]}


@pytest.mark.parametrize(("document", "message"), [
    ({"resources": [{**RESOURCE, "require_dpop": "yes"}]}, "resources[0].require_dpop: must be a boolean"),
    ({"dpop": {"nonces": 1}}, "dpop.nonces: must be a boolean"),
    ({"dpop": {"nonce": True}}, "dpop.nonce: unknown key"),
])
def test_issue10_dpop_settings_are_checked(document: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_settings(document, base=tmp_path)


def test_issue10_dpop_is_off_by_default_and_switched_on_per_key(tmp_path: Path) -> None:
    defaults = parse_settings({"resources": [RESOURCE]}, base=tmp_path)
    assert (defaults.dpop.nonces, defaults.resources[0].require_dpop) == (False, False)
    settings = parse_settings({"resources": [{**RESOURCE, "require_dpop": True}], "dpop": {"nonces": True}},
                              base=tmp_path)
    assert (settings.dpop.nonces, settings.resources[0].require_dpop) == (True, True)


def test_console_demo_idp_a_passwordless_admin_login_is_refused_outside_a_loopback_issuer(tmp_path: Path) -> None:
    console = {"issuer": ISSUER["issuer"], "demo_idp": "."}
    with pytest.raises(ConfigError) as caught:
        parse_settings({"issuer": "https://deputy.example.com", "subject_issuers": [ISSUER], "console": console},
                       base=tmp_path)
    assert str(caught.value).startswith("console.demo_idp: DEMO ONLY"), caught.value
    loopback = parse_settings({"issuer": "http://127.0.0.1:8600", "subject_issuers": [ISSUER], "console": console},
                              base=tmp_path)
    assert loopback.console is not None and loopback.console.demo_idp == tmp_path


@pytest.mark.parametrize("audience", ["https://deputy.example.com", "https://deputy.example.com/users"])
def test_rfc8725_3_9_an_admin_audience_that_subject_tokens_have_is_refused(audience: str, tmp_path: Path) -> None:
    issuers = [ISSUER, {**ISSUER, "issuer": "https://idp2.example.com", "audience": "https://deputy.example.com/users"}]
    with pytest.raises(ConfigError) as caught:
        parse_settings({"issuer": "https://deputy.example.com", "subject_issuers": issuers,
                        "admin": {"audience": audience}}, base=tmp_path)
    assert str(caught.value).startswith(f"admin.audience: {audience!r} is the gateway issuer or a subject_issuers "
                                        "audience"), caught.value


def test_rfc8707_the_admin_audience_defaults_to_the_issuer_admin(tmp_path: Path) -> None:
    settings = parse_settings({"issuer": "https://deputy.example.com", "subject_issuers": [ISSUER]}, base=tmp_path)
    assert settings.admin.audience == "https://deputy.example.com/admin"
    chosen = parse_settings({"issuer": "https://deputy.example.com", "admin": {"audience": "urn:deputy:admin"}},
                            base=tmp_path)
    assert chosen.admin.audience == "urn:deputy:admin"
