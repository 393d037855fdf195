"""The token endpoint and its four token-exchange flows, in process, with fakes only at the seams.

Fakes (tests/delegation/fakes.py): the actor and user verifiers (chosen identities, or `TokenError`), the
store slices the flows write (`TaskRecords` + `AuditLog`, told when to fail), and the policy engine (a
chosen `Decision`, every `PolicyInput` kept). Real: the form parsing, the resources, the `Signer` with a
generated key, and the `OwnTokenVerifier` that checks the task tokens the flows mint.

Every refusal is checked for its class, code, description, one refused audit event and nothing written;
every grant for one granted event carrying the minted token's `jti`, its task and the granted scope.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pytest

from delegation.flows import ExchangeSteps, Lifetimes, token_exchange_grant
from delegation.flows.delegate import Delegate
from delegation.flows.one_shot import OneShotAccess
from delegation.flows.open_task import OpenTask
from delegation.flows.task_access import TaskAccess
from delegation.policy import Decision, PolicyInput
from delegation.records import BLOCKED, CredentialRevoked, StoreError, TaskEnded
from delegation.resources import Resource, Resources
from delegation.tasks import COMPLETED, REVOKED, Task
from delegation.token_endpoint import Grant, TokenEndpoint
from tests.delegation.fakes import FakeActors, FakePolicy, FakeStore, FakeUsers, Write
from token_exchange import rfc8693
from token_exchange.actors import VerifiedActor
from token_exchange.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from token_exchange.keys import StaticKeys, parse_key_set
from token_exchange.rfc6749 import FormParams, TokenRequest
from token_exchange.rfc8693 import ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TYPE, TXN_TOKEN_TYPE, TokenResponse
from token_exchange.rfc9068 import ACCESS_TOKEN_JWT_TYPE, Signer
from token_exchange.scope import Scope
from token_exchange.signing import SIGNING_ALGORITHMS, SigningKey
from token_exchange.txn_tokens import TASK_TOKEN_JWT_TYPE, OwnTokenVerifier
from token_exchange.user_tokens import VerifiedSubject

NOW = 1_800_000_000
ISSUER = "https://deputy.example.com"
IDP = "https://idp.example.com"
MAIL, CALENDAR, FILES = "https://mail.example.com", "https://calendar.example.com", "https://files.example.com"
AGENT, HELPER, OTHER = (f"spiffe://example.org/agents/{name}" for name in ("mail", "helper", "other"))
LIFETIMES = Lifetimes(default_ttl=300, max_ttl=900, task_default_ttl=900, task_max_ttl=3600)
RESOURCES = [Resource(MAIL, Scope(frozenset({"mail.read", "mail.send"})), max_ttl=300),
             Resource(CALENDAR, Scope(frozenset({"calendar.read"})), max_ttl=120),
             Resource(FILES, Scope(frozenset({"files.read"})), max_ttl=3600)]


def agent(spiffe_id: str, *, iat: int | None = NOW - 60) -> VerifiedActor:
    """A verified SPIFFE agent; its claims hold read-only and tuple values, as a real verifier's may."""
    claims: dict[str, Any] = {"sub": spiffe_id, "aud": (ISSUER,), "exp": NOW + 300,
                              "x-attested": MappingProxyType({"node": "n1", "selectors": ("k8s:ns:mail",)})}
    if iat is not None:
        claims["iat"] = iat
    return VerifiedActor(spiffe_id, "spiffe", "example.org", NOW + 300, MappingProxyType(claims))


def user(sub: str = "alice", *, scope: str = "mail.read mail.send calendar.read files.read",
         expires_at: int = NOW + 3600, iat: int = NOW - 60) -> VerifiedSubject:
    claims = {"iss": IDP, "sub": sub, "scope": scope, "iat": iat, "exp": expires_at,
              "may_act": MappingProxyType({"sub": AGENT})}
    return VerifiedSubject(IDP, sub, Scope.from_claim(scope), expires_at, MappingProxyType(claims))


KUBERNETES_AGENT = VerifiedActor("system:serviceaccount:mail:bot", "kubernetes", "https://k8s.example.com",
                                 NOW + 300, MappingProxyType({"sub": "system:serviceaccount:mail:bot", "iat": NOW}))
ACTORS = {"agent-token": agent(AGENT), "helper-token": agent(HELPER), "other-token": agent(OTHER),
          "agent-without-iat": agent(AGENT, iat=None), "k8s-token": KUBERNETES_AGENT}
USERS = {"user-token": user(), "mail-only-user": user(scope="mail.read"),
         "expiring-user": user(expires_at=NOW + 50), "expired-user": user(expires_at=NOW)}
BASE_FORM = {"grant_type": rfc8693.GRANT_TYPE, "subject_token": "user-token", "subject_token_type": ACCESS_TOKEN_TYPE,
             "actor_token": "agent-token", "actor_token_type": JWT_TYPE, "resource": MAIL, "scope": "mail.read"}
CODES: dict[type[OAuthError], str] = {
    InvalidRequest: "invalid_request", InvalidScope: "invalid_scope", InvalidTarget: "invalid_target",
    UnauthorizedClient: "unauthorized_client", InvalidGrant: "invalid_grant", InvalidClient: "invalid_client",
    UnsupportedGrantType: "unsupported_grant_type", TemporarilyUnavailable: "temporarily_unavailable",
}


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.generate("ES256")


@dataclass
class Granted:
    response: TokenResponse
    write: Write
    claims: Mapping[str, Any]  # of the minted token, verified with Deputy's own keys

    @property
    def task(self) -> Task:
        assert self.write.task is not None
        return self.write.task


