"""Kubernetes and OIDC workloads as agents, over real HTTP against a real gateway (issue 8, item 4).

The gateway trusts two clusters and GitHub Actions through `[[workload_issuers]]`: cluster A by a JWKS
file, cluster B by OIDC discovery at its issuer (a loopback server), GitHub by a JWKS file. Tokens are
minted with real keys the way a kube-apiserver mints projected service-account tokens (K8s-SA example
payload, reference/k8s-oidc-workload-tokens.md items 6-7). The policy is the packaged Rego with the
service-account ids in its data.

Done when: a Kubernetes service-account token opens a task, mints in it, delegates to a sub-agent that
mints too, and is revoked with `revoke --agent` (admin API and CLI): then its tokens are inactive, its
task tokens refused, its SA tokens issued before the cutoff refused, and the same-named service account
of the other cluster untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from deputy_client.resource import VerifiedAccess
from tests.conftest import IDP, MAIL_AGENT, POLICY_DATA, Deployment, Probe, deployed
from tests.support import ACCESS_TOKEN, GRANT, ID_TOKEN, JWT, Issuer, JwksServer, deputy_command

TXN = "urn:ietf:params:oauth:token-type:txn_token"
CLUSTER_A = "https://kubernetes.default.svc.cluster.local"
GITHUB = "https://token.actions.githubusercontent.com"
NOTES = "https://notes.example.com"
WATCHER = "spiffe://example.org/rs/notes"  # a client of NOTES: introspects its tokens
ADMIN = "spiffe://example.org/ops/admin"
GH_SUB = "repo:octo-org@1001/octo-repo@2002:environment:prod"
# one per test: no test sees another's cutoffs
NAMESPACES = ("flow", "cli", "complete", "spiffe-parent", "cross", "blocked")


def sa(namespace: str, name: str = "mail") -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def key(agent: str, issuer: str = CLUSTER_A) -> str:
    """The packaged policy's key for a non-SPIFFE agent: its id is unique only within its issuer."""
    return f"{agent} at {issuer}"


def policy_data(cluster_b: str) -> dict[str, Any]:
    """The test data of the packaged policy, with the service accounts and the GitHub workflow added (cluster
    B's service accounts too, except in the namespace "solo", where only cluster A's are granted)."""
    data = json.loads(json.dumps(POLICY_DATA))
    access = next(iter(data.values()))
    clusters = {ns: [CLUSTER_A, cluster_b] for ns in NAMESPACES} | {"solo": [CLUSTER_A]}
    for ns, issuers in clusters.items():
        for issuer in issuers:
            access["grants"][key(sa(ns), issuer)] = {NOTES: ["notes.read", "notes.write"]}
            access["grants"][key(sa(ns, "summarizer"), issuer)] = {NOTES: ["notes.read"]}
            access.setdefault("subagents", {})[key(sa(ns), issuer)] = [key(sa(ns, "summarizer"), issuer)]
            access["delegations"][IDP]["alice"].append(key(sa(ns), issuer))
    access["grants"][key(GH_SUB, GITHUB)] = {NOTES: ["notes.read"]}
    access["grants"][MAIL_AGENT][NOTES] = ["notes.read"]
    access["subagents"][MAIL_AGENT] = [key(sa("spiffe-parent", "summarizer"))]
    access["delegations"][IDP]["alice"].append(key(GH_SUB, GITHUB))
    return data


