"""Kubernetes service-account tokens and GitHub Actions OIDC tokens as actor tokens, verified with real keys
and real signatures: every "Bad inputs to test" case of reference/k8s-oidc-workload-tokens.md for both
kinds and its cross-kind cases, beside the happy paths and the RFC 8725 rules the verifier shares.

Cites name the reference's pages and items: K8s-SA (configure-service-account), K8s-Admin
(service-accounts-admin), K8s-Vol (volumes), GH (GitHub's OIDC reference). The GitHub cases that are
trust conditions (`repository_id`, `runner_environment`, `job_workflow_ref`, GH item 19) are the
policy's to decide: tests/delegation/test_workload_policy.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.settings import ConfigError, parse_settings
from tests.support import compact, hmac_signer, signer_for
from token_exchange.actors import WorkloadVerifiers, actor_claim
from token_exchange.jws import TokenError
from token_exchange.keys import ASYMMETRIC_ALGORITHMS, StaticKeys, parse_key_set
from token_exchange.signing import SigningKey
from token_exchange.spiffe import SVID_ALGORITHMS, JwtSvidVerifier
from token_exchange.workload_tokens import (
    MAX_LIFETIME_S,
    WorkloadIssuer,
    WorkloadTokenError,
    WorkloadTokenVerifier,
)

NOW = 1_800_000_000
DEPUTY = "https://deputy.example.com"
CLUSTER_A, CLUSTER_B = "https://kubernetes.default.svc.cluster.local", "https://oidc.cluster-b.example.com"
API_SERVER = "https://kubernetes.default.svc"  # the kube-apiserver's own audience (K8s-Vol, item 11)
GITHUB = "https://token.actions.githubusercontent.com"
OWNER_URL = "https://github.com/octo-org"  # GitHub's default aud: the repository owner's URL (GH, item 17)
SA = "system:serviceaccount:agents:mail"
IMMUTABLE_SUB = "repo:octo-org@1001/octo-repo@2002:environment:prod"  # GH item 21
OLD_SUB = "repo:octo-org/octo-repo:environment:prod"


def rsa_key() -> SigningKey:
    return SigningKey.of("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class Issuer:
    """A workload issuer with a real key (a cluster's service-account signing key, GitHub's OIDC key)."""

    name: str
    key: SigningKey = field(default_factory=lambda: SigningKey.generate("ES256"))

    def keys(self) -> StaticKeys:
        return StaticKeys(parse_key_set({"keys": [self.key.public_jwk]}, allowed=ASYMMETRIC_ALGORITHMS))

    def sign(self, claims: dict[str, Any], *, header: dict[str, Any] | None = None,
             key: SigningKey | None = None) -> str:
        """Signed with `key` (default: this issuer's), its kid in the header unless `header` replaces it."""
        signer = key or self.key
        head = {"alg": signer.algorithm, "kid": signer.kid, **(header or {})}
        return compact({k: v for k, v in head.items() if v is not None}, claims,
                       signer_for(signer.algorithm, signer.private_key))


def sa_claims(issuer: Issuer, namespace: str = "agents", name: str = "mail", **changes: Any) -> dict[str, Any]:
    """A Pod-bound projected token (K8s-SA example payload, item 6; private claims, item 7)."""
    body: dict[str, Any] = {
        "aud": [DEPUTY], "exp": NOW + 3600, "iat": NOW, "nbf": NOW, "iss": issuer.name,
        "jti": "0b7c5a1e-2f4d-4d0e-9a51-2f6a4bb1c0de", "sub": f"system:serviceaccount:{namespace}:{name}",
        "kubernetes.io": {
            "namespace": namespace, "serviceaccount": {"name": name, "uid": "7f1b8c1e-5d2a-4f7c-a3a5-2b2b0e9d4c11"},
            "pod": {"name": "mail-7c9d", "uid": "1f2e3d4c-0000-4000-8000-00000000a001"},
            "node": {"name": "node-1", "uid": "1f2e3d4c-0000-4000-8000-00000000b001"}, "warnafter": NOW + 2880,
        },
    }
    return {k: v for k, v in {**body, **changes}.items() if v is not None}


def gh_claims(**changes: Any) -> dict[str, Any]:
    """A GitHub Actions OIDC token for a job in environment prod (GH, Standard and additional claims, item 17-18)."""
    body: dict[str, Any] = {
        "aud": DEPUTY, "exp": NOW + 300, "iat": NOW, "nbf": NOW, "iss": GITHUB, "jti": "example-id",
        "sub": IMMUTABLE_SUB, "repository": "octo-org/octo-repo", "repository_id": "2002",
        "repository_owner": "octo-org", "repository_owner_id": "1001", "repository_visibility": "private",
        "environment": "prod", "event_name": "push", "ref": "refs/heads/main", "ref_type": "branch",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/agent.yml@refs/heads/main",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/agent.yml@refs/heads/main",
        "runner_environment": "github-hosted", "actor": "octocat", "run_id": "42",
    }
    return {k: v for k, v in {**body, **changes}.items() if v is not None}


@pytest.fixture(scope="module")
def cluster_a() -> Issuer:
    return Issuer(CLUSTER_A, rsa_key())  # kube-apiservers sign with RSA by default (K8s-SA, item 2)


@pytest.fixture(scope="module")
def cluster_b() -> Issuer:
    return Issuer(CLUSTER_B)


@pytest.fixture(scope="module")
def github() -> Issuer:
    return Issuer(GITHUB, rsa_key())


def kubernetes(issuer: Issuer, **kw: Any) -> WorkloadTokenVerifier:
    return WorkloadTokenVerifier(WorkloadIssuer(issuer.name, DEPUTY, issuer.keys(), "kubernetes", **kw))


def oidc(issuer: Issuer, **kw: Any) -> WorkloadTokenVerifier:
    return WorkloadTokenVerifier(WorkloadIssuer(issuer.name, DEPUTY, issuer.keys(), "oidc", **kw))


async def refused(verifier: Any, token: str, says: str) -> str:
    with pytest.raises(TokenError) as caught:
        await verifier.verify(token, now=NOW)
    assert says in str(caught.value), str(caught.value)
    return str(caught.value)


# --- Kubernetes: the happy path ------------------------------------------------------------------------------


async def test_k8s_sa_item_6_a_projected_token_is_an_actor_named_by_its_sub_within_its_issuer(
        cluster_a: Issuer) -> None:
    actor = await kubernetes(cluster_a).verify(cluster_a.sign(sa_claims(cluster_a)), now=NOW)
    assert (actor.id, actor.kind, actor.domain, actor.expires_at) == (SA, "kubernetes", CLUSTER_A, NOW + 3600)
    assert actor.claims["kubernetes.io"]["pod"]["name"] == "mail-7c9d"  # private claims reach the policy (item 7)
    assert actor.issued_at == NOW
    # RFC 8693 §4.1: such a sub is unique only within its issuer, so `act` names both.
    assert actor_claim((actor.ref,)) == {"sub": SA, "iss": CLUSTER_A}


async def test_k8s_sa_item_6_a_secret_bound_token_without_pod_is_accepted(cluster_a: Issuer) -> None:
    """K8s-Admin, Bound service account tokens (item 7): a Secret-bound token carries `secret`, not `pod`."""
    claims = sa_claims(cluster_a)
    claims["kubernetes.io"] = {"namespace": "agents", "serviceaccount": {"name": "mail", "uid": "u"},
                               "secret": {"name": "mail-token", "uid": "s"}}
    assert (await kubernetes(cluster_a).verify(cluster_a.sign(claims), now=NOW)).id == SA


async def test_k8s_vol_item_11_aud_listing_deputy_and_another_service_is_accepted_for_the_policy(
        cluster_a: Issuer) -> None:
    token = cluster_a.sign(sa_claims(cluster_a, aud=[API_SERVER, DEPUTY, "https://vault.example.com"]))
    actor = await kubernetes(cluster_a).verify(token, now=NOW)
    assert actor.claims["aud"] == [API_SERVER, DEPUTY, "https://vault.example.com"]  # the policy decides


async def test_deputy_the_lifetime_cap_is_24_hours_and_a_token_at_the_cap_is_accepted(cluster_a: Issuer) -> None:
    assert MAX_LIFETIME_S == 24 * 3600  # the kubelet refreshes by 24 h at the latest (K8s-SA, item 13)
    token = cluster_a.sign(sa_claims(cluster_a, exp=NOW + MAX_LIFETIME_S))
    assert (await kubernetes(cluster_a).verify(token, now=NOW)).expires_at == NOW + MAX_LIFETIME_S


# --- Kubernetes: bad inputs (reference, "Bad inputs to test") -------------------------------------------------

K8S_BAD_CLAIMS: list[tuple[str, dict[str, Any], str]] = [
    ("aud_is_the_api_server_only", {"aud": [API_SERVER]}, f"aud does not include {DEPUTY}"),
    ("aud_is_the_issuer_only", {"aud": CLUSTER_A}, f"aud does not include {DEPUTY}"),  # --api-audiences default
    ("aud_missing", {"aud": None}, "aud claim missing"),
    ("sub_without_name", {"sub": "system:serviceaccount:agents"}, "must name a namespace and a service account"),
    ("sub_with_empty_namespace", {"sub": "system:serviceaccount::mail"}, "must name a namespace"),
    ("sub_with_empty_name", {"sub": "system:serviceaccount:agents:"}, "must name a namespace"),
    ("sub_with_extra_part", {"sub": "system:serviceaccount:agents:mail:x"}, "must name a namespace"),
    ("sub_not_a_service_account", {"sub": "system:node:node-1"}, "sub is not system:serviceaccount:"),
    ("sub_namespace_not_a_dns_label", {"sub": "system:serviceaccount:Agents:mail"}, "not a DNS label"),
    ("sub_name_not_a_dns_subdomain", {"sub": "system:serviceaccount:agents:Mail_1"}, "not a DNS subdomain"),
    ("sub_namespace_differs_from_private_claim", {"sub": "system:serviceaccount:prod:mail"},
     "namespace in sub does not match kubernetes.io.namespace"),
    ("sub_name_differs_from_private_claim", {"sub": "system:serviceaccount:agents:admin"},
     "service account in sub does not match kubernetes.io.serviceaccount.name"),
    ("private_claim_missing", {"kubernetes.io": None}, "kubernetes.io claim missing"),
    ("private_claim_not_an_object", {"kubernetes.io": "agents"}, "kubernetes.io claim missing or not an object"),
    ("serviceaccount_missing", {"kubernetes.io": {"namespace": "agents"}},
     "does not match kubernetes.io.serviceaccount"),
    ("no_exp", {"exp": None}, "exp claim missing: a token that never expires"),
    ("no_iat", {"iat": None}, "iat claim missing"),
    ("lifetime_above_the_cap", {"exp": NOW + MAX_LIFETIME_S + 1},
     f"lifetime (exp - iat) of {MAX_LIFETIME_S + 1} s exceeds the cap of {MAX_LIFETIME_S} s"),
    ("a_year_long_token", {"iat": NOW - 10, "exp": NOW + 365 * 86400}, "exceeds the cap"),
    ("exp_not_after_iat", {"iat": NOW, "exp": NOW}, "exp is not after iat"),
    ("expired", {"iat": NOW - 7200, "nbf": NOW - 7200, "exp": NOW - 3600}, "expired"),
    ("nbf_in_the_future", {"nbf": NOW + 600}, "nbf is in the future"),
    ("iat_in_the_future", {"iat": NOW + 600, "exp": NOW + 1200}, "iat is in the future"),
    ("exp_as_string", {"exp": str(NOW + 3600)}, "exp claim is not an integer"),
    ("iss_over_http", {"iss": CLUSTER_A.replace("https://", "http://")}, f"iss is not {CLUSTER_A}"),
    ("iss_with_trailing_slash", {"iss": CLUSTER_A + "/"}, f"iss is not {CLUSTER_A}"),
    ("iss_missing", {"iss": None}, f"iss is not {CLUSTER_A}"),
]


@pytest.mark.parametrize(("case", "changes", "says"), K8S_BAD_CLAIMS, ids=[c[0] for c in K8S_BAD_CLAIMS])
async def test_reference_bad_kubernetes_tokens_are_refused(cluster_a: Issuer, case: str, changes: dict[str, Any],
                                                           says: str) -> None:
    await refused(kubernetes(cluster_a), cluster_a.sign(sa_claims(cluster_a, **changes)), says)


async def test_k8s_admin_item_15_a_legacy_secret_based_token_is_refused(cluster_a: Issuer) -> None:
    """A manually created Secret token never expires and has the legacy flat claims (reference item 15)."""
    legacy = {"iss": CLUSTER_A, "sub": SA, "aud": [DEPUTY],
              "kubernetes.io/serviceaccount/namespace": "agents",
              "kubernetes.io/serviceaccount/secret.name": "mail-token",
              "kubernetes.io/serviceaccount/service-account.name": "mail",
              "kubernetes.io/serviceaccount/service-account.uid": "7f1b8c1e"}
    await refused(kubernetes(cluster_a), cluster_a.sign(legacy), "a token that never expires")


async def test_rfc8725_3_8_cluster_a_iss_signed_with_cluster_b_key_is_refused(cluster_a: Issuer,
                                                                             cluster_b: Issuer) -> None:
    forged = cluster_a.sign(sa_claims(cluster_a), key=cluster_b.key)  # B's kid: not in A's key set
    await refused(kubernetes(cluster_a), forged, "no trusted key with kid")
    same_kid = cluster_a.sign(sa_claims(cluster_a), key=cluster_b.key,
                              header={"alg": cluster_a.key.algorithm, "kid": cluster_a.key.kid})
    await refused(kubernetes(cluster_a), same_kid, "signature rejected")


async def test_rfc8725_3_1_the_algorithm_is_the_keys_never_the_headers(cluster_a: Issuer) -> None:
    claims, kid = sa_claims(cluster_a), cluster_a.key.kid
    verifier = kubernetes(cluster_a)
    public_pem = cluster_a.key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs256 = compact({"alg": "HS256", "kid": kid}, claims, hmac_signer(public_pem))
    await refused(verifier, hs256, "algorithm 'HS256' is not allowed")
    await refused(verifier, compact({"alg": "none", "kid": kid}, claims, b""), "not a compact JWS")
    await refused(verifier, compact({"alg": "none", "kid": kid}, claims), "algorithm 'none' is not allowed")
    ps256 = compact({"alg": "PS256", "kid": kid}, claims, signer_for("PS256", cluster_a.key.private_key))
    await refused(verifier, ps256, "does not match key")  # an RS256 key verifies RS256 only


HEADER_ATTACKS: list[tuple[str, dict[str, Any], str]] = [
    ("kid_missing", {"kid": None}, "header has no usable kid"),
    ("kid_empty", {"kid": ""}, "header has no usable kid"),
    ("jku", {"jku": "https://attacker.example/jwks"}, "header parameter jku is not accepted"),
    ("x5u", {"x5u": "https://attacker.example/cert.pem"}, "header parameter x5u is not accepted"),
    ("jwk", {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}, "header parameter jwk is not accepted"),
    ("typ_access_token", {"typ": "at+jwt"}, "is not a workload token's"),
    ("typ_task_token", {"typ": "txntoken+jwt"}, "is not a workload token's"),
    ("typ_attestation", {"typ": "oauth-client-attestation+jwt"}, "is not a workload token's"),
]


@pytest.mark.parametrize(("case", "header", "says"), HEADER_ATTACKS, ids=[c[0] for c in HEADER_ATTACKS])
async def test_rfc8725_3_10_headers_never_choose_a_key_or_a_kind(cluster_a: Issuer, case: str,
                                                                 header: dict[str, Any], says: str) -> None:
    await refused(kubernetes(cluster_a), cluster_a.sign(sa_claims(cluster_a), header=header), says)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt"])
async def test_gh_item_17_a_plain_jwt_typ_is_accepted(github: Issuer, typ: str) -> None:
    assert (await oidc(github).verify(github.sign(gh_claims(), header={"typ": typ}), now=NOW)).id == IMMUTABLE_SUB


async def test_deputy_signature_checks_are_cached_until_exp_and_time_still_runs_every_time(
        cluster_a: Issuer) -> None:
    """SignatureCache: the proof is kept, the verdict is not (an expired token is refused from the cache)."""
    verifier = kubernetes(cluster_a)
    token = cluster_a.sign(sa_claims(cluster_a, exp=NOW + 600))
    first = await verifier.verify(token, now=NOW)
    assert await verifier.verify(token, now=NOW + 1) == first
    with pytest.raises(WorkloadTokenError, match="expired"):
        await verifier.verify(token, now=NOW + 700)


# --- The workload's id ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["spiffe://example.org/agents/mail", "SPIFFE://example.org/agents/mail",
                                 "spiffe:example.org"])