@dataclass
class World:
    steps: ExchangeSteps
    endpoint: TokenEndpoint
    actors: FakeActors
    users: FakeUsers
    store: FakeStore
    policy: FakePolicy
    own: OwnTokenVerifier
    now: int = NOW  # the time every request is made at

    async def post(self, **changes: str | None) -> TokenResponse:
        form = {**BASE_FORM, **changes}
        pairs = tuple((name, value) for name, value in form.items() if value is not None)
        return await self.endpoint.handle(TokenRequest(pairs), now=self.now)

    async def refused(self, cls: type[OAuthError], names: str, /, **changes: str | None) -> OAuthError:
        """The request raises exactly `cls`, naming `names`; one refused audit event; nothing written."""
        writes, appended = len(self.store.writes), len(self.store.appended)
        with pytest.raises(OAuthError) as info:
            await self.post(**changes)
        error = info.value
        assert type(error) is cls, repr(error)
        assert error.error == CODES[cls]
        assert names in error.description, error.description
        assert self.store.writes[writes:] == []
        events = self.store.appended[appended:]
        assert [(e.outcome, e.error) for e in events] == [("refused", CODES[cls])]
        return error

    async def granted(self, **changes: str | None) -> Granted:
        """The request is granted: one write carrying one granted audit event that matches the minted token."""
        writes, appended, now = len(self.store.writes), len(self.store.appended), self.now
        response = await self.post(**changes)
        assert self.store.appended[appended:] == []  # a grant's event goes with its write, not on its own
        new = self.store.writes[writes:]
        assert len(new) == 1
        write = new[0]
        if response.issued_token_type == TXN_TOKEN_TYPE:
            verified = await self.own.verify(response.access_token, typ=TASK_TOKEN_JWT_TYPE, now=now, audience=ISSUER)
        else:
            verified = await self.own.verify(response.access_token, typ=ACCESS_TOKEN_JWT_TYPE, now=now)
        claims = verified.claims
        event = write.event
        assert (event.outcome, event.error) == ("granted", None)
        assert event.jti == verified.jti == claims["jti"]
        assert event.task_id == dict(response.extra)["task_id"] == claims["txn"]
        assert event.granted_scope == str(response.scope) == claims["scope"]
        if write.token is not None:
            assert (write.token.jti, write.token.task_id, write.token.scope) == (event.jti, event.task_id,
                                                                                 event.granted_scope)
        return Granted(response, write, claims)

    async def open_task(self, **changes: str | None) -> Granted:
        return await self.granted(requested_token_type=TXN_TOKEN_TYPE, **changes)

    def last_query(self) -> dict[str, Any]:
        assert self.policy.queries, "the policy was never asked"
        return self.policy.queries[-1].as_json()


@pytest.fixture
def world(signing_key: SigningKey) -> World:
    return make_world(signing_key)


def make_world(signing_key: SigningKey, policy: FakePolicy | None = None) -> World:
    actors, users, store, policy = FakeActors(ACTORS), FakeUsers(USERS), FakeStore(), policy or FakePolicy()
    own_keys = StaticKeys(parse_key_set({"keys": [signing_key.public_jwk]}, allowed=frozenset(SIGNING_ALGORITHMS)))
    own = OwnTokenVerifier(own_keys, issuer=ISSUER, allowed=frozenset(SIGNING_ALGORITHMS))
    steps = ExchangeSteps(actors, users, own, Resources(RESOURCES), policy,
                          Signer(issuer=ISSUER, key=signing_key), store, LIFETIMES)
    endpoint = TokenEndpoint([token_exchange_grant(steps)], audit=store, policy=policy)
    return World(steps, endpoint, actors, users, store, policy, own)


def with_policy(world: World, decision: Decision) -> World:
    world.policy.decision = decision
    return world


def task_token_form(granted: Granted, **changes: str | None) -> dict[str, str | None]:
    return {"subject_token": granted.response.access_token, "subject_token_type": TXN_TOKEN_TYPE, **changes}


# --- the dispatcher: grant_type, then the flow by (subject_token_type, requested_token_type) -------------


@pytest.mark.parametrize(("subject_type", "requested_type", "flow"), [
    (ACCESS_TOKEN_TYPE, ACCESS_TOKEN_TYPE, OneShotAccess),
    (JWT_TYPE, ACCESS_TOKEN_TYPE, OneShotAccess),
    (ID_TOKEN_TYPE, ACCESS_TOKEN_TYPE, OneShotAccess),
    (ACCESS_TOKEN_TYPE, TXN_TOKEN_TYPE, OpenTask),
    (JWT_TYPE, TXN_TOKEN_TYPE, OpenTask),
    (TXN_TOKEN_TYPE, ACCESS_TOKEN_TYPE, TaskAccess),
    (TXN_TOKEN_TYPE, TXN_TOKEN_TYPE, Delegate),
])
def test_rfc8693_2_1_exactly_one_flow_handles_each_pair_of_token_types(
        world: World, subject_type: str, requested_type: str, flow: type) -> None:
    form = {**BASE_FORM, "subject_token_type": subject_type, "requested_token_type": requested_type}
    exchange = rfc8693.parse(FormParams.parse(form.items()))
    handling = [f for f in token_exchange_grant(world.steps).flows if f.can_handle(exchange)]
    assert [type(f) for f in handling] == [flow]


async def test_rfc8693_2_1_a_user_token_for_an_access_token_is_a_one_shot_exchange(world: World) -> None:
    granted = await world.granted()
    assert (granted.response.issued_token_type, granted.response.token_type) == (ACCESS_TOKEN_TYPE, "Bearer")
    assert (granted.write.event.action, world.users.calls) == ("exchange", ["user-token"])
    assert granted.task.implicit  # recorded with its token, ending with it


async def test_txn_tokens_11_a_user_token_for_a_txn_token_opens_a_task(world: World) -> None:
    granted = await world.open_task()
    assert (granted.response.issued_token_type, granted.response.token_type) == (TXN_TOKEN_TYPE, "N_A")
    assert (granted.write.event.action, world.users.calls) == ("open_task", ["user-token"])
    assert granted.write.token is None and not granted.task.implicit


async def test_txn_tokens_12_a_task_token_for_an_access_token_is_access_within_the_task(world: World) -> None:
    opened = await world.open_task()
    granted = await world.granted(**task_token_form(opened))
    assert granted.response.issued_token_type == ACCESS_TOKEN_TYPE
    assert (granted.write.event.action, world.users.calls) == ("exchange", ["user-token"])  # no user token now
    assert granted.write.task is None and granted.claims["txn"] == opened.task.id


