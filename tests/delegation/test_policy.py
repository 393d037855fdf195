"""The embedded Rego engine with the packaged policy: decisions, strict reading of results, fail closed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from delegation.policy import Decision, PolicyError, PolicyInput, PolicySource
from delegation.rego import EmbeddedRego
from delegation.tasks import Task
from policies import PACKAGED_POLICIES
from token_exchange import rfc8693
from token_exchange.actors import VerifiedActor
from token_exchange.attestation import Posture
from token_exchange.rfc6749 import FormParams
from token_exchange.scope import Scope
from token_exchange.txn_tokens import TaskContext
from token_exchange.user_tokens import VerifiedSubject

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
        "actor": {"id": agent, "kind": "spiffe", "domain": "example.org", "sub": agent, "trust_domain": "example.org",
                  "claims": {}},
        "request": {"scope": list(scope), "audience": MAIL, "audiences": [MAIL],
                    "requested_token_type": "urn:ietf:params:oauth:token-type:access_token"},
        "now": 1_800_000_000,
        **extra,
    })


def spiffe(agent: str) -> dict[str, str]:
    return {"id": agent, "kind": "spiffe", "domain": "example.org"}


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
    delegated = await engine.decide(query("delegate", agent=HELPER, chain=[AGENT], chain_actors=[spiffe(AGENT)],
                                          task={"agent": AGENT}))
    assert delegated.allow and delegated.scope == ("mail.read",)
    refused = await engine.decide(query("delegate", agent=AGENT, chain=[HELPER], chain_actors=[spiffe(HELPER)],
                                        task={"agent": HELPER}))
    assert refused.error == "unauthorized_client"
    chain = ["spiffe://x/a", "spiffe://x/b", AGENT]
    too_deep = await engine.decide(query("delegate", agent=HELPER, chain=chain,
                                         chain_actors=[spiffe(a) for a in chain]))
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


def built(actor: VerifiedActor) -> dict[str, Any]:
    """The input the flows build for a one-shot exchange by `actor`."""
    form = {"grant_type": rfc8693.GRANT_TYPE, "subject_token": "u", "subject_token_type": rfc8693.ACCESS_TOKEN_TYPE,
            "actor_token": "a", "actor_token_type": rfc8693.JWT_TYPE, "resource": MAIL, "scope": "mail.delete"}
    user = VerifiedSubject("https://idp.example.com", "alice", Scope.from_claim("mail.delete"), 1_800_000_600)
    task = Task.new_root(agent=actor.ref, user_issuer=user.issuer, user_subject=user.subject, scope=user.scope,
                         audiences=(), context=TaskContext(), created_at=1_800_000_000, deadline=user.expires_at)
    return PolicyInput.build("exchange", task=task, subject=user, actor=actor, audiences=[MAIL],
                             request=rfc8693.parse(FormParams.parse(form.items())), now=1_800_000_000).as_json()


async def test_abca_7_6_posture_reaches_the_policy_only_when_attested(engine: EmbeddedRego) -> None:
    plain = VerifiedActor(AGENT, "spiffe", "example.org", 1_800_000_300)
    assert "posture" not in built(plain)["actor"]
    image = "sha256:5bd11fb71be1c450f4502959e8bad254868731ff2bfb0210302429e8625b031b"  # in policies/data.json
    posture = Posture("node-attester", 1_800_000_000, 1_800_000_300, {"dbgstat": "disabled", "image_digest": image})
    document = built(VerifiedActor(AGENT, "spiffe", "example.org", 1_800_000_300, posture=posture))
    assert document["actor"]["posture"] == {"attester": "node-attester", "iat": 1_800_000_000, "exp": 1_800_000_300,
                                            "claims": dict(posture.claims)}
    assert (await engine.decide(PolicyInput(document))).scope == ("mail.delete",)
    refused = await engine.decide(PolicyInput(built(plain)))
    assert (refused.allow, refused.error) == (False, "invalid_scope")
    assert refused.reasons == ("no requested scope is granted without a fresh attested posture (allowed image, "
                               "debug disabled): mail.delete",)