async def test_reference_cross_kind_an_oidc_token_whose_sub_is_a_spiffe_id_is_refused(github: Issuer,
                                                                                       sub: str) -> None:
    """Only a JWT-SVID may name a SPIFFE ID: grants are keyed by id, so an OIDC issuer must not claim one."""
    await refused(oidc(github), github.sign(gh_claims(sub=sub)), "sub claim is a SPIFFE ID")


async def test_reference_cross_kind_a_kubernetes_token_whose_sub_is_a_spiffe_id_is_refused(
        cluster_a: Issuer) -> None:
    token = cluster_a.sign(sa_claims(cluster_a, sub="spiffe://example.org/ns/agents/sa/mail"))
    await refused(kubernetes(cluster_a), token, "sub claim is a SPIFFE ID")


async def test_deputy_a_spiffe_id_in_the_configured_id_claim_is_refused_too(github: Issuer) -> None:
    token = github.sign(gh_claims(workload="spiffe://example.org/agents/mail"))
    await refused(oidc(github, id_claim="workload"), token, "workload claim is a SPIFFE ID")


BAD_IDS: list[tuple[str, Any, str]] = [
    ("missing", None, "missing or not a non-empty string"),
    ("empty", "", "missing or not a non-empty string"),
    ("a_number", 2002, "missing or not a non-empty string"),
    ("a_list", ["a"], "missing or not a non-empty string"),
    ("a_control_character", "octo\u0007repo", "is longer than 2048 characters or holds a control character"),
    ("too_long", "r" * 2049, "is longer than 2048 characters or holds a control character"),
]


