"""What the policy sees of a Kubernetes or OIDC workload, and the decisions that are the policy's to make.

Each actor is a real token verified by `WorkloadTokenVerifier` with a real key; the input is built by
`PolicyInput.build` and decided by the embedded Rego engine. The packaged policy's `may_act` rule
(RFC 8693 §4.4) needs `iss` for such actors; the GitHub trust conditions of
reference/k8s-oidc-workload-tokens.md ("Bad inputs to test"; GH, OIDC claims used to define trust
conditions, item 19) are written as a policy here, over the claims the verifier passes through unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from delegation.policy import PolicyInput, PolicySource
from delegation.rego import EmbeddedRego
from delegation.tasks import Task
from policies import PACKAGED_POLICIES
from tests.support import compact, signer_for
from token_exchange.actors import VerifiedActor
from token_exchange.keys import ASYMMETRIC_ALGORITHMS, StaticKeys, parse_key_set
from token_exchange.rfc8693 import ACCESS_TOKEN_TYPE, JWT_TYPE, ExchangeRequest, PresentedToken, Target
from token_exchange.scope import Scope
from token_exchange.signing import SigningKey
from token_exchange.txn_tokens import TaskContext
from token_exchange.user_tokens import VerifiedSubject
from token_exchange.workload_tokens import WorkloadIssuer, WorkloadTokenVerifier

NOW = 1_800_000_000
DEPUTY, IDP, NOTES = "https://deputy.example.com", "https://idp.example.com", "https://notes.example.com"
CLUSTER_A, CLUSTER_B = "https://k8s-a.example.com", "https://k8s-b.example.com"
GITHUB = "https://token.actions.githubusercontent.com"
SA = "system:serviceaccount:agents:mail"
IMMUTABLE_SUB = "repo:octo-org@1001/octo-repo@2002:environment:prod"
KEY = SigningKey.generate("ES256")


async def verified(issuer: str, kind: str, claims: dict[str, Any]) -> VerifiedActor:
    keys = StaticKeys(parse_key_set({"keys": [KEY.public_jwk]}, allowed=ASYMMETRIC_ALGORITHMS))
    verifier = WorkloadTokenVerifier(WorkloadIssuer(issuer, DEPUTY, keys, kind))  # type: ignore[arg-type]
    body = {"iss": issuer, "aud": DEPUTY, "iat": NOW, "exp": NOW + 300, **claims}
    return await verifier.verify(compact({"alg": "ES256", "kid": KEY.kid}, body, signer_for("ES256", KEY.private_key)),
                                 now=NOW)


async def service_account(issuer: str = CLUSTER_A) -> VerifiedActor:
    return await verified(issuer, "kubernetes", {"sub": SA, "kubernetes.io": {
        "namespace": "agents", "serviceaccount": {"name": "mail", "uid": "u"}}})


def exchange_input(actor: VerifiedActor, user_claims: dict[str, Any] | None = None) -> PolicyInput:
    """The input of a one-shot exchange by `actor` for alice at NOTES."""
    user = VerifiedSubject(IDP, "alice", Scope.of(["notes.read"]), NOW + 300, user_claims or {})
    request = ExchangeRequest(PresentedToken("user", ACCESS_TOKEN_TYPE), PresentedToken("actor", JWT_TYPE),
                              (Target.audience(NOTES),), Scope.of(["notes.read"]), ACCESS_TOKEN_TYPE, None)
    task = Task.new_root(agent=actor.ref, user_issuer=IDP, user_subject="alice", scope=Scope.of(["notes.read"]),
                         audiences=(NOTES,), context=TaskContext(), created_at=NOW, deadline=NOW + 300,
                         implicit=True)
    return PolicyInput.build("exchange", task=task, subject=user, actor=actor, request=request, audiences=[NOTES],
                             now=NOW)


async def test_issue8_4_input_actor_names_the_workload_its_kind_and_its_issuer() -> None:
    actor = exchange_input(await service_account()).as_json()["actor"]
    assert {k: actor[k] for k in ("id", "kind", "domain", "sub")} == {
        "id": SA, "kind": "kubernetes", "domain": CLUSTER_A, "sub": SA}  # sub stays the id: old policies work
    assert actor["claims"]["kubernetes.io"]["serviceaccount"]["name"] == "mail"
    assert "trust_domain" not in actor


@pytest.fixture(scope="module")
def packaged() -> EmbeddedRego:
    source = PolicySource.read(PACKAGED_POLICIES)
    data = {"access": {"grants": {f"{SA} at {CLUSTER_A}": {NOTES: ["notes.read"]}}, "delegations": {}}}
    return EmbeddedRego(PolicySource(source.modules, data, "test"))


async def test_rfc8693_4_4_may_act_names_a_kubernetes_actor_only_with_its_issuer(packaged: EmbeddedRego) -> None:
    """Such a sub is unique only within its issuer: a may_act without `iss`, or with another cluster's,
    does not name this service account."""
    actor = await service_account()
    assert (await packaged.decide(exchange_input(actor, {"may_act": {"sub": SA, "iss": CLUSTER_A}}))).allow
    for may_act in ({"sub": SA}, {"sub": SA, "iss": CLUSTER_B}, {"sub": "system:serviceaccount:agents:other",
                                                                  "iss": CLUSTER_A}):
        decision = await packaged.decide(exchange_input(actor, {"may_act": may_act}))
        assert (decision.allow, decision.error) == (False, "unauthorized_client"), may_act
    twin = await service_account(CLUSTER_B)
    assert not (await packaged.decide(exchange_input(twin, {"may_act": {"sub": SA, "iss": CLUSTER_A}}))).allow


TRUST_CONDITIONS = """package deputy
import rego.v1

