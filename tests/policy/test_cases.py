"""One decision table, two engines: every case of tests/policy/cases runs on the embedded engine and on the
OPA engine over real HTTP (the test OPA server, or a real OPA at DEPUTY_TEST_OPA_URL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from delegation.opa import OpaServer, opa_client
from delegation.opa_bundle import push
from delegation.policy import PolicyEngine, PolicySource
from delegation.policy_cases import PolicyCase, read_cases, run_case
from delegation.rego import EmbeddedRego
from policies import PACKAGED_POLICIES
from tests.opa_server import opa_url_for_tests

CASES = read_cases(Path(__file__).parent / "cases")
SOURCE = PolicySource.read(PACKAGED_POLICIES)


@pytest.fixture(scope="module")
def opa_url() -> Iterator[str]:
    with opa_url_for_tests() as url:
        yield url


@pytest.fixture(params=["embedded", "opa"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[PolicyEngine]:
    if request.param == "embedded":
        yield EmbeddedRego(SOURCE)
        return
    url = request.getfixturevalue("opa_url")
    async with opa_client(url, timeout_s=5) as client:
        await push(SOURCE, client)
    server = OpaServer(url, timeout_ms=2000)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def test_the_decision_table_covers_every_action() -> None:
    actions = {case.input["action"] for case in CASES}
    assert actions == {"exchange", "open_task", "delegate"}
    assert any(c.expect["allow"] for c in CASES) and any(not c.expect["allow"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.name}" for c in CASES])
async def test_policy_case(engine: PolicyEngine, case: PolicyCase) -> None:
    result = await run_case(engine, case)
    assert result.passed, (engine.engine, result.problems, result.decision)
