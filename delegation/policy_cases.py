"""Table-driven policy cases: files of `{"name", "input", "expect"}` run against any engine.

`expect` holds `allow` and optionally `scope` (compared as a set), `error` and `ttl`. The same files are
the CI's decision table (tests/policy/cases) and what `deputy policy test DIR` runs against the
configured engine, so a policy change is checked on the engine that will decide in production.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .policy import Decision, PolicyEngine, PolicyError, PolicyInput, PolicyUnavailable, json_document

EXPECTED_KEYS = frozenset({"allow", "scope", "error", "ttl"})


@dataclass(frozen=True, slots=True)
class PolicyCase:
    file: str
    name: str
    input: Mapping[str, Any]
    expect: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    decision: Decision | None  # None: the engine could not decide
    problems: tuple[str, ...]  # why it failed; empty when it passed

    @property
    def passed(self) -> bool:
        return not self.problems


def read_cases(directory: Path) -> list[PolicyCase]:
    """Every case of every `*.json` file in `directory` (sorted by file name); PolicyError names a bad one."""
    if not directory.is_dir():
        raise PolicyError(f"{directory} is not a directory")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise PolicyError(f"{directory} holds no *.json case file")
    return [case for path in files for case in _read_file(path)]


def _read_file(path: Path) -> list[PolicyCase]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path.name}: {exc}") from exc
    document = json_document(path.name, text)
    if not isinstance(document, list):
        raise PolicyError(f"{path.name}: must be a JSON list of cases")
    return [_case(path.name, i, item) for i, item in enumerate(document)]


def _case(file: str, index: int, item: Any) -> PolicyCase:
    where = f"{file}[{index}]"
    if not isinstance(item, dict) or set(item) != {"name", "input", "expect"}:
        raise PolicyError(f"{where}: a case is an object with exactly name, input and expect")
    name, document, expect = item["name"], item["input"], item["expect"]
    if not isinstance(name, str) or not isinstance(document, dict) or not isinstance(expect, dict):
        raise PolicyError(f"{where}: name must be a string, input and expect objects")
    if type(expect.get("allow")) is not bool or not set(expect) <= EXPECTED_KEYS:
        raise PolicyError(f"{where} ({name}): expect needs a boolean allow and only {', '.join(sorted(EXPECTED_KEYS))}")
    return PolicyCase(file, name, document, expect)


async def run_case(engine: PolicyEngine, case: PolicyCase) -> CaseResult:
    """Ask `engine` the case's input and compare what it decided with what the case expects."""
    try:
        decision = await engine.decide(PolicyInput(case.input))
    except PolicyUnavailable as exc:
        return CaseResult(case, None, (f"the engine could not decide: {exc.detail}",))
    return CaseResult(case, decision, tuple(_differences(case.expect, decision)))


def _differences(expect: Mapping[str, Any], decision: Decision) -> list[str]:
    found = []
    if decision.allow != expect["allow"]:
        found.append(f"allow is {str(decision.allow).lower()}, expected {str(expect['allow']).lower()}")
    if "scope" in expect and sorted(decision.scope) != sorted(expect["scope"]):
        found.append(f"scope is {' '.join(sorted(decision.scope)) or '(none)'}, "
                     f"expected {' '.join(sorted(expect['scope'])) or '(none)'}")
    if "error" in expect and decision.error != expect["error"]:
        found.append(f"error is {decision.error}, expected {expect['error']}")
    if "ttl" in expect and decision.ttl != expect["ttl"]:
        found.append(f"ttl is {decision.ttl}, expected {expect['ttl']}")
    return found
