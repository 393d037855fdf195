"""Issue 8 §5: the token endpoint and its flows report to the `Observer` seam: each token request once, with
its outcome, after its audit event; each policy decision with its engine and time; each failed store call by
its operation's name (a task that ended or a credential revoked meanwhile is no store failure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from delegation.audit import AuditEvent
from delegation.flows import token_exchange_grant
from delegation.records import CredentialRevoked, StoreError, TaskEnded
from delegation.token_endpoint import TokenEndpoint
from tests.delegation.test_flows import TXN_TOKEN_TYPE, World, make_world, task_token_form
from token_exchange.errors import OAuthError
from token_exchange.signing import SigningKey


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def decided(self, event: AuditEvent) -> None:
        self.calls.append(("decided", (event.action, event.outcome, event.error)))

    def policy_decided(self, engine: str, seconds: float) -> None:
        assert 0 <= seconds < 1
        self.calls.append(("policy_decided", (engine,)))

    def policy_failed(self, engine: str, cause: str) -> None:
        self.calls.append(("policy_failed", (engine, cause)))

    def revoked(self, kind: str, count: int) -> None:
        self.calls.append(("revoked", (kind, count)))

    def store_failed(self, operation: str) -> None:
        self.calls.append(("store_failed", (operation,)))

    def tasks_open(self, count: int) -> None:
        self.calls.append(("tasks_open", (count,)))

    def take(self) -> list[tuple[str, tuple[object, ...]]]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.generate("ES256")


@pytest.fixture
def observed(signing_key: SigningKey) -> tuple[World, RecordingObserver]:
    world, observer = make_world(signing_key), RecordingObserver()
    world.steps = replace(world.steps, observer=observer)
    world.endpoint = TokenEndpoint([token_exchange_grant(world.steps)], audit=world.store, policy=world.policy,
                                   observer=observer)
    return world, observer


async def outcome(world: World, **changes: str | None) -> str:
    try:
        await world.post(**changes)
    except OAuthError as error:
        return error.error
    return "granted"


async def test_issue8_5_each_token_request_is_observed_once_after_its_audit_event(
        observed: tuple[World, RecordingObserver]) -> None:
    world, observer = observed
    assert await outcome(world) == "granted"
    assert observer.take() == [("policy_decided", ("fake",)), ("decided", ("exchange", "granted", None))]
    assert await outcome(world, scope="mail.delete") == "invalid_scope"  # refused before the policy
    assert observer.take() == [("decided", ("exchange", "refused", "invalid_scope"))]
    assert await outcome(world, requested_token_type=TXN_TOKEN_TYPE) == "granted"
    assert observer.take() == [("policy_decided", ("fake",)), ("decided", ("open_task", "granted", None))]
    world.store.fail("append_audit", StoreError("disk full"))
    assert await outcome(world, grant_type="password") == "unsupported_grant_type"
    assert observer.take() == [("store_failed", ("append_audit",)),
                               ("decided", ("exchange", "refused", "unsupported_grant_type"))]


@pytest.mark.parametrize(("method", "flow"), [("record_grant", "task_access"), ("record_task", "delegate"),
                                              ("task", "task_access"), ("cutoffs", "delegate")])
async def test_issue8_5_a_failed_store_call_is_observed_by_its_operation_name(
        observed: tuple[World, RecordingObserver], method: str, flow: str) -> None:
    world, observer = observed
    changes: dict[str, str | None] = task_token_form(await world.open_task())
    if flow == "delegate":
        changes.update(actor_token="helper-token", requested_token_type=TXN_TOKEN_TYPE)
    observer.take()
    world.store.fail(method, StoreError("database is locked"))
    assert await outcome(world, **changes) == "temporarily_unavailable"
    calls = observer.take()
    assert [c for c in calls if c[0] != "policy_decided"] == [
        ("store_failed", (method,)), ("decided", ("delegate" if flow == "delegate" else "exchange", "refused",
                                                  "temporarily_unavailable"))]


@pytest.mark.parametrize("failure", [TaskEnded("task t ended"), CredentialRevoked("actor")])
async def test_issue8_5_a_write_refused_for_what_happened_meanwhile_is_no_store_failure(
        observed: tuple[World, RecordingObserver], failure: Exception) -> None:
    world, observer = observed
    world.store.fail("record_grant", failure)
    assert await outcome(world) == "invalid_request"
    assert [name for name, _ in observer.take()] == ["policy_decided", "decided"]
