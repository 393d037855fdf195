"""The decision log: every policy decision's input, result, engine, latency and decision id in the audit
store, and with `[audit] decision_log` also as OPA-style decision-log lines (OPA DecisionLogs, item 24)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Deployment, deployed


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Path]]:
    directory = tmp_path_factory.mktemp("decisions")
    with deployed(directory, extra='\n[audit]\ndecision_log = "log/decisions.jsonl"\n') as deployment:
        yield deployment, directory / "log" / "decisions.jsonl"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_granted_exchange_writes_one_opa_style_decision_log_line(logged: tuple[Deployment, Path]) -> None:
    deployment, path = logged
    before = len(lines(path)) if path.exists() else 0
    subject, actor = deployment.user_token(), deployment.svid()
    assert deployment.exchange(subject_token=subject, actor_token=actor).status_code == 200
    entry = lines(path)[before]
    event = deployment.audit()[-1]
    assert entry["decision_id"] == event["decision_id"]
    assert entry["path"] == "deputy/decision" and entry["labels"] == {"app": "deputy", "engine": "embedded"}
    assert entry["input"] == json.loads(event["policy_input"]) and entry["input"]["action"] == "exchange"
    assert entry["result"]["allow"] is True and entry["result"]["scope"] == ["mail.read"]
    assert entry["outcome"] == "granted" and entry["error"] is None
    assert entry["metrics"]["timer_policy_decision_ns"] == event["policy_latency_us"] * 1000
    assert entry["bundles"] == {"deputy": {"revision": event["policy_revision"]}}
    assert entry["timestamp"].endswith("Z")
    text = path.read_text() + json.dumps(event)
    assert subject not in text and actor not in text  # never the tokens: verified claims only
    assert subject.split(".")[2] not in text and actor.split(".")[2] not in text


def test_a_policy_refusal_is_logged_with_its_result(logged: tuple[Deployment, Path]) -> None:
    deployment, path = logged
    before = len(lines(path))
    assert deployment.exchange(subject_token=deployment.user_token("carol")).status_code == 400
    entry = lines(path)[before]
    assert entry["outcome"] == "refused" and entry["error"] == "unauthorized_client"
    assert entry["result"]["allow"] is False and entry["input"]["subject"]["sub"] == "carol"


def test_a_request_refused_before_the_policy_is_asked_has_no_decision_log_line(
        logged: tuple[Deployment, Path]) -> None:
    deployment, path = logged
    before = len(lines(path))
    assert deployment.exchange(actor_token="not-a-jwt").status_code == 400
    assert len(lines(path)) == before
    event = deployment.audit()[-1]
    assert event["outcome"] == "refused" and event["policy_input"] is None and event["policy_engine"] is None


def test_the_audit_store_holds_engine_latency_and_result_of_each_decision(logged: tuple[Deployment, Path]) -> None:
    deployment, _ = logged
    assert deployment.exchange().status_code == 200
    record = dict(deployment.audit()[-1])
    assert record["policy_engine"] == "embedded" and record["policy_latency_us"] > 0
    assert json.loads(record["policy_result"])["reasons"]
