"""The embedded Rego engine with the packaged policy: decisions, strict reading of results, fail closed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from delegation.policy import Decision, PolicyError, PolicyInput, PolicySource
from delegation.rego import EmbeddedRego
from policies import PACKAGED_POLICIES

AGENT, HELPER = "spiffe://example.org/agents/mail", "spiffe://example.org/agents/summarizer"
MAIL = "https://mail.example.com"


@pytest.fixture(scope="module")
def engine() -> EmbeddedRego:
    return EmbeddedRego(PolicySource.read(PACKAGED_POLICIES))


def query(action: str = "exchange", *, agent: str = AGENT, user: str = "alice", scope: tuple[str, ...] = ("mail.read",),
          claims: dict[str, Any] | None = None, **extra: Any) -> PolicyInput:
    return PolicyInput({
        "action": action,
        "subject": {"iss": "https://idp.example.com", "sub": user, "scope": ["mail.read", "mail.send"],
                    "claims": claims or {}},
        "actor": {"sub": agent, "trust_domain": "example.org", "claims": {}},
        "request": {"scope": list(scope), "audience": MAIL, "audiences": [MAIL],
                    "requested_token_type": "urn:ietf:params:oauth:token-type:access_token"},
        "now": 1_800_000_000,
        **extra,
    })


async def test_grants_only_listed_scopes_to_a_delegated_agent(engine: EmbeddedRego) -> None:
    decision = await engine.decide(query(scope=("mail.read", "mail.delete")))
    assert (decision.allow, decision.scope, decision.ttl) == (True, ("mail.read",), 300)


async def test_rfc8693_4_4_may_act_names_the_agent(engine: EmbeddedRego) -> None:
    assert (await engine.decide(query(user="bob"))).error == "unauthorized_client"
    assert (await engine.decide(query(user="bob", claims={"may_act": {"sub": AGENT}}))).allow
    with_iss = {"may_act": {"sub": AGENT, "iss": "https://idp.example.com"}}
    assert not (await engine.decide(query(user="bob", claims=with_iss))).allow
    other = {"may_act": {"sub": HELPER}}
    assert not (await engine.decide(query(user="bob", claims=other))).allow


async def test_open_task_and_delegation_follow_data(engine: EmbeddedRego) -> None:
    opened = await engine.decide(query("open_task", scope=("mail.read", "mail.send")))
    assert opened.allow and set(opened.scope) == {"mail.read", "mail.send"} and opened.ttl == 3600
    delegated = await engine.decide(query("delegate", agent=HELPER, chain=[AGENT], task={"agent": AGENT}))
    assert delegated.allow and delegated.scope == ("mail.read",)
    refused = await engine.decide(query("delegate", agent=AGENT, chain=[HELPER], task={"agent": HELPER}))
    assert refused.error == "unauthorized_client"
    too_deep = await engine.decide(query("delegate", agent=HELPER, chain=["spiffe://x/a", "spiffe://x/b", AGENT]))
    assert too_deep.error == "invalid_request" and "depth" in too_deep.reasons[0]


@pytest.mark.parametrize("document", [
    {"allow": "yes"}, {"scope": ["a"]}, {"allow": True, "scope": "mail.read"}, {"allow": True, "ttl": -1},
    {"allow": True, "ttl": 1.5}, {"allow": True, "reasons": "because"}, {"allow": False, "error": 7}, [], None,
])
def test_malformed_policy_results_deny(document: Any) -> None:
    assert Decision.from_document(document).allow is False


@pytest.mark.parametrize("claims", [
    {"deep": json.loads("[" * 100 + "]" * 100)},  # deeper than the input walk accepts
    {"big": 2**70},  # not a 64-bit integer
])
async def test_inputs_rego_cannot_take_deny_instead_of_failing(engine: EmbeddedRego, claims: dict[str, Any]) -> None:
    decision = await engine.decide(query(claims=claims))
    assert decision == Decision.deny("policy evaluation failed")


async def test_undefined_decision_and_runtime_errors_deny(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package deputy\nimport rego.v1\ndecision := x if { x := input.missing.value }\n")
    engine = EmbeddedRego(PolicySource.read(tmp_path))
    assert (await engine.decide(query())) == Decision.deny("policy decision is undefined")
    (tmp_path / "p.rego").write_text("package deputy\nimport rego.v1\ndecision := {\"allow\": 1 / 0 > 0}\n")
    engine = EmbeddedRego(PolicySource.read(tmp_path))
    assert not (await engine.decide(query())).allow


def test_a_policy_that_does_not_compile_is_refused_with_its_location(tmp_path: Path) -> None:
    (tmp_path / "bad.rego").write_text("package deputy\nimport rego.v1\ndecision := {\n")
    with pytest.raises(PolicyError, match=r"bad\.rego:\d+"):
        EmbeddedRego(PolicySource.read(tmp_path))


def test_revision_changes_with_the_policy_content(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package deputy\ndecision := {\"allow\": false}\n")
    first = PolicySource.read(tmp_path).revision
    (tmp_path / "data.json").write_text('{"access": {}}')
    assert PolicySource.read(tmp_path).revision != first
