"""Issue 6 item 4 / issue 7 item 3: the C-API input path of `delegation/rego.py` decides exactly as regopy's
own `set_input` does, over inputs that stress the string and number encodings; and where rego-cpp's C
strings cannot carry a value faithfully (U+0000), Deputy's path refuses instead of deciding on a
shortened string."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from regopy import Interpreter

from delegation.policy import ENTRYPOINT, Decision, PolicyError, PolicyInput, PolicySource
from delegation.rego import EmbeddedRego, set_input
from policies import PACKAGED_POLICIES

AGENT = "spiffe://example.org/agents/mail"
MAIL = "https://mail.example.com"
ECHO = """package deputy
import rego.v1
# What the engine saw, without returning raw strings (regopy's output decoding is not under test here):
# the SHA-256 of every string value and object key, and every number.
decision := {"allow": true, "scope": [s | some s in input.request.scope], "seen": {
	"strings": sort([crypto.sha256(v) | walk(input, [_, v]); is_string(v)]),
	"keys": sort({crypto.sha256(k) | walk(input, [path, _]); some k in path; is_string(k)}),
	"numbers": sort([n | walk(input, [_, n]); is_number(n)]),
}}
"""


def document(sub: str = "alice", *, claims: dict[str, Any] | None = None, agent: str = AGENT) -> dict[str, Any]:
    return {
        "action": "exchange",
        "subject": {"iss": "https://idp.example.com", "sub": sub, "scope": ["mail.read"], "claims": claims or {}},
        "actor": {"id": agent, "kind": "spiffe", "domain": "example.org", "sub": agent, "claims": {}},
        "request": {"scope": ["mail.read"], "audience": MAIL, "audiences": [MAIL],
                    "requested_token_type": "urn:ietf:params:oauth:token-type:access_token"},
        "now": 1_800_000_000,
    }


FAITHFUL = {  # inputs both paths must carry exactly
    "ascii": document(),
    "non_ascii_sub": document("ålice-名前-😀"),
    "control_characters": document(claims={"note": "tab\there\nnewline\r\x01\x1f\x7f"}),
    "quotes_and_backslashes": document(claims={"q": 'say "hi" \\ \\u0041 \\\\'}),
    "non_ascii_keys": document(claims={"名前": "x", "ключ": ["a", {"b": None}]}),
    "numbers": document(claims={"big": 2**62, "neg": -(2**63), "float": 1.5, "zero": 0, "bools": [True, False]}),
    "may_act": document("bob", claims={"may_act": {"sub": AGENT}}),
    "empty_values": document(claims={"s": "", "l": [], "o": {}}),
}
WITH_NUL = {
    "nul_in_sub": document("alice\u0000mallory"),
    "nul_in_may_act": document("bob", claims={"may_act": {"sub": AGENT + "\u0000.evil"}}),
    "nul_in_a_key": document(claims={"k\u0000ey": "v"}),
    "nul_in_a_nested_list": document(claims={"l": ["ok", ["x\u0000"]]}),
}


def evaluate(feed: Any, source: PolicySource, doc: dict[str, Any]) -> Any:
    """The decision document `source` gives for `doc`, the input handed over with `feed(interpreter, doc)`."""
    builder = Interpreter()
    builder.add_data(dict(source.data))
    for name, text in source.modules.items():
        builder.add_module(name, text)
    bundle = builder.build(None, [ENTRYPOINT])
    runner = Interpreter()
    feed(runner, doc)
    output = runner.query_bundle_entrypoint(bundle, ENTRYPOINT)
    assert output.ok(), output
    return output.results[0].expressions[0]


def decide_with(feed: Any, source: PolicySource, doc: dict[str, Any]) -> Decision:
    return Decision.from_document(evaluate(feed, source, doc))


def fingerprint(doc: Any) -> dict[str, list[Any]]:
    """What the ECHO policy reports for a document the engine saw exactly."""
    strings: list[str] = []
    keys: set[str] = set()
    numbers: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            keys.update(value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            strings.append(hashlib.sha256(value.encode()).hexdigest())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers.append(value)

    walk(doc)
    return {"strings": sorted(strings), "keys": sorted(hashlib.sha256(k.encode()).hexdigest() for k in keys),
            "numbers": sorted(numbers)}


def regopy_set_input(interpreter: Interpreter, doc: dict[str, Any]) -> None:
    interpreter.set_input(doc)


@pytest.fixture(scope="module")
def echo() -> PolicySource:
    return PolicySource({"echo.rego": ECHO}, {}, "echo")


@pytest.mark.parametrize("name", FAITHFUL)
def test_c_input_path_decides_exactly_as_regopy_set_input(name: str, echo: PolicySource) -> None:
    doc = FAITHFUL[name]
    ours, theirs = evaluate(set_input, echo, doc), evaluate(regopy_set_input, echo, doc)
    assert Decision.from_document(ours) == Decision.from_document(theirs)
    assert ours["seen"] == theirs["seen"] == fingerprint(doc)  # both saw exactly the document handed in


@pytest.mark.parametrize("name", FAITHFUL)
def test_c_input_path_and_set_input_agree_on_the_packaged_policy(name: str) -> None:
    source = PolicySource.read(PACKAGED_POLICIES)
    doc = FAITHFUL[name]
    assert decide_with(set_input, source, doc) == decide_with(regopy_set_input, source, doc)


@pytest.mark.parametrize("name", WITH_NUL)
def test_issue7_3_a_string_with_u0000_is_refused_never_cut_short(name: str, echo: PolicySource) -> None:
    doc = WITH_NUL[name]
    with pytest.raises(PolicyError, match="U\\+0000"):
        evaluate(set_input, echo, doc)
    # regopy's own path shows the defect being guarded against: the engine saw a shortened string.
    assert evaluate(regopy_set_input, echo, doc)["seen"] != fingerprint(doc)


@pytest.mark.parametrize("name", WITH_NUL)
async def test_issue7_3_the_embedded_engine_denies_an_input_holding_u0000(name: str) -> None:
    engine = EmbeddedRego(PolicySource.read(PACKAGED_POLICIES))
    decision = await engine.decide(PolicyInput(WITH_NUL[name]))
    assert decision == Decision.deny("policy evaluation failed")
    assert decision.revision == engine.revision and decision.decision_id