@dataclass
class Env:
    deployment: Deployment
    cluster_a: Issuer
    cluster_b: Issuer
    github: Issuer
    discovery: JwksServer

    @property
    def client(self) -> httpx2.Client:
        return self.deployment.client

    def sa_token(self, cluster: Issuer, namespace: str, name: str = "mail", *, iat: int | None = None,
                 **claims: Any) -> str:
        """A projected service-account token of `cluster` for Deputy (K8s-Vol `audience`, item 11)."""
        now = int(time.time())
        issued = now - 5 if iat is None else iat
        body = {"aud": [self.deployment.issuer], "exp": issued + 600, "iat": issued, "nbf": issued,
                "iss": cluster.name, "sub": sa(namespace, name),
                "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": f"uid-{name}"},
                                  "pod": {"name": f"{name}-pod", "uid": "pod-uid"}}, **claims}
        return cluster.sign({k: v for k, v in body.items() if v is not None})

    def svid(self, spiffe_id: str, **claims: Any) -> str:
        return self.deployment.domain.svid(sub=spiffe_id, audience=self.deployment.issuer, **claims)

    def post(self, **form: Any) -> httpx2.Response:
        return self.client.post("/token", data={"grant_type": GRANT, **form})

    def open_task(self, actor_token: str, scope: str = "notes.read notes.write") -> httpx2.Response:
        return self.post(subject_token=self.deployment.user_token(scope="notes.read notes.write"),
                         subject_token_type=ACCESS_TOKEN, actor_token=actor_token, actor_token_type=JWT,
                         requested_token_type=TXN, scope=scope, audience=NOTES)

    def within(self, task_token: str, actor_token: str, scope: str = "notes.read") -> httpx2.Response:
        return self.post(subject_token=task_token, subject_token_type=TXN, actor_token=actor_token,
                         actor_token_type=JWT, scope=scope, resource=NOTES)

    def delegate(self, task_token: str, actor_token: str, scope: str = "notes.read") -> httpx2.Response:
        return self.post(subject_token=task_token, subject_token_type=TXN, actor_token=actor_token,
                         actor_token_type=JWT, scope=scope, requested_token_type=TXN)

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.client.post("/introspect", data={"token": token}, headers=bearer(self.svid(WATCHER)))
        assert response.status_code == 200, response.text
        return dict(response.json())

    def admin(self, method: str, path: str, **params: str) -> httpx2.Response:
        return self.client.request(method, path, params=params, headers=bearer(self.svid(ADMIN)))

    def deputy(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The admin CLI, against this gateway's admin API as the admin workload."""
        env = {**os.environ, "DEPUTY_ADDR": self.deployment.url, "DEPUTY_TOKEN": self.svid(ADMIN)}
        return subprocess.run(deputy_command(*args), capture_output=True, text=True, timeout=60, env=env)


def write_workload_config(directory: Path, cluster_a: Issuer, cluster_b: Issuer, github: Issuer) -> str:
    (directory / "cluster-a.jwks").write_text(json.dumps(cluster_a.jwks()))
    (directory / "github.jwks").write_text(json.dumps(github.jwks()))
    return f"""
[admin]
spiffe_ids = ["{ADMIN}"]

[[resources]]
audience = "{NOTES}"
scopes = ["notes.read", "notes.write"]
max_ttl = 300
clients = ["{WATCHER}"]

[[workload_issuers]]
issuer = "{cluster_a.name}"
jwks_file = "cluster-a.jwks"
kind = "kubernetes"

[[workload_issuers]]
issuer = "{cluster_b.name}"
discovery = true
kind = "kubernetes"

[[workload_issuers]]
issuer = "{github.name}"
jwks_file = "github.jwks"
kind = "oidc"
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    directory = tmp_path_factory.mktemp("workloads")
    discovery = JwksServer()
    cluster_a, github = Issuer(CLUSTER_A), Issuer(GITHUB)
    cluster_b = Issuer(f"{discovery.url}/cluster-b")  # http on loopback: allowed for development only
    discovery.documents["/cluster-b/.well-known/openid-configuration"] = {
        "issuer": cluster_b.name, "jwks_uri": f"{discovery.url}/cluster-b/openid/v1/jwks"}
    discovery.documents["/cluster-b/openid/v1/jwks"] = cluster_b.jwks()
    try:
        with deployed(directory, extra=write_workload_config(directory, cluster_a, cluster_b, github),
                      policy_files={"data.json": json.dumps(policy_data(cluster_b.name))}) as deployment:
            yield Env(deployment, cluster_a, cluster_b, github, discovery)
    finally:
        discovery.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ok(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def refused(response: httpx2.Response, error: str = "invalid_request") -> str:
    assert (response.status_code, response.json()["error"]) == (400, error), response.text
    return str(response.json()["error_description"])


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# --- The issue's "Done when": open, mint, delegate, revoke ------------------------------------------------


def test_issue8_4_a_service_account_token_opens_a_task_mints_delegates_and_is_revoked(env: Env) -> None:
    ns, a, b = "flow", env.cluster_a, env.cluster_b
    mail, summarizer, twin = sa(ns), sa(ns, "summarizer"), sa(ns)  # twin: the same name in cluster B
    task = ok(env.open_task(env.sa_token(a, ns)))
    assert claims_of(task["access_token"])["act"] == {"sub": mail, "iss": CLUSTER_A}  # RFC 8693 §4.1
    access = ok(env.within(task["access_token"], env.sa_token(a, ns)))["access_token"]
    assert {k: claims_of(access)[k] for k in ("act", "client_id")} == {
        "act": {"sub": mail, "iss": CLUSTER_A}, "client_id": mail}  # RFC 8693 §4.1, §4.3

    child = ok(env.delegate(task["access_token"], env.sa_token(a, ns, "summarizer")))
    chain = {"sub": summarizer, "iss": CLUSTER_A, "act": {"sub": mail, "iss": CLUSTER_A}}
    assert claims_of(child["access_token"])["act"] == chain  # §4.1: the current actor outermost
    sub_access = ok(env.within(child["access_token"], env.sa_token(a, ns, "summarizer")))["access_token"]
    assert (claims_of(sub_access)["act"], claims_of(sub_access)["client_id"]) == (chain, summarizer)
    assert env.introspect(sub_access)["act"] == chain

    other_task = ok(env.open_task(env.sa_token(b, ns)))  # cluster B's same-named service account
    other_access = ok(env.within(other_task["access_token"], env.sa_token(b, ns)))["access_token"]
    assert claims_of(other_access)["act"] == {"sub": twin, "iss": b.name}

    revoked = ok(env.admin("POST", "/admin/revoke", agent=mail, issuer=CLUSTER_A))
    assert set(revoked["revoked_tasks"]) == {task["task_id"], child["task_id"]}  # the child goes with it
    assert revoked["revoked_tokens"] == 2
    assert env.introspect(access) == {"active": False} and env.introspect(sub_access) == {"active": False}
    fresh = env.sa_token(a, ns, iat=int(time.time()) + 2)
    assert "the task has ended" in refused(env.within(task["access_token"], fresh))
    before = env.sa_token(a, ns, iat=int(time.time()) - 1)
    assert "issued before an admin revoked this agent" in refused(env.open_task(before))
    ok(env.open_task(env.sa_token(a, ns, iat=int(time.time()) + 2)))  # a token the kubelet refreshed since

    assert env.introspect(other_access)["active"] is True  # cluster B's service account is another agent
    ok(env.within(other_task["access_token"], env.sa_token(b, ns, iat=int(time.time()) - 60)))
    audited_with_issuers(env, ns)


def audited_with_issuers(env: Env, ns: str) -> None:
    """The audit trail and the task list name each agent with its issuer (its id is unique only there)."""
    events = ok(env.admin("GET", "/admin/audit", agent=sa(ns), limit="1000"))["events"]
    seen = {(e["action"], e["outcome"], e["agent_domain"]) for e in events}
    assert {("open_task", "granted", CLUSTER_A), ("exchange", "granted", CLUSTER_A),
            ("open_task", "granted", env.cluster_b.name), ("exchange", "granted", env.cluster_b.name),
            ("open_task", "refused", CLUSTER_A)} <= seen
    refusal = next(e for e in events if e["outcome"] == "refused" and e["action"] == "open_task")
    assert refusal["reasons"] == ["actor_token rejected: issued before an admin revoked this agent"]
    revocation = ok(env.admin("GET", "/admin/audit", agent=ADMIN, limit="1000"))["events"]
    assert any(f"agent {sa(ns)} at {CLUSTER_A}" in e["reasons"][0] for e in revocation if e["action"] == "admin_revoke")
    summarizer = ok(env.admin("GET", "/admin/audit", agent=sa(ns, "summarizer")))["events"]
    assert {(e["action"], e["agent_domain"]) for e in summarizer} == {("delegate", CLUSTER_A), ("exchange", CLUSTER_A)}
    tasks = ok(env.admin("GET", "/admin/tasks", agent=sa(ns)))["tasks"]
    assert {t["agent_domain"] for t in tasks} == {CLUSTER_A, env.cluster_b.name}


# --- revoke --agent: the issuer is part of the agent's name ------------------------------------------------


def test_issue8_4_revoke_agent_of_a_workload_issuer_requires_the_issuer(env: Env) -> None:
    response = env.admin("POST", "/admin/revoke", agent=sa("cross"))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert "give its workload issuer too" in response.json()["error_description"]
    response = env.admin("POST", "/admin/revoke", agent=MAIL_AGENT, issuer=CLUSTER_A)
    assert "names its own trust domain" in response.json()["error_description"]
    for response in (env.admin("POST", "/admin/revoke", agent=sa("cross"), issuer="line\nbreak"),):
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_issue8_4_a_same_named_service_account_of_another_cluster_gets_none_of_the_grants(env: Env) -> None:
    """The packaged policy keys a Kubernetes agent by its id and issuer ("<id> at <issuer>"): the same
    namespace and name in another cluster is another agent, with grants and consent of its own or none."""
    ok(env.open_task(env.sa_token(env.cluster_a, "solo")))
    description = refused(env.open_task(env.sa_token(env.cluster_b, "solo")), "unauthorized_client")
    assert "policy refused" in description


def test_issue8_4_cli_revoke_agent_with_issuer_spares_the_other_cluster(env: Env) -> None:
    ns, a, b = "cli", env.cluster_a, env.cluster_b
    in_a = ok(env.open_task(env.sa_token(a, ns)))
    in_b = ok(env.open_task(env.sa_token(b, ns)))
    token_b = ok(env.within(in_b["access_token"], env.sa_token(b, ns)))["access_token"]
    token_a = ok(env.within(in_a["access_token"], env.sa_token(a, ns)))["access_token"]

    missing = env.deputy("revoke", "--agent", sa(ns))
    assert missing.returncode == 2 and "give its workload issuer too" in missing.stderr, missing.stderr
    revoked = env.deputy("revoke", "--agent", sa(ns), "--issuer", b.name)
    assert revoked.returncode == 0 and "revoked 1 task(s) and 1 token(s)" in revoked.stdout, revoked.stderr
    assert env.introspect(token_b) == {"active": False}
    assert env.introspect(token_a)["active"] is True  # cluster A's service account of that name is untouched
    assert "revoked this agent" in refused(env.open_task(env.sa_token(b, ns, iat=int(time.time()) - 1)))
    ok(env.open_task(env.sa_token(a, ns, iat=int(time.time()) - 1)))

    listing = json.loads(env.deputy("tasks", "list", "--agent", sa(ns), "--json").stdout)["tasks"]
    assert {(t["agent"], t["agent_domain"]) for t in listing} == {(sa(ns), CLUSTER_A), (sa(ns), b.name)}
    audit = env.deputy("audit", "--agent", sa(ns), "--limit", "500", "--json").stdout.splitlines()
    assert CLUSTER_A in {json.loads(line)["agent_domain"] for line in audit}, audit
    shown = env.deputy("tasks", "show", in_a["task_id"])
    assert f"{sa(ns)} at {CLUSTER_A}" in shown.stdout, shown.stdout


# --- Agent endpoints: a task belongs to (id, issuer) ------------------------------------------------------


def test_issue8_4_a_service_account_completes_its_own_task_and_not_the_same_name_elsewhere(env: Env) -> None:
    ns = "complete"
    task = ok(env.open_task(env.sa_token(env.cluster_a, ns)))
    path = f"/tasks/{task['task_id']}/complete"
    twin = env.client.post(path, headers=bearer(env.sa_token(env.cluster_b, ns)))
    assert twin.status_code == 404  # same id, other issuer: another agent
    done = env.client.post(path, headers=bearer(env.sa_token(env.cluster_a, ns)))
    assert done.status_code == 200 and done.json()["state"] == "completed"
    events = ok(env.admin("GET", "/admin/audit", task=task["task_id"]))["events"]
    assert ("complete", sa(ns), CLUSTER_A) in {(e["action"], e["agent"], e["agent_domain"]) for e in events}


def test_issue8_4_a_spiffe_agent_delegates_to_a_kubernetes_sub_agent(env: Env) -> None:
    task = ok(env.open_task(env.svid(MAIL_AGENT), scope="notes.read"))
    child = ok(env.delegate(task["access_token"], env.sa_token(env.cluster_a, "spiffe-parent", "summarizer")))
    assert claims_of(child["access_token"])["act"] == {
        "sub": sa("spiffe-parent", "summarizer"), "iss": CLUSTER_A, "act": {"sub": MAIL_AGENT}}


def test_issue8_4_a_resource_server_sees_the_agent_with_its_issuer(env: Env) -> None:
    """deputy_client.resource.VerifiedAccess: `agent` is `client_id`, `agent_issuer` the current actor's `act.iss`."""
    task = ok(env.open_task(env.sa_token(env.cluster_b, "cross")))
    access = ok(env.within(task["access_token"], env.sa_token(env.cluster_b, "cross")))["access_token"]
    seen = VerifiedAccess.of(claims_of(access))
    assert (seen.agent, seen.agent_issuer, seen.task_id) == (sa("cross"), env.cluster_b.name, task["task_id"])
    spiffe = ok(env.post(subject_token=env.deployment.user_token(scope="notes.read"), subject_token_type=ACCESS_TOKEN,
                         actor_token=env.svid(MAIL_AGENT), actor_token_type=JWT, scope="notes.read", resource=NOTES))
    assert (VerifiedAccess.of(claims_of(spiffe["access_token"])).agent_issuer) is None


def test_gh_item_17_a_github_actions_token_is_an_agent(env: Env) -> None:
    now = int(time.time())
    token = env.github.sign({"iss": GITHUB, "sub": GH_SUB, "aud": env.deployment.issuer, "iat": now - 5,
                             "nbf": now - 5, "exp": now + 300, "repository_id": "2002",
                             "runner_environment": "github-hosted"}, headers={"typ": "JWT"})
    body = ok(env.post(subject_token=env.deployment.user_token(scope="notes.read"), subject_token_type=ACCESS_TOKEN,
                       actor_token=token, actor_token_type=JWT, scope="notes.read", resource=NOTES))
    claims = claims_of(body["access_token"])
    assert (claims["act"], claims["client_id"]) == ({"sub": GH_SUB, "iss": GITHUB}, GH_SUB)


def test_k8s_sa_item_4_cluster_b_keys_come_from_discovery_once(env: Env) -> None:
    for _ in range(3):
        ok(env.open_task(env.sa_token(env.cluster_b, "cross")))
    assert env.discovery.hits["/cluster-b/.well-known/openid-configuration"] == 1
    assert env.discovery.hits["/cluster-b/openid/v1/jwks"] == 1


# --- Bad actor tokens over HTTP: refused, nothing issued ---------------------------------------------------


Form = Callable[[Env], dict[str, Any]]


def _sa(**claims: Any) -> Form:
    return lambda env: {"actor_token": env.sa_token(env.cluster_a, "cross", **claims)}


BAD_ACTOR_TOKENS: list[tuple[str, Form, str, str]] = [
    ("aud_is_the_api_server_only", _sa(aud=["https://kubernetes.default.svc"]), "invalid_request",
     "actor_token rejected: aud does not include"),
    ("no_exp_legacy_secret_token", _sa(exp=None), "invalid_request", "actor_token rejected: exp claim missing"),
    ("lifetime_above_the_cap", _sa(exp=int(time.time()) + 2 * 86400), "invalid_request", "exceeds the cap"),
    ("namespace_disagrees", _sa(sub=sa("prod")), "invalid_request",
     "namespace in sub does not match kubernetes.io.namespace"),
    ("spiffe_sub", _sa(sub=MAIL_AGENT), "invalid_request", "actor_token rejected: sub claim is a SPIFFE ID"),
    ("cluster_a_iss_signed_by_cluster_b",
     lambda env: {"actor_token": env.cluster_b.sign(claims_of(env.sa_token(env.cluster_a, "cross")))},
     "invalid_request", "actor_token rejected: no trusted key with kid"),
    ("jwt_svid_with_the_cluster_iss",
     lambda env: {"actor_token": env.deployment.domain.svid(audience=env.deployment.issuer, iss=CLUSTER_A)},
     "invalid_request", "actor_token rejected: no trusted key with kid"),
    ("as_id_token_type", lambda env: {**_sa()(env), "actor_token_type": ID_TOKEN}, "invalid_request",
     "actor_token_type must be one of"),
    ("as_access_token_type", lambda env: {**_sa()(env), "actor_token_type": ACCESS_TOKEN}, "invalid_request",
     "actor_token_type must be one of"),
    ("client_id_of_another_workload", lambda env: {**_sa()(env), "client_id": sa("cross", "other")},
     "unauthorized_client", "client_id does not match the actor_token's workload"),
]


@pytest.mark.parametrize(("case", "form", "error", "says"), BAD_ACTOR_TOKENS, ids=[c[0] for c in BAD_ACTOR_TOKENS])
def test_reference_bad_actor_tokens_are_refused_and_nothing_is_issued(env: Env, case: str, form: Form, error: str,
                                                                      says: str) -> None:
    """reference "Bad inputs to test" and cross-kind cases, through /token (RFC 8693 §2.2.2)."""
    probe = Probe(env.deployment, env.deployment.issued_count(), len(env.deployment.audit()))
    fields = {"subject_token": env.deployment.user_token(scope="notes.read"), "subject_token_type": ACCESS_TOKEN,
              "actor_token_type": JWT, "scope": "notes.read", "resource": NOTES, **form(env)}
    probe.refused(env.post(**fields), 400, error, names=says)


def test_issue11_3_a_workload_issuer_block_refuses_its_agents_only_and_is_lifted(env: Env) -> None:
    """Last in this module: the block revokes all of cluster B, and cuts off its tokens issued until now."""
    ns, b = "blocked", env.cluster_b
    in_b = ok(env.open_task(env.sa_token(b, ns)))
    added = env.client.post("/admin/blocks", json={"workload_issuer": b.name, "for": "1h", "reason": "cluster B"},
                            headers=bearer(env.svid(ADMIN)))
    assert added.status_code == 201 and added.json()["block"]["kind"] == "workload_issuer", added.text
    assert added.json()["revoked"]["tasks"] >= 1
    later = int(time.time()) + 1  # a token issued after the block's revocation cutoff: the block still refuses it
    assert "an admin blocked this agent" in refused(env.open_task(env.sa_token(b, ns, iat=later)),
                                                    "unauthorized_client")
    assert env.within(in_b["access_token"], env.sa_token(b, ns, iat=later)).status_code == 400
    ok(env.open_task(env.sa_token(env.cluster_a, ns)))  # the same name at cluster A is another agent
    lifted = env.client.request("DELETE", f"/admin/blocks/{added.json()['block']['id']}",
                                headers=bearer(env.svid(ADMIN)))
    assert lifted.status_code == 200, lifted.text
    ok(env.open_task(env.sa_token(b, ns, iat=later)))