async def test_txn_tokens_13_15_a_task_token_for_a_txn_token_delegates(world: World) -> None:
    opened = await world.open_task()
    granted = await world.granted(**task_token_form(opened, actor_token="helper-token",
                                                    requested_token_type=TXN_TOKEN_TYPE))
    assert (granted.response.issued_token_type, granted.write.event.action) == (TXN_TOKEN_TYPE, "delegate")
    assert granted.task.parent_id == opened.task.id


async def test_rfc6749_4_5_a_missing_grant_type_is_invalid_request_before_anything_is_verified(world: World) -> None:
    await world.refused(InvalidRequest, "grant_type is required", grant_type=None)
    assert (world.actors.calls, world.users.calls, world.policy.queries) == ([], [], [])


@pytest.mark.parametrize("grant_type", ["password", "client_credentials", "authorization_code",
                                        "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                        rfc8693.GRANT_TYPE.upper(), rfc8693.GRANT_TYPE + " "])
async def test_rfc6749_5_2_an_unknown_grant_type_is_unsupported_grant_type(world: World, grant_type: str) -> None:
    error = await world.refused(UnsupportedGrantType, rfc8693.GRANT_TYPE, grant_type=grant_type)
    assert error.status == 400
    assert world.actors.calls == []


def test_rfc8414_2_the_endpoint_lists_its_grant_types(world: World) -> None:
    assert world.endpoint.grant_types == [rfc8693.GRANT_TYPE]


async def test_deputy_a_request_no_flow_accepts_is_refused_and_audited(signing_key: SigningKey) -> None:
    world = make_world(signing_key)
    world.endpoint = TokenEndpoint([Grant(rfc8693.GRANT_TYPE, rfc8693.parse, ())], audit=world.store,
                                   policy=world.policy)
    await world.refused(InvalidRequest, "no flow accepts this subject_token_type and requested_token_type")


async def test_rfc6749_3_2_a_form_that_cannot_be_parsed_is_refused_and_audited(world: World) -> None:
    pairs = (*BASE_FORM.items(), ("scope", "mail.send"))
    with pytest.raises(InvalidRequest, match="'scope' is repeated"):
        await world.endpoint.handle(TokenRequest(pairs), now=NOW)
    assert [(e.action, e.outcome, e.error) for e in world.store.appended] == [
        ("exchange", "refused", "invalid_request")]
    assert world.actors.calls == []


async def test_deputy_a_refusal_whose_audit_write_fails_is_still_the_refusal(world: World) -> None:
    world.store.fail("append_audit", StoreError("disk full"))
    with pytest.raises(InvalidTarget):
        await world.post(resource="https://unknown.example.com")


async def test_deputy_refusals_before_the_form_is_read_are_audited(world: World) -> None:
    await world.endpoint.refuse(InvalidRequest("the body must be application/x-www-form-urlencoded"), now=NOW)
    [event] = world.store.appended
    assert (event.outcome, event.error, event.at, event.policy_revision) == ("refused", "invalid_request", NOW,
                                                                            "rev-fake")
    assert event.reasons == ("the body must be application/x-www-form-urlencoded",)


# --- the order of checks: actor, subject, credentials, target, scope, then the policy ------------------


@pytest.mark.parametrize("flow", ["one_shot", "open_task", "task_access", "delegate"])
async def test_rfc8693_2_2_2_a_bad_actor_token_is_reported_before_a_bad_subject_token(world: World, flow: str) -> None:
    changes: dict[str, str | None] = {"actor_token": "forged", "subject_token": "forged-too"}
    if flow == "open_task":
        changes["requested_token_type"] = TXN_TOKEN_TYPE
    if flow in ("task_access", "delegate"):
        changes["subject_token_type"] = TXN_TOKEN_TYPE
        changes["requested_token_type"] = TXN_TOKEN_TYPE if flow == "delegate" else None
    await world.refused(InvalidRequest, "actor_token rejected: signature rejected", **changes)
    assert (world.users.calls, world.store.cutoff_queries, world.policy.queries) == ([], [], [])


async def test_rfc8693_2_2_2_a_bad_subject_token_is_invalid_request_naming_it(world: World) -> None:
    await world.refused(InvalidRequest, "subject_token rejected: issuer is not a configured subject issuer",
                        subject_token="forged")
    assert world.policy.queries == []


@pytest.mark.parametrize("subject_token", ["not-a-jwt", "a.b.c"])
async def test_txn_tokens_12_a_bad_task_token_is_invalid_request_naming_the_subject_token(
        world: World, subject_token: str) -> None:
    await world.refused(InvalidRequest, "subject_token rejected", subject_token=subject_token,
                        subject_token_type=TXN_TOKEN_TYPE)


async def test_rfc8693_4_3_a_client_id_must_name_the_verified_agent(world: World) -> None:
    await world.refused(UnauthorizedClient, "client_id does not match", client_id=OTHER)
    assert world.users.calls == []  # refused before the user token is looked at
    assert (await world.granted(client_id=AGENT)).claims["client_id"] == AGENT


@pytest.mark.parametrize(("cutoffs", "actor_token", "message"), [
    ((NOW - 60, None), "agent-token", "actor_token rejected: issued before an admin revoked this agent"),
    ((NOW - 1, None), "agent-token", "actor_token rejected: issued before an admin revoked this agent"),
    ((NOW - 3600, None), "agent-without-iat", "actor_token rejected: issued before an admin revoked this agent"),
    ((None, NOW - 60), "agent-token", "subject_token rejected: issued before an admin revoked this user"),
])
async def test_deputy_credentials_issued_before_an_admin_revocation_are_refused_before_the_policy(
        world: World, cutoffs: tuple[int | None, int | None], actor_token: str, message: str) -> None:
    world.store.agent_cutoff, world.store.user_cutoff = cutoffs
    await world.refused(InvalidRequest, message, actor_token=actor_token)
    assert world.store.cutoff_queries == [(ACTORS[actor_token].ref, (IDP, "alice"))]
    assert world.policy.queries == []


@pytest.mark.parametrize(("cutoffs", "error", "message"), [
    ((BLOCKED + NOW + 60, None), UnauthorizedClient, "actor_token rejected: an admin blocked this agent until "),
    ((None, BLOCKED + NOW + 60), InvalidGrant, "subject_token rejected: an admin blocked this user until "),
])
async def test_issue11_3_a_blocked_party_is_refused_whatever_its_credentials_before_the_policy(
        world: World, cutoffs: tuple[int | None, int | None], error: type[OAuthError], message: str) -> None:
    world.store.agent_cutoff, world.store.user_cutoff = cutoffs
    await world.refused(error, message)
    assert world.policy.queries == []


async def test_deputy_credentials_issued_after_the_cutoff_are_accepted(world: World) -> None:
    world.store.agent_cutoff, world.store.user_cutoff = NOW - 61, NOW - 61
    granted = await world.granted()
    assert granted.write.presented.actor_issued_at == NOW - 60


@pytest.mark.parametrize(("changes", "message"), [
    ({"resource": "https://unknown.example.com"}, "resource is not a resource this gateway issues tokens for"),
    ({"resource": MAIL + "/"}, "resource is not a resource this gateway"),  # exact match only (RFC 8707)
    ({"resource": None, "audience": "mail"}, "audience is not a resource this gateway"),
    ({"resource": None}, "exactly one resource or audience is required"),
])
async def test_rfc8707_2_an_unknown_or_missing_target_is_invalid_target_before_the_policy(
        world: World, changes: dict[str, str | None], message: str) -> None:
    await world.refused(InvalidTarget, message, **changes)
    assert world.policy.queries == []


async def test_rfc8693_2_1_1_two_targets_for_one_access_token_are_invalid_target(world: World) -> None:
    pairs = (*BASE_FORM.items(), ("audience", CALENDAR))
    with pytest.raises(InvalidTarget, match="exactly one resource or audience"):
        await world.endpoint.handle(TokenRequest(pairs), now=NOW)
    assert world.policy.queries == [] and world.store.writes == []
    assert [e.audience for e in world.store.appended] == [f"{MAIL} {CALENDAR}"]


@pytest.mark.parametrize(("changes", "why"), [
    ({"scope": "mail.delete"}, "held by the user and offered by the resource"),  # nobody has it
    ({"scope": "calendar.read"}, "held by the user and offered by the resource"),  # the user's, not MAIL's
    ({"scope": "mail.send", "subject_token": "mail-only-user"}, "held by the user"),  # MAIL's, not the user's
])
async def test_rfc8693_2_2_2_scope_is_narrowed_before_the_policy_is_asked(
        world: World, changes: dict[str, str | None], why: str) -> None:
    await world.refused(InvalidScope, f"none of the requested scopes is {why}", **changes)
    assert world.policy.queries == []


# --- the policy only narrows: scope and lifetime ----------------------------------------------------------


async def test_deputy_a_policy_granting_more_scope_grants_only_what_was_wanted(world: World) -> None:
    with_policy(world, Decision(allow=True, scope=("mail.read", "mail.send", "calendar.read", "admin.everything")))
    granted = await world.granted(scope="mail.read")
    assert granted.response.scope == Scope(frozenset({"mail.read"}))
    assert granted.claims["scope"] == "mail.read" and granted.write.event.requested_scope == "mail.read"


async def test_deputy_a_policy_granting_part_of_the_request_narrows_it_and_says_so(world: World) -> None:
    with_policy(world, Decision(allow=True, scope=("mail.read",)))
    granted = await world.granted(scope="mail.read mail.send")
    assert str(granted.response.scope) == "mail.read"  # RFC 6749 §3.3: the response names the narrower scope
    assert granted.write.event.requested_scope == "mail.read mail.send"


async def test_deputy_a_policy_allowing_none_of_the_wanted_scopes_is_invalid_scope(world: World) -> None:
    with_policy(world, Decision(allow=True, scope=("mail.send", "bogus"), reasons=("only sending today",)))
    await world.refused(InvalidScope, "policy grants none of the requested scopes: only sending today")
    assert world.store.appended[-1].reasons == ("only sending today",)


@pytest.mark.parametrize(("policy_ttl", "changes", "expected"), [
    (10_000, {}, 300),  # the resource's max_ttl binds
    (60, {}, 60),  # the policy may shorten
    (None, {}, 300),  # the default
    (None, {"resource": CALENDAR, "scope": "calendar.read"}, 120),  # the resource's max_ttl under the default
    (5_000, {"resource": FILES, "scope": "files.read"}, 900),  # the gateway's max_ttl
    (10_000, {"subject_token": "expiring-user"}, 50),  # never past the user token
])
async def test_deputy_a_policy_lifetime_only_shortens(world: World, policy_ttl: int | None,
                                                      changes: dict[str, str | None], expected: int) -> None:
    with_policy(world, Decision(allow=True, scope=("mail.read", "calendar.read", "files.read"), ttl=policy_ttl))
    granted = await world.granted(**changes)
    assert granted.response.expires_in == expected
    assert (granted.claims["iat"], granted.claims["exp"]) == (NOW, NOW + expected)
    assert granted.write.token is not None and granted.write.token.expires_at == NOW + expected


async def test_rfc8693_2_2_2_a_user_token_at_its_expiry_is_refused(world: World) -> None:
    await world.refused(InvalidRequest, "subject_token rejected: expired", subject_token="expired-user")


POLICY_ERRORS = [
    ("invalid_request", InvalidRequest), ("invalid_scope", InvalidScope), ("invalid_target", InvalidTarget),
    ("unauthorized_client", UnauthorizedClient), ("invalid_grant", InvalidGrant),
    ("access_denied", UnauthorizedClient), ("invalid_client", UnauthorizedClient),  # no 401 from a policy
    ("temporarily_unavailable", UnauthorizedClient), ("server_error", UnauthorizedClient),
    ("", UnauthorizedClient), (None, UnauthorizedClient),
]


@pytest.mark.parametrize(("code", "cls"), POLICY_ERRORS)
async def test_deputy_a_deny_maps_the_policys_error_code_and_any_other_to_unauthorized_client(
        world: World, code: str | None, cls: type[OAuthError]) -> None:
    with_policy(world, Decision(allow=False, reasons=("user has not delegated to this agent",), error=code))
    error = await world.refused(cls, "policy refused: user has not delegated to this agent")
    assert error.status == 400
    event = world.store.appended[-1]
    assert (event.reasons, event.decision_id, event.policy_revision) == (
        ("user has not delegated to this agent",), "decision-fake", "rev-fake")
    assert (event.agent, event.user_issuer, event.user_subject) == (AGENT, IDP, "alice")


async def test_deputy_a_deny_without_reasons_says_so(world: World) -> None:
    with_policy(world, Decision(allow=False))
    await world.refused(UnauthorizedClient, "policy refused: no reason given")


# --- store failures -----------------------------------------------------------------------------------

STORE_FAILURES = [
    (StoreError("database is locked"), TemporarilyUnavailable, "the gateway could not reach its store"),
    (TaskEnded("task t ended"), InvalidRequest, "subject_token rejected: the task has ended"),
    (CredentialRevoked("actor"), InvalidRequest, "actor_token rejected: issued before an admin revoked this agent"),
    (CredentialRevoked("user"), InvalidRequest, "subject_token rejected: issued before an admin revoked this user"),
]


async def form_of(world: World, flow: str) -> dict[str, str | None]:
    """What a request of `flow` changes in the default form (a one-shot exchange)."""
    changes: dict[str, str | None] = {}
    if flow == "open_task":
        changes["requested_token_type"] = TXN_TOKEN_TYPE
    if flow in ("task_access", "delegate"):
        changes.update(task_token_form(await world.open_task()))
    if flow == "delegate":
        changes.update(actor_token="helper-token", requested_token_type=TXN_TOKEN_TYPE)
    return changes


@pytest.mark.parametrize(("failure", "cls", "message"), STORE_FAILURES)
@pytest.mark.parametrize("flow", ["one_shot", "open_task", "task_access", "delegate"])
async def test_deputy_a_write_that_fails_issues_nothing_and_is_refused_as_it_fits(
        world: World, flow: str, failure: Exception, cls: type[OAuthError], message: str) -> None:
    changes = await form_of(world, flow)
    world.store.fail("record_task" if flow in ("open_task", "delegate") else "record_grant", failure)
    error = await world.refused(cls, message, **changes)
    assert error.status == (503 if cls is TemporarilyUnavailable else 400)


@pytest.mark.parametrize("flow", ["one_shot", "open_task", "task_access", "delegate"])
async def test_issue9_a_gateway_out_of_sync_with_revocations_mints_nothing(world: World, flow: str) -> None:
    changes = await form_of(world, flow)
    writes = len(world.store.writes)
    world.store.sync_problem = "lost its PostgreSQL LISTEN connection"
    error = await world.refused(TemporarilyUnavailable, "cannot confirm its revocation state (lost its PostgreSQL"
                                " LISTEN connection); nothing was issued", **changes)
    assert (error.status, len(world.store.writes)) == (503, writes)
    world.store.sync_problem = None
    await world.post(**changes)  # back in sync: served again


@pytest.mark.parametrize("method", ["cutoffs", "task"])
async def test_deputy_a_store_that_cannot_be_read_is_temporarily_unavailable(world: World, method: str) -> None:
    opened = await world.open_task()
    world.store.fail(method, StoreError("connection refused"))
    error = await world.refused(TemporarilyUnavailable, "nothing was issued", **task_token_form(opened))
    assert (error.status, error.error) == (503, "temporarily_unavailable")


# --- audit: one event per decision ---------------------------------------------------------------------


async def test_deputy_a_grant_is_audited_once_with_what_was_issued(world: World) -> None:
    granted = await world.granted(scope="mail.read mail.send")
    assert world.store.events == [granted.write.event]
    event = granted.write.event
    assert (event.action, event.agent, event.user_issuer, event.user_subject) == ("exchange", AGENT, IDP, "alice")
    assert (event.audience, event.requested_scope, event.granted_scope) == (MAIL, "mail.read mail.send",
                                                                            "mail.read mail.send")
    assert (event.at, event.reasons, event.policy_revision, event.decision_id) == (
        NOW, ("fake allows",), "rev-fake", "decision-fake")
    record = granted.write.token
    assert record is not None
    assert (record.agent, record.agent_domain, record.user_subject, record.audience) == (
        AGENT, "example.org", "alice", MAIL)


async def test_deputy_every_outcome_of_a_session_is_audited_exactly_once(world: World) -> None:
    outcomes: list[str] = []
    for changes in ({"actor_token": "x"}, {}, {"scope": "mail.delete"}, {"requested_token_type": TXN_TOKEN_TYPE},
                    {"grant_type": "password"}):
        try:
            await world.post(**changes)
            outcomes.append("granted")
        except OAuthError as error:
            outcomes.append(error.error)
    assert outcomes == ["invalid_request", "granted", "invalid_scope", "granted", "unsupported_grant_type"]
    assert sorted(e.error or e.outcome for e in world.store.events) == sorted(outcomes)
    assert len({e.decision_id for e in world.store.events if e.outcome == "refused"}) == 3


# --- OpenTask -------------------------------------------------------------------------------------------


async def test_txn_tokens_9_opening_a_task_records_it_and_mints_its_task_token(world: World) -> None:
    granted = await world.open_task(scope="mail.read calendar.read", audience=CALENDAR, purpose="triage the inbox",
                                    request_details='{"ticket":"T-1"}', request_context='{"ip":"192.0.2.1"}')
    task, claims = granted.task, granted.claims
    assert (task.chain, task.parent_id, task.root_id) == ((ACTORS["agent-token"].ref,), None, task.id)
    assert (task.user_issuer, task.user_subject) == (IDP, "alice")
    assert task.scope == Scope(frozenset({"mail.read", "calendar.read"}))
    assert (task.audiences, task.deadline, task.created_at) == ((MAIL, CALENDAR), NOW + 900, NOW)
    assert (task.purpose, dict(task.context.details), dict(task.context.environment)) == (
        "triage the inbox", {"ticket": "T-1"}, {"ip": "192.0.2.1"})
    assert granted.response.expires_in == 900
    assert (claims["aud"], claims["sub"], claims["txn"], claims["req_wl"]) == (ISSUER, "alice", task.id, AGENT)
    assert (claims["iat"], claims["exp"], claims["act"]) == (NOW, NOW + 900, {"sub": AGENT})
    assert (claims["tctx"], claims["rctx"]) == ({"ticket": "T-1", "purpose": "triage the inbox"},
                                                {"ip": "192.0.2.1"})
    assert granted.write.event.audience == f"{MAIL} {CALENDAR}"
    assert world.store.tasks[task.id] == task


@pytest.mark.parametrize(("task_ttl", "policy_ttl", "expected"), [
    (None, None, 900), ("60", None, 60), ("86400", None, 3600),  # capped by task_max_ttl, not refused
    (None, 120, 120), ("600", 60_000, 600),  # the policy shortens, never lengthens
])
async def test_txn_tokens_6_a_task_deadline_only_shortens(world: World, task_ttl: str | None,
                                                          policy_ttl: int | None, expected: int) -> None:
    with_policy(world, Decision(allow=True, scope=("mail.read",), ttl=policy_ttl))
    granted = await world.open_task(task_ttl=task_ttl)
    assert (granted.task.deadline, granted.claims["exp"], granted.response.expires_in) == (
        NOW + expected, NOW + expected, expected)


async def test_txn_tokens_6_no_task_is_opened_from_a_user_token_at_its_expiry(world: World) -> None:
    await world.refused(InvalidRequest, "subject_token rejected: expired", subject_token="expired-user",
                        requested_token_type=TXN_TOKEN_TYPE)
    assert world.policy.queries == []


@pytest.mark.parametrize(("changes", "message"), [
    ({"resource": None}, "a task needs at least one resource or audience"),
    ({"audience": MAIL}, "a resource is named twice"),
    ({"audience": "https://unknown.example.com"}, "audience is not a resource this gateway"),
])
async def test_rfc8707_2_a_task_needs_distinct_known_resources(world: World, changes: dict[str, str | None],
                                                               message: str) -> None:
    await world.refused(InvalidTarget, message, requested_token_type=TXN_TOKEN_TYPE, **changes)
    assert world.policy.queries == []


async def test_txn_tokens_13_6_a_task_scope_is_narrowed_before_the_policy(world: World) -> None:
    await world.refused(InvalidScope, "none of the requested scopes is held by the user and offered by the resources",
                        requested_token_type=TXN_TOKEN_TYPE, scope="calendar.read")
    assert world.policy.queries == []


async def test_txn_tokens_13_6_a_task_gets_only_the_scopes_its_resources_offer(world: World) -> None:
    granted = await world.open_task(scope="mail.read calendar.read files.read", audience=CALENDAR)
    assert granted.task.scope == Scope(frozenset({"mail.read", "calendar.read"}))


# --- TaskAccess -----------------------------------------------------------------------------------------


async def test_txn_tokens_12_an_access_token_within_a_task_is_bounded_by_the_task(world: World) -> None:
    opened = await world.open_task(scope="mail.read mail.send", task_ttl="100")
    granted = await world.granted(**task_token_form(opened, scope="mail.read"))
    assert (granted.claims["sub"], granted.claims["aud"], granted.claims["act"]) == ("alice", MAIL, {"sub": AGENT})
    assert granted.response.expires_in == 100  # the task's deadline binds before the resource's 300
    assert granted.write.token is not None and granted.write.token.task_id == opened.task.id
    assert granted.write.presented.user is None  # only the agent presented a credential
    assert world.store.cutoff_queries[-1] == (ACTORS["agent-token"].ref, None)


async def test_txn_tokens_13_12_a_task_token_presented_by_another_agent_is_refused(world: World) -> None:
    opened = await world.open_task()
    await world.refused(InvalidRequest, "subject_token rejected: the task belongs to another agent",
                        **task_token_form(opened, actor_token="helper-token"))


async def test_txn_tokens_12_a_resource_outside_the_task_is_invalid_target(world: World) -> None:
    opened = await world.open_task()
    await world.refused(InvalidTarget, "the task does not include this resource",
                        **task_token_form(opened, resource=CALENDAR, scope="calendar.read"))
    assert len(world.policy.queries) == 1  # only the opening was decided


async def test_txn_tokens_13_6_a_scope_outside_the_task_is_refused_before_the_policy(world: World) -> None:
    opened = await world.open_task(scope="mail.read")
    await world.refused(InvalidScope, "none of the requested scopes is within the task",
                        **task_token_form(opened, scope="mail.send"))
    assert len(world.policy.queries) == 1


@pytest.mark.parametrize(("state", "now", "why"), [
    (COMPLETED, NOW + 1, "the task has ended (completed)"),
    (REVOKED, NOW + 1, "the task has ended (revoked)"),
    (None, NOW + 61, "the task has ended (expired)"),  # past the deadline, within the token's leeway
    (None, NOW + 60 + 30, "subject_token rejected: expired"),  # past the leeway too: the token itself
])
async def test_txn_tokens_13_15_an_ended_task_gives_nothing(world: World, state: str | None, now: int,
                                                           why: str) -> None:
    opened = await world.open_task(task_ttl="60")
    if state is not None:
        world.store.tasks[opened.task.id] = Task(**{**_fields(opened.task), "state": state, "ended_at": NOW})
    world.now = now
    await world.refused(InvalidRequest, why, **task_token_form(opened))


def _fields(task: Task) -> dict[str, Any]:
    return {name: getattr(task, name) for name in Task.__dataclass_fields__}


async def test_txn_tokens_12_a_task_the_store_does_not_know_is_refused(world: World) -> None:
    opened = await world.open_task()
    del world.store.tasks[opened.task.id]
    await world.refused(InvalidRequest, "subject_token rejected: unknown task", **task_token_form(opened))


async def test_rfc8725_3_12_an_access_token_is_not_a_task_token(world: World) -> None:
    access = await world.granted()
    await world.refused(InvalidRequest, "subject_token rejected: not a txntoken+jwt token",
                        subject_token=access.response.access_token, subject_token_type=TXN_TOKEN_TYPE)


async def test_rfc8725_3_8_a_task_token_signed_by_another_key_is_refused(world: World) -> None:
    stranger = make_world(SigningKey.generate("ES256"))
    opened = await stranger.open_task()
    await world.refused(InvalidRequest, "subject_token rejected: no trusted key with kid",
                        **task_token_form(opened))


# --- Delegate -------------------------------------------------------------------------------------------


async def delegate(world: World, parent: Granted, **changes: str | None) -> Granted:
    return await world.granted(**task_token_form(parent, actor_token="helper-token",
                                                 requested_token_type=TXN_TOKEN_TYPE, resource=None, **changes))


async def test_txn_tokens_13_15_a_delegated_task_inherits_the_parent_and_extends_the_chain(world: World) -> None:
    parent = await world.open_task(scope="mail.read mail.send", audience=CALENDAR, purpose="triage",
                                   request_details='{"ticket":"T-1"}')
    child = await delegate(world, parent, scope="mail.read")
    task = child.task
    assert (task.parent_id, task.root_id, task.chain) == (parent.task.id, parent.task.id,
                                                          (ACTORS["agent-token"].ref, ACTORS["helper-token"].ref))
    assert (task.scope, task.audiences, task.deadline) == (Scope(frozenset({"mail.read"})), (MAIL, CALENDAR),
                                                           parent.task.deadline)
    assert (task.user_issuer, task.user_subject) == (IDP, "alice")
    assert child.claims["act"] == {"sub": HELPER, "act": {"sub": AGENT}}  # RFC 8693 §4.1: current actor outermost
    assert (child.claims["req_wl"], child.claims["txn"], child.claims["sub"]) == (HELPER, task.id, "alice")
    assert child.claims["tctx"] == {"ticket": "T-1", "purpose": "triage"}
    assert child.write.presented.user is None


@pytest.mark.parametrize("scope", ["mail.read mail.send files.read", "mail.read calendar.read"])
async def test_txn_tokens_13_15_delegation_never_widens_scope(world: World, scope: str) -> None:
    parent = await world.open_task(scope="mail.read", audience=CALENDAR)
    child = await delegate(world, parent, scope=scope)
    assert child.task.scope <= parent.task.scope
    assert child.task.scope == Scope(frozenset({"mail.read"}))


async def test_txn_tokens_13_15_delegation_with_no_scope_of_the_parent_is_refused_before_the_policy(
        world: World) -> None:
    parent = await world.open_task(scope="mail.read")
    await world.refused(InvalidScope, "none of the requested scopes is within the parent task",
                        **task_token_form(parent, actor_token="helper-token", requested_token_type=TXN_TOKEN_TYPE,
                                          resource=None, scope="mail.send"))
    assert len(world.policy.queries) == 1


async def test_txn_tokens_13_15_delegation_may_narrow_the_audiences_but_never_add_one(world: World) -> None:
    parent = await world.open_task(scope="mail.read calendar.read", audience=CALENDAR)
    narrowed = await delegate(world, parent, audience=CALENDAR, scope="calendar.read")
    assert narrowed.task.audiences == (CALENDAR,)
    await world.refused(InvalidTarget, "a delegated task cannot add resources its parent task does not have",
                        **task_token_form(parent, actor_token="helper-token", requested_token_type=TXN_TOKEN_TYPE,
                                          resource=FILES, scope="mail.read"))


@pytest.mark.parametrize(("task_ttl", "outcome"), [("100", NOW + 100), ("600", NOW + 600), ("601", None)])
async def test_txn_tokens_13_15_delegation_never_extends_the_deadline(world: World, task_ttl: str,
                                                                     outcome: int | None) -> None:
    parent = await world.open_task(task_ttl="600")
    form = task_token_form(parent, actor_token="helper-token", requested_token_type=TXN_TOKEN_TYPE, resource=None,
                           task_ttl=task_ttl)
    if outcome is None:
        await world.refused(InvalidRequest, "task_ttl would outlive the parent task", **form)
    else:
        assert (await world.granted(**form)).task.deadline == outcome


async def test_txn_tokens_13_15_a_policy_granting_more_cannot_widen_a_delegation(world: World) -> None:
    parent = await world.open_task(scope="mail.read", task_ttl="600")
    with_policy(world, Decision(allow=True, scope=("mail.read", "mail.send", "files.read"), ttl=86_400))
    child = await delegate(world, parent)
    assert (child.task.scope, child.task.deadline) == (Scope(frozenset({"mail.read"})), NOW + 600)


@pytest.mark.parametrize("path", ["back_to_the_first_agent", "to_itself", "back_into_a_longer_chain"])
async def test_txn_tokens_13_15_an_agent_already_in_the_chain_cannot_be_delegated_to_again(
        world: World, path: str) -> None:
    parent = await world.open_task()
    actor = "agent-token"
    if path == "to_itself":
        pass  # the task's own agent asks to delegate to itself
    else:
        parent = await delegate(world, parent)  # AGENT -> HELPER
        actor = "agent-token" if path == "back_to_the_first_agent" else "helper-token"
    if path == "back_into_a_longer_chain":
        parent = await world.granted(**task_token_form(parent, actor_token="other-token",
                                                       requested_token_type=TXN_TOKEN_TYPE, resource=None))
    asked = len(world.policy.queries)
    await world.refused(UnauthorizedClient, "an agent already in the delegation chain cannot be delegated to again",
                        **task_token_form(parent, actor_token=actor, requested_token_type=TXN_TOKEN_TYPE,
                                          resource=None))
    assert len(world.policy.queries) == asked


async def test_txn_tokens_13_15_request_details_may_add_to_the_parent_context_but_not_change_it(
        world: World) -> None:
    parent = await world.open_task(request_details='{"ticket":"T-1"}')
    child = await delegate(world, parent, request_details='{"ticket":"T-1","step":"2"}',
                           request_context='{"ip":"192.0.2.9"}')
    assert child.claims["tctx"] == {"ticket": "T-1", "step": "2"}
    assert child.claims["rctx"] == {"ip": "192.0.2.9"}  # rctx is this request's environment
    await world.refused(InvalidRequest, "request_details cannot change 'ticket' of the parent task",
                        **task_token_form(parent, actor_token="helper-token", requested_token_type=TXN_TOKEN_TYPE,
                                          resource=None, request_details='{"ticket":"T-2"}'))


async def test_txn_tokens_13_15_a_delegation_may_give_a_purpose_to_a_task_that_had_none(world: World) -> None:
    parent = await world.open_task()
    child = await delegate(world, parent, purpose="summarise")
    assert child.claims["tctx"] == {"purpose": "summarise"}


async def test_txn_tokens_13_15_a_delegation_cannot_change_the_parent_purpose(world: World) -> None:
    parent = await world.open_task(purpose="triage the inbox")
    form = task_token_form(parent, actor_token="helper-token", requested_token_type=TXN_TOKEN_TYPE, resource=None,
                           purpose="export every message")
    try:
        child = await world.granted(**form)
    except InvalidRequest:
        return  # refusing the change is as good as keeping the parent's purpose
    assert child.claims["tctx"]["purpose"] == "triage the inbox"


async def test_txn_tokens_13_12_the_delegated_task_is_the_sub_agents_alone(world: World) -> None:
    child = await delegate(world, await world.open_task())
    granted = await world.granted(**task_token_form(child, actor_token="helper-token"))
    assert granted.claims["act"] == {"sub": HELPER, "act": {"sub": AGENT}}
    await world.refused(InvalidRequest, "the task belongs to another agent", **task_token_form(child))


# --- PolicyInput: what the policy is asked, in plain JSON -------------------------------------------------


def _plain_json_only(value: Any, path: str = "input") -> None:
    assert type(value) in (dict, list, str, int, float, bool, type(None)), f"{path}: {type(value).__name__}"
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{path}: key {key!r}"
            _plain_json_only(item, f"{path}.{key}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _plain_json_only(item, f"{path}[{i}]")


async def _asked(world: World, flow: str) -> PolicyInput:
    if flow == "one_shot":
        await world.granted()
    elif flow == "open_task":
        await world.open_task(purpose="triage", task_ttl="600")
    elif flow == "task_access":
        await world.granted(**task_token_form(await world.open_task()))
    else:
        await delegate(world, await world.open_task(task_ttl="600"), task_ttl="300")
    return world.policy.queries[-1]


@pytest.mark.parametrize("flow", ["one_shot", "open_task", "task_access", "delegate"])
async def test_deputy_policy_input_as_json_is_plain_json(world: World, flow: str) -> None:
    query = await _asked(world, flow)
    document = query.as_json()
    _plain_json_only(document)
    assert json.loads(json.dumps(document)) == document
    actor = document["actor"]
    expected = HELPER if flow == "delegate" else AGENT
    assert (actor["id"], actor["kind"], actor["domain"], actor["sub"], actor["trust_domain"]) == (
        expected, "spiffe", "example.org", expected, "example.org")
    assert actor["claims"]["x-attested"] == {"node": "n1", "selectors": ["k8s:ns:mail"]}
    assert (document["now"], document["subject"]["iss"], document["subject"]["sub"]) == (NOW, IDP, "alice")


async def test_deputy_policy_input_for_a_one_shot_exchange(world: World) -> None:
    await world.granted(scope="mail.read mail.send")
    document = world.last_query()
    assert document["action"] == "exchange" and "task" not in document
    assert document["request"] == {"scope": ["mail.read", "mail.send"], "audience": MAIL, "audiences": [MAIL],
                                   "requested_token_type": ACCESS_TOKEN_TYPE, "dpop_bound": False}
    assert document["subject"]["scope"] == ["calendar.read", "files.read", "mail.read", "mail.send"]
    assert document["subject"]["claims"]["may_act"] == {"sub": AGENT}


async def test_deputy_policy_input_for_opening_a_task(world: World) -> None:
    await world.open_task(purpose="triage", task_ttl="600", audience=CALENDAR)
    document = world.last_query()
    assert (document["action"], document["task"]) == ("open_task", {"purpose": "triage", "deadline": NOW + 600})
    assert document["request"]["audiences"] == [MAIL, CALENDAR]


async def test_deputy_policy_input_within_a_task_describes_the_task(world: World) -> None:
    opened = await world.open_task(purpose="triage", scope="mail.read mail.send")
    await world.granted(**task_token_form(opened))
    document = world.last_query()
    assert document["action"] == "exchange"
    assert document["task"] == {"id": opened.task.id, "purpose": "triage", "chain": [AGENT], "agent": AGENT,
                                "scope": ["mail.read", "mail.send"], "audiences": [MAIL],
                                "deadline": NOW + 900, "depth": 0}
    assert document["subject"] == {"iss": IDP, "sub": "alice", "scope": ["mail.read", "mail.send"], "claims": {}}


async def test_deputy_policy_input_for_a_delegation_names_the_parent_and_the_chain(world: World) -> None:
    parent = await world.open_task(task_ttl="600")
    await delegate(world, parent, task_ttl="300")
    document = world.last_query()
    assert document["action"] == "delegate"
    assert document["task"]["id"] == parent.task.id and document["chain"] == [AGENT]
    assert document["chain_actors"] == [{"id": AGENT, "kind": "spiffe", "domain": AGENT.split("/")[2]}]
    assert document["request"]["deadline"] == NOW + 300
    assert document["request"]["audiences"] == [MAIL]


async def test_deputy_policy_input_for_a_workload_that_is_not_spiffe(world: World) -> None:
    await world.granted(actor_token="k8s-token")
    actor = world.last_query()["actor"]
    assert (actor["id"], actor["kind"], actor["domain"], actor["sub"]) == (
        KUBERNETES_AGENT.id, "kubernetes", "https://k8s.example.com", KUBERNETES_AGENT.id)
    assert "trust_domain" not in actor
