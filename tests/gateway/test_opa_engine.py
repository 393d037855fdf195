"""`[policy] engine = "opa"` over real HTTP: a gateway asks an OPA server (the test OPA server of
tests/opa_server.py, speaking OPA's REST API) for every decision.

OPA failures are the gateway's fault: down, slow, an error status, an undefined decision, a body that is
not a decision: each is 503 `temporarily_unavailable`, audited with its cause, and nothing is issued.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from delegation.opa import opa_client
from delegation.opa_bundle import push, write_bundle
from delegation.policy import PolicySource
from gateway.cli import main
from tests.conftest import Deployment, Probe, make_setup, running
from tests.opa_server import running_opa
from tests.support import free_port

TIMEOUT_MS = 300
PLACEHOLDER = "http://127.0.0.1:9"
CASES = Path(__file__).resolve().parent.parent / "policy" / "cases"


@contextmanager
def opa_gateway(directory: Path, opa_url: str | None = None, *, bundle: bool = False
                ) -> Iterator[tuple[Deployment, PolicySource]]:
    """A gateway with `engine = "opa"` at `opa_url` (or at a test OPA serving its policy directory as a
    bundle, `opa run -s -b`, when `bundle`)."""
    setup = make_setup(directory, policy=f'engine = "opa"\nopa_url = "{PLACEHOLDER}"\ntimeout_ms = {TIMEOUT_MS}\n')
    source = PolicySource.read(directory / "policies")
    try:
        with _opa_for(directory, source, opa_url, bundle) as url:
            setup.config.write_text(setup.config.read_text().replace(PLACEHOLDER, url))
            with running(setup) as deployment:
                yield deployment, source
            assert "Traceback" not in deployment.log(), deployment.log()
    finally:
        setup.jwks_server.close()


@contextmanager
def _opa_for(directory: Path, source: PolicySource, url: str | None, bundle: bool) -> Iterator[str]:
    if url is not None:
        yield url
        return
    write_bundle(source, directory / "bundle.tar.gz")
    with running_opa(bundle=directory / "bundle.tar.gz") as opa:
        yield opa.url


def put_module(url: str, text: str) -> None:
    response = httpx2.put(f"{url}/v1/policies/deputy/exchange.rego", content=text,
                          headers={"content-type": "text/plain"})
    assert response.status_code == 200, response.text


def last_audit(deployment: Deployment) -> dict[str, object]:
    return deployment.audit()[-1]


# --- Deciding through OPA ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, PolicySource]]:
    with opa_gateway(tmp_path_factory.mktemp("opa"), bundle=True) as made:
        yield made


def test_opa_engine_grants_through_the_data_api_and_audits_the_decision_log(
        bundled: tuple[Deployment, PolicySource]) -> None:
    deployment, source = bundled
    probe = Probe(deployment, deployment.issued_count(), len(deployment.audit()))
    body = probe.granted(deployment.exchange(scope="mail.read"))
    assert body["scope"] == "mail.read"
    event = last_audit(deployment)
    assert event["outcome"] == "granted" and event["policy_engine"] == "opa"
    assert event["policy_revision"] == source.revision  # OPA's provenance: the bundle's manifest revision
    assert isinstance(event["policy_latency_us"], int) and event["policy_latency_us"] > 0
    assert json.loads(str(event["policy_input"]))["action"] == "exchange"
    assert json.loads(str(event["policy_result"]))["allow"] is True


def test_opa_engine_records_the_decision_id_opa_returns(bundled: tuple[Deployment, PolicySource]) -> None:
    """OPA REST › Data API: `decision_id` is in the response when decision logging is on; the audit
    event carries it rather than one of Deputy's own."""
    deployment, _ = bundled
    deployment.exchange(scope="mail.read")
    decision_id = str(last_audit(deployment)["decision_id"])
    assert len(decision_id) == 36 and decision_id.count("-") == 4  # the test OPA's ids are UUIDs


def test_opa_engine_a_policy_denial_is_a_decision_not_an_outage(bundled: tuple[Deployment, PolicySource]) -> None:
    deployment, _ = bundled
    probe = Probe(deployment, deployment.issued_count(), len(deployment.audit()))
    probe.refused(deployment.exchange(subject_token=deployment.user_token("carol")), 400, "unauthorized_client",
                  names="policy refused")


def test_readyz_is_ready_when_opa_answers_health(bundled: tuple[Deployment, PolicySource]) -> None:
    response = bundled[0].client.get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ready"}


# --- OPA failures: 503, audited, nothing issued -------------------------------------------------------------


def refused_as_unavailable(deployment: Deployment, cause: str) -> None:
    probe = Probe(deployment, deployment.issued_count(), len(deployment.audit()))
    description = probe.refused(deployment.exchange(), 503, "temporarily_unavailable", names="policy engine (opa)")
    assert f"({cause})" in description and "nothing was issued" in description
    event = last_audit(deployment)
    assert event["outcome"] == "refused" and event["error"] == "temporarily_unavailable"
    assert f"policy engine opa unavailable ({cause})" in str(event["reasons"])


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, object]]:
    """A gateway and a test OPA whose faults the tests switch on and off."""
    with running_opa() as opa:
        directory = tmp_path_factory.mktemp("faulty")
        with opa_gateway(directory, opa.url) as (deployment, source):
            asyncio.run(_push(opa.url, source))
            yield deployment, opa