default decision := {"allow": false, "error": "unauthorized_client", "reasons": ["no trust condition holds"]}

# GH item 19: trust conditions on the workflow's claims; the immutable subject keys the trust (item 21).
decision := {"allow": true, "scope": input.request.scope, "reasons": ["trusted workflow"]} if {
	input.actor.kind == "oidc"
	input.actor.domain == "https://token.actions.githubusercontent.com"
	trusted := data.github.trusted[input.actor.id]
	input.actor.claims.repository_id == trusted.repository_id
	input.actor.claims.runner_environment == "github-hosted"
	startswith(input.actor.claims.job_workflow_ref, concat("", [input.actor.claims.repository, "/"]))
	not endswith(input.actor.id, ":pull_request")
}
"""
WORKFLOW = "octo-org/octo-repo/.github/workflows/agent.yml@refs/heads/main"


def github_claims(**changes: Any) -> dict[str, Any]:
    return {"sub": IMMUTABLE_SUB, "repository": "octo-org/octo-repo", "repository_id": "2002",
            "repository_owner_id": "1001", "runner_environment": "github-hosted", "job_workflow_ref": WORKFLOW,
            "event_name": "push", **changes}


@pytest.fixture(scope="module")
def trust_conditions() -> EmbeddedRego:
    data = {"github": {"trusted": {IMMUTABLE_SUB: {"repository_id": "2002"},
                                   "repo:octo-org/octo-repo:pull_request": {"repository_id": "2002"}}}}
    return EmbeddedRego(PolicySource({"trust.rego": TRUST_CONDITIONS}, json.loads(json.dumps(data)), "test"))


async def test_gh_item_19_the_trusted_workflow_is_allowed(trust_conditions: EmbeddedRego) -> None:
    assert (await trust_conditions.decide(exchange_input(await verified(GITHUB, "oidc", github_claims())))).allow


GITHUB_BAD: list[tuple[str, dict[str, Any]]] = [
    ("old_format_sub_of_a_repository_created_after_15_july_2026", {"sub": "repo:octo-org/octo-repo:environment:prod"}),
    ("matching_repository_but_another_repository_id", {"repository_id": "9999"}),
    ("sub_ending_in_pull_request", {"sub": "repo:octo-org/octo-repo:pull_request", "event_name": "pull_request"}),
    ("self_hosted_runner_where_hosted_runners_are_wanted", {"runner_environment": "self-hosted"}),
    ("job_workflow_ref_from_another_repository",
     {"job_workflow_ref": "evil-org/octo-repo-fork/.github/workflows/agent.yml@refs/heads/main"}),
]


@pytest.mark.parametrize(("case", "changes"), GITHUB_BAD, ids=[c[0] for c in GITHUB_BAD])
async def test_reference_github_tokens_the_policy_refuses(trust_conditions: EmbeddedRego, case: str,
                                                          changes: dict[str, Any]) -> None:
    """Each is a valid GitHub token (the verifier accepts it): whether to trust it is the policy's call."""
    actor = await verified(GITHUB, "oidc", github_claims(**changes))
    decision = await trust_conditions.decide(exchange_input(actor))
    assert (decision.allow, decision.error) == (False, "unauthorized_client")
