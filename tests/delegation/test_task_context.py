"""Issue 6 item 9: task tokens follow draft-ietf-oauth-transaction-tokens-10 for their context: the
purpose and `request_details` become `tctx` (§9.2.3), `request_context` becomes `rctx` (§9.2.2), both
bounded; a delegated child keeps its parent's `tctx` and may only add to it (§13.15)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.delegation.test_task_lifecycle import SUB, Env, _ok, _refused, running_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("context")) as running:
        yield running


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def test_txn_tokens_9_2_request_details_and_context_become_tctx_and_rctx(env: Env) -> None:
    body = _ok(env.open_task(purpose="triage inbox", request_details=json.dumps({"ticket": "T-42", "n": [1, 2]}),
                             request_context=json.dumps({"ip": "10.0.0.7"})))
    task = claims(body["access_token"])
    assert task["tctx"] == {"ticket": "T-42", "n": [1, 2], "purpose": "triage inbox"}
    assert task["rctx"] == {"ip": "10.0.0.7"}
    assert "purp" not in task


def test_txn_tokens_9_2_a_task_without_context_carries_no_empty_claims(env: Env) -> None:
    task = claims(_ok(env.open_task())["access_token"])
    assert "tctx" not in task and "rctx" not in task


def test_txn_tokens_13_15_a_child_keeps_the_parent_tctx_and_may_add_to_it(env: Env) -> None:
    parent = _ok(env.open_task(purpose="triage", request_details=json.dumps({"ticket": "T-1"}),
                               request_context=json.dumps({"ip": "10.0.0.7"})))
    child = _ok(env.delegate(parent["access_token"], SUB, request_details=json.dumps({"step": "summarize"}),
                             request_context=json.dumps({"ip": "10.0.0.8"})))
    token = claims(child["access_token"])
    assert token["tctx"] == {"ticket": "T-1", "step": "summarize", "purpose": "triage"}
    assert token["rctx"] == {"ip": "10.0.0.8"}  # the environment of the child's own request


def test_txn_tokens_13_15_a_child_cannot_change_a_value_of_the_parent_tctx(env: Env) -> None:
    parent = _ok(env.open_task(request_details=json.dumps({"ticket": "T-1"})))
    refused = env.delegate(parent["access_token"], SUB, request_details=json.dumps({"ticket": "T-2"}))
    assert "request_details" in _refused(refused, "invalid_request")


@pytest.mark.parametrize(("name", "value"), [
    ("request_details", "not json"),
    ("request_details", "[1, 2]"),
    ("request_context", '"a string"'),
    ("request_context", '{"n": NaN}'),
    ("request_details", json.dumps({"k": "x" * 2100})),
    ("request_details", json.dumps({"a": {"b": {"c": {"d": {"e": 1}}}}})),
    ("request_context", json.dumps({"nul": "a\u0000b"})),
    ("request_details", json.dumps({"purpose": "sneaky"})),
])
def test_txn_tokens_11_1_malformed_context_parameters_are_invalid_request(env: Env, name: str, value: str) -> None:
    assert name in _refused(env.open_task(**{name: value}), "invalid_request")