@pytest.mark.parametrize(("case", "value", "says"), BAD_IDS, ids=[c[0] for c in BAD_IDS])
async def test_deputy_the_id_claim_is_a_plain_non_empty_string(github: Issuer, case: str, value: Any,
                                                                says: str) -> None:
    token = github.sign(gh_claims(workload=value))
    await refused(oidc(github, id_claim="workload"), token, f"workload claim (the workload's id) {says}")


async def test_deputy_id_claim_names_the_workload_by_another_claim(github: Issuer) -> None:
    actor = await oidc(github, id_claim="job_workflow_ref").verify(github.sign(gh_claims()), now=NOW)
    assert actor.id == "octo-org/octo-repo/.github/workflows/agent.yml@refs/heads/main"
    assert actor.claims["sub"] == IMMUTABLE_SUB


# --- GitHub Actions ---------------------------------------------------------------------------------------


async def test_gh_item_17_a_token_requested_for_deputy_is_an_oidc_actor(github: Issuer) -> None:
    actor = await oidc(github).verify(github.sign(gh_claims(), header={"typ": "JWT"}), now=NOW)
    assert (actor.id, actor.kind, actor.domain) == (IMMUTABLE_SUB, "oidc", GITHUB)
    assert {k: actor.claims[k] for k in ("repository_id", "runner_environment", "job_workflow_ref")} == {
        "repository_id": "2002", "runner_environment": "github-hosted",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/agent.yml@refs/heads/main"}
    assert actor_claim((actor.ref,)) == {"sub": IMMUTABLE_SUB, "iss": GITHUB}


async def test_gh_item_17_the_default_owner_url_aud_is_refused(github: Issuer) -> None:
    await refused(oidc(github), github.sign(gh_claims(aud=OWNER_URL)), f"aud does not include {DEPUTY}")


async def test_gh_item_21_the_old_format_sub_is_another_id_than_the_immutable_one(github: Issuer) -> None:
    """The verifier names the workload exactly as signed: grants keyed by the immutable subject
    (`repo:OWNER@ID/REPO@ID:...`) never match the name-only form a recycled repository name could get."""
    old = await oidc(github).verify(github.sign(gh_claims(sub=OLD_SUB)), now=NOW)
    new = await oidc(github).verify(github.sign(gh_claims()), now=NOW)
    assert (old.id, new.id) == (OLD_SUB, IMMUTABLE_SUB) and old.ref != new.ref


async def test_gh_item_20_a_pull_request_sub_is_its_own_id(github: Issuer) -> None:
    pr = await oidc(github).verify(github.sign(gh_claims(sub="repo:octo-org/octo-repo:pull_request")), now=NOW)
    assert pr.id == "repo:octo-org/octo-repo:pull_request"  # grants keyed by the environment's sub miss it


async def test_deputy_a_github_token_is_refused_by_a_kubernetes_issuer_entry(github: Issuer) -> None:
    """A kind = "kubernetes" entry adds the service-account rules; an OIDC token fails them."""
    await refused(kubernetes(github), github.sign(gh_claims()), "sub is not system:serviceaccount:")


# --- Cross-kind routing: one token type, many issuers ----------------------------------------------------


@pytest.fixture(scope="module")
def domain_key() -> SigningKey:
    return SigningKey.generate("ES256")


def routed(cluster: Issuer, domain_key: SigningKey) -> WorkloadVerifiers:
    bundle = StaticKeys(parse_key_set({"keys": [{**domain_key.public_jwk, "use": "jwt-svid"}]},
                                      allowed=SVID_ALGORITHMS, use="jwt-svid"))
    return WorkloadVerifiers(spiffe=JwtSvidVerifier({"example.org": bundle}, audience=DEPUTY),
                             by_issuer={cluster.name: kubernetes(cluster)})


def svid(domain_key: SigningKey, **claims: Any) -> str:
    body = {"sub": "spiffe://example.org/agents/mail", "aud": [DEPUTY], "iat": NOW, "exp": NOW + 300, **claims}
    return jwt.encode(body, domain_key.private_key, algorithm="ES256", headers={"kid": domain_key.kid, "typ": "JWT"})


async def test_reference_cross_kind_a_jwt_svid_with_a_kubernetes_iss_goes_to_that_issuer_and_is_refused(
        cluster_a: Issuer, domain_key: SigningKey) -> None:
    verifiers = routed(cluster_a, domain_key)
    assert (await verifiers.verify(svid(domain_key), now=NOW)).kind == "spiffe"  # the same SVID without iss
    with pytest.raises(WorkloadTokenError, match="no trusted key with kid"):  # never retried as a JWT-SVID
        await verifiers.verify(svid(domain_key, iss=CLUSTER_A), now=NOW)


async def test_reference_cross_kind_a_jwt_svid_signed_by_the_cluster_key_is_still_refused(
        cluster_a: Issuer, domain_key: SigningKey) -> None:
    """Even signed with the cluster's own key, a token naming a SPIFFE ID is refused."""
    forged = cluster_a.sign({"sub": "spiffe://example.org/agents/mail", "aud": [DEPUTY], "iss": CLUSTER_A,
                             "iat": NOW, "exp": NOW + 300})
    with pytest.raises(WorkloadTokenError, match="sub claim is a SPIFFE ID"):
        await routed(cluster_a, domain_key).verify(forged, now=NOW)


async def test_reference_cross_kind_a_spire_svid_with_another_iss_stays_a_jwt_svid(
        cluster_a: Issuer, domain_key: SigningKey) -> None:
    """A SPIRE OIDC discovery provider gives JWT-SVIDs an `iss`: one that is no configured workload issuer
    leaves the SVID to its trust domain's bundle."""
    actor = await routed(cluster_a, domain_key).verify(svid(domain_key, iss="https://oidc.example.org"), now=NOW)
    assert (actor.kind, actor.domain) == ("spiffe", "example.org")


async def test_deputy_a_token_of_an_unconfigured_issuer_is_refused_by_name(
        cluster_a: Issuer, cluster_b: Issuer, domain_key: SigningKey) -> None:
    token = cluster_b.sign(sa_claims(cluster_b))
    with pytest.raises(TokenError, match=f"iss '{CLUSTER_B}' is not a configured workload issuer"):
        await routed(cluster_a, domain_key).verify(token, now=NOW)
    http_iss = cluster_a.sign(sa_claims(cluster_a, iss=CLUSTER_A.replace("https://", "http://")))
    with pytest.raises(TokenError, match="is not a configured workload issuer"):
        await routed(cluster_a, domain_key).verify(http_iss, now=NOW)


def test_reference_iss_over_http_is_refused_in_the_configuration() -> None:
    """A workload issuer over plain http is a configuration error (loopback aside, for development)."""
    document = {"workload_issuers": [{"issuer": "http://kubernetes.default.svc.cluster.local",
                                      "discovery": True, "kind": "kubernetes"}]}
    with pytest.raises(ConfigError, match=r"workload_issuers\[0\]\.issuer: must use https"):
        parse_settings(document, base=Path("."))