async def _push(url: str, source: PolicySource) -> None:
    async with opa_client(url, timeout_s=5) as client:
        await push(source, client)


@pytest.fixture
def opa(faulty: tuple[Deployment, object]) -> Iterator[object]:
    """The faulty OPA, healthy again after each test (and checked to decide again)."""
    deployment, server = faulty
    yield server
    server.delay_s, server.fail_with, server.garbage = 0, None, False  # type: ignore[attr-defined]
    assert deployment.exchange().status_code == 200


def test_opa_slower_than_timeout_ms_is_503_temporarily_unavailable(faulty: tuple[Deployment, object],
                                                                    opa: object) -> None:
    opa.delay_s = TIMEOUT_MS / 1000 * 3  # type: ignore[attr-defined]
    refused_as_unavailable(faulty[0], "timeout")


@pytest.mark.parametrize("status", [500, 503, 404])
def test_opa_answering_an_error_status_is_503_temporarily_unavailable(faulty: tuple[Deployment, object],
                                                                       opa: object, status: int) -> None:
    opa.fail_with = status  # type: ignore[attr-defined]
    refused_as_unavailable(faulty[0], "error")


def test_opa_answering_a_body_that_is_not_json_is_503_temporarily_unavailable(faulty: tuple[Deployment, object],
                                                                                opa: object) -> None:
    opa.garbage = True  # type: ignore[attr-defined]
    refused_as_unavailable(faulty[0], "malformed")


@pytest.mark.parametrize(("rule", "cause"), [
    ("other := true", "undefined"),  # no decision rule: 200 without `result` (OPA REST › Data API)
    ('decision := {"allow": "true"}', "malformed"),  # not a boolean allow
    ("decision := true", "malformed"),
    ('decision := {"allow": true, "scope": "mail.read"}', "malformed"),
])
def test_opa_undefined_or_malformed_decision_is_503_temporarily_unavailable(
        faulty: tuple[Deployment, object], opa: object, rule: str, cause: str) -> None:
    url = opa.url  # type: ignore[attr-defined]
    original = (Path(__file__).resolve().parents[2] / "policies" / "deputy" / "exchange.rego").read_text()
    put_module(url, f"package deputy\n\nimport rego.v1\n\n{rule}\n")
    try:
        refused_as_unavailable(faulty[0], cause)
    finally:
        put_module(url, original)


def test_opa_unreachable_is_503_and_readyz_names_the_engine(tmp_path: Path) -> None:
    with opa_gateway(tmp_path, f"http://127.0.0.1:{free_port()}") as (deployment, _):
        refused_as_unavailable(deployment, "unreachable")
        response = deployment.client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert any("policy engine opa" in p for p in response.json()["problems"])


def test_the_gateway_recovers_without_a_restart_once_opa_answers(faulty: tuple[Deployment, object],
                                                                  opa: object) -> None:
    opa.fail_with = 500  # type: ignore[attr-defined]
    refused_as_unavailable(faulty[0], "error")
    opa.fail_with = None  # type: ignore[attr-defined]
    assert faulty[0].exchange().status_code == 200


# --- The authoring commands against OPA ----------------------------------------------------------------------


def test_policy_push_then_policy_test_pass_the_decision_table_on_the_opa_engine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_opa() as opa:
        # a generous timeout: what is tested is the table's outcome, not the in-process test OPA's speed
        (tmp_path / "deputy.toml").write_text(f'[policy]\nengine = "opa"\nopa_url = "{opa.url}"\ntimeout_ms = 5000\n')
        config = ["--config", str(tmp_path / "deputy.toml")]
        assert main(["policy", "test", str(CASES), *config]) == 1  # nothing loaded yet: undefined
        assert "is undefined" in capsys.readouterr().out
        assert main(["policy", "push", *config]) == 0
        assert "data.access, deputy/exchange.rego" in capsys.readouterr().out
        assert main(["policy", "test", str(CASES), *config]) == 0
        assert "0 failed (opa engine" in capsys.readouterr().out


def test_policy_push_refuses_when_opa_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "push", "--opa", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach OPA" in capsys.readouterr().err


def test_readyz_is_503_while_opa_answers_health_but_has_no_policy_loaded(tmp_path: Path) -> None:
    """OPA's /health is 200 before any policy is loaded; a canary decision tells (undefined)."""
    with running_opa() as opa, opa_gateway(tmp_path, opa.url) as (deployment, source):
        response = deployment.client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["problems"] == ["policy engine opa: cannot decide (undefined)"]
        assert opa.url.split("//")[1] not in response.text  # /readyz is public: no internal address
        asyncio.run(_push(opa.url, source))
        assert deployment.client.get("/readyz").json() == {"status": "ready"}
