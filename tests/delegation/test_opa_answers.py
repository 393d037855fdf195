"""`OpaServer` against OPA answers no real OPA should give: each is PolicyUnavailable (503 at /token),
never an exception that escapes as a 500 or a decision read from an ambiguous body."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from delegation.opa import OpaServer
from delegation.policy import PolicyInput, PolicyUnavailable


class Answers:
    """A loopback HTTP server answering every POST with the body, status and media type set on it."""

    def __init__(self) -> None:
        self.body, self.status, self.media_type = b"{}", 200, "application/json"
        self.delay_s, self.in_flight, self.most_in_flight = 0.0, 0, 0
        self.lock = threading.Lock()
        answers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with answers.lock:
                    answers.in_flight += 1
                    answers.most_in_flight = max(answers.most_in_flight, answers.in_flight)
                time.sleep(answers.delay_s)
                with answers.lock:
                    answers.in_flight -= 1
                self.send_response(answers.status)
                self.send_header("content-type", answers.media_type)
                self.send_header("content-length", str(len(answers.body)))
                self.end_headers()
                self.wfile.write(answers.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def answers() -> Iterator[Answers]:
    server = Answers()
    yield server
    server.server.shutdown()


async def cause_of(answers: Answers, body: bytes, *, status: int = 200, media_type: str = "application/json") -> str:
    answers.body, answers.status, answers.media_type = body, status, media_type
    engine = OpaServer(answers.url, timeout_ms=2000)
    await engine.start()
    try:
        with pytest.raises(PolicyUnavailable) as raised:
            await engine.decide(PolicyInput({"action": "exchange"}))
    finally:
        await engine.stop()
    return raised.value.cause


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(("body", "cause"), [
    (DEEP, "malformed"),  # nested past Python's recursion limit
    (b'{"result": ' + DEEP + b"}", "malformed"),
    (b"\xff\xfe not UTF-8", "malformed"),
    (b"[1, 2]", "malformed"),  # JSON, but not an object
    (b"{}", "undefined"),  # OPA REST › Data API: no result
    (b'{"result": {"allow": "true"}}', "malformed"),
    (b'{"result": null}', "malformed"),
    (json.dumps({"result": {"allow": True, "reasons": ["x" * 1001]}}).encode(), "malformed"),
    (json.dumps({"result": {"allow": True, "reasons": ["r"] * 33}}).encode(), "malformed"),
    (json.dumps({"result": {"allow": True, "scope": [f"s{i}" for i in range(257)]}}).encode(), "malformed"),
])
async def test_an_answer_that_is_not_a_decision_is_policy_unavailable(answers: Answers, body: bytes,
                                                                        cause: str) -> None:
    assert await cause_of(answers, body) == cause


async def test_a_json_body_of_another_media_type_is_policy_unavailable(answers: Answers) -> None:
    assert await cause_of(answers, b'{"result": {"allow": true}}', media_type="text/plain") == "malformed"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 502, 503])
async def test_an_error_status_is_policy_unavailable_even_with_a_decision_body(answers: Answers, status: int) -> None:
    assert await cause_of(answers, b'{"result": {"allow": true}}', status=status) == "error"


async def test_a_well_formed_answer_is_the_decision_with_opas_decision_id(answers: Answers) -> None:
    answers.body, answers.status, answers.media_type = json.dumps({
        "result": {"allow": True, "scope": ["mail.read"], "ttl": 60, "reasons": ["ok"]}, "decision_id": "d-1",
        "provenance": {"bundles": {"deputy": {"revision": "r-7"}}}}).encode(), 200, "application/json"
    engine = OpaServer(answers.url, timeout_ms=2000)
    await engine.start()
    try:
        decision = await engine.decide(PolicyInput({"action": "exchange"}))
    finally:
        await engine.stop()
    assert decision.allow and decision.scope == ("mail.read",) and decision.ttl == 60
    assert (decision.decision_id, decision.revision, engine.revision) == ("d-1", "r-7", "r-7")


async def test_decisions_in_flight_are_bounded_and_the_wait_counts_against_the_timeout(answers: Answers) -> None:
    """At most `max_in_flight` calls reach OPA at once; a call waiting for a slot past `timeout_ms` is a
    timeout like any other, so a slow OPA costs each request at most one timeout."""
    answers.body, answers.status, answers.media_type = b'{"result": {"allow": false}}', 200, "application/json"
    answers.delay_s, answers.most_in_flight = 0.2, 0
    engine = OpaServer(answers.url, timeout_ms=500, max_in_flight=2)
    await engine.start()
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(engine.decide(PolicyInput({"action": "exchange"})) for _ in range(8)),
                                        return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        await engine.stop()
        answers.delay_s = 0.0
    assert answers.most_in_flight == 2
    decided = [o for o in outcomes if not isinstance(o, BaseException)]
    timed_out = [o for o in outcomes if isinstance(o, PolicyUnavailable) and o.cause == "timeout"]
    assert len(decided) + len(timed_out) == 8 and 2 <= len(decided) <= 6 and timed_out
    assert elapsed < 0.5 + 0.3  # every call ended within its timeout, however many waited
