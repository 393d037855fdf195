"""The policy seam: what the gateway asks (`PolicyInput`), what it gets (`Decision`), and who answers.

The gateway queries `data.deputy.decision`. Whatever the policy returns, the caller still enforces the
invariants (scope only narrows, lifetime only shortens); an error or an undefined decision denies.
Engines: `rego.EmbeddedRego` in process, `opa.OpaServer` over OPA's REST API.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from token_exchange.actors import VerifiedActor
from token_exchange.rfc8693 import ExchangeRequest
from token_exchange.user_tokens import VerifiedSubject

from .tasks import Task

ENTRYPOINT = "deputy/decision"
MAX_REASONS, MAX_REASON_CHARS, MAX_SCOPES = 32, 1000, 256  # what a decision may hold, audited and logged


class PolicyError(Exception):
    """The policy could not be loaded, compiled or evaluated."""


class PolicyUnavailable(Exception):
    """The engine gave no usable answer (unreachable, too slow, an error, no decision): nothing may be issued.

    `cause` is one fixed word (for metrics and the audit); `detail` says what happened, for operators."""

    def __init__(self, engine: str, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.engine, self.cause, self.detail = engine, cause, detail


@dataclass(frozen=True, slots=True)
class Decision:
    """What the engine decided, with the policy revision that decided and the engine's decision id."""

    allow: bool
    scope: tuple[str, ...] = ()
    ttl: int | None = None
    reasons: tuple[str, ...] = ()
    error: str | None = None
    outlive_subject: bool = False  # a task may live past the user token it is opened with (docs/policy.md)
    revision: str | None = field(default=None, compare=False)  # about the evaluation, not what was decided
    decision_id: str | None = field(default=None, compare=False)

    @classmethod
    def deny(cls, reason: str, *, revision: str | None = None, decision_id: str | None = None) -> Decision:
        return cls(allow=False, reasons=(reason,), revision=revision, decision_id=decision_id)

    @classmethod
    def from_document(cls, document: Any, *, revision: str | None = None, decision_id: str | None = None
                      ) -> Decision:
        """Read a policy result strictly: anything malformed is a denial naming the problem."""
        made = {"revision": revision, "decision_id": decision_id}
        problem = cls.problem(document)
        if problem is not None:
            return cls.deny(problem, **made)
        return cls(document["allow"], tuple(document.get("scope", [])), document.get("ttl"),
                   tuple(document.get("reasons", [])), document.get("error"),
                   document.get("outlive_subject", False), **made)

    @staticmethod
    def problem(document: Any) -> str | None:
        """Why a policy result cannot be read as a decision, or None."""
        if not isinstance(document, dict) or type(document.get("allow")) is not bool:
            return "policy result has no boolean allow"
        reasons, scope = document.get("reasons", []), document.get("scope", [])
        ttl, error = document.get("ttl"), document.get("error")
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            return "policy result reasons is not a list of strings"
        if len(reasons) > MAX_REASONS or any(len(r) > MAX_REASON_CHARS for r in reasons):
            return f"policy result reasons exceed {MAX_REASONS} of {MAX_REASON_CHARS} characters"
        if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
            return "policy result scope is not a list of strings"
        if len(scope) > MAX_SCOPES:
            return f"policy result scope holds more than {MAX_SCOPES} values"
        if ttl is not None and (type(ttl) is not int or ttl <= 0):
            return "policy result ttl is not a positive integer"
        if error is not None and not isinstance(error, str):
            return "policy result error is not a string"
        if "outlive_subject" in document and type(document["outlive_subject"]) is not bool:
            return "policy result outlive_subject is not a boolean"
        return None

    def as_document(self) -> dict[str, Any]:
        """The decision as the policy result it was read from (for the decision log)."""
        document: dict[str, Any] = {"allow": self.allow, "scope": list(self.scope), "reasons": list(self.reasons)}
        if self.ttl is not None:
            document["ttl"] = self.ttl
        if self.error is not None:
            document["error"] = self.error
        if self.outlive_subject:
            document["outlive_subject"] = True
        return document


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """The document passed to the policy as `input` (docs/policy.md), read-only."""

    document: Mapping[str, Any] = field(compare=False)

    @classmethod
    def build(cls, action: str, *, task: Task, subject: VerifiedSubject | None, actor: VerifiedActor,
              request: ExchangeRequest, audiences: Sequence[str], now: int, parent: Task | None = None) -> PolicyInput:
        """The input for one decision: the user (from their token, else from the task), the agent, the
        request, and the task it is made in (`parent` when delegating)."""
        document: dict[str, Any] = {
            "action": action,
            "subject": _subject(task, subject),
            "actor": _actor(actor),
            "request": {"scope": request.scope.sorted(), "audience": audiences[0], "audiences": list(audiences),
                        "requested_token_type": request.requested_token_type, "dpop_bound": actor.dpop_jkt is not None},
            "now": now,
        }
        if action == "exchange" and subject is None:
            document["task"] = task.policy_view()
        if action == "open_task":
            document["task"] = {"purpose": task.purpose, "deadline": task.deadline}
        if parent is not None:
            document["task"] = parent.policy_view()
            document["chain"] = [a.id for a in parent.chain]
            document["chain_actors"] = [{"id": a.id, "kind": a.kind, "domain": a.domain} for a in parent.chain]
            document["request"]["deadline"] = task.deadline
        return cls(MappingProxyType(document))

    def as_json(self) -> dict[str, Any]:
        """The same document in plain JSON types (dict, list, str, int, float, bool, None)."""
        plain: dict[str, Any] = _plain(self.document)
        return plain

    def as_json_text(self) -> str:
        """The document as compact JSON text (for the decision log), without building `as_json()` first:
        measured, that copy cost more than the serialisation itself on every decision."""
        return json.dumps(self.document, separators=(",", ":"), default=dict)


def _subject(task: Task, subject: VerifiedSubject | None) -> dict[str, Any]:
    return {"iss": task.user_issuer, "sub": task.user_subject,
            "scope": (subject.scope if subject else task.scope).sorted(), "claims": subject.claims if subject else {}}


def _actor(actor: VerifiedActor) -> dict[str, Any]:
    """`id`, `kind`, `domain`; `sub` stays equal to `id` and SPIFFE actors keep `trust_domain`; `posture`
    only when this request's attestation was verified (absent otherwise)."""
    view = {"id": actor.id, "kind": actor.kind, "domain": actor.domain, "sub": actor.id, "claims": actor.claims}
    if actor.kind == "spiffe":
        view["trust_domain"] = actor.domain
    if actor.posture is not None:
        view["posture"] = actor.posture.policy_view()
    return view


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class PolicyEngine(Protocol):
    """Decides one request. A policy problem (an evaluation error, a malformed result) is a denial; an
    engine that cannot answer at all raises PolicyUnavailable.

    `revision` is the revision currently in force (for refusals made before any decision; None when the
    engine has not reported one yet); each `Decision` carries the revision and decision id of the
    evaluation that made it. `start` and `stop` bracket a worker's life; `problem` is for /readyz."""

    engine: str

    @property
    def revision(self) -> str | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def problem(self) -> str | None: ...

    async def decide(self, query: PolicyInput) -> Decision: ...


@dataclass(frozen=True, slots=True)
class PolicySource:
    """A policy directory read into memory: Rego modules and JSON data, with a content revision."""

    modules: Mapping[str, str]
    data: Mapping[str, Any]
    revision: str

    @classmethod
    def read(cls, directory: Path) -> PolicySource:
        """Every `*.rego` file is a module; every `*.json` file is data at the path of its folder
        (OPA bundle layout: `data.json` at the root is the root document). Raises PolicyError."""
        if not directory.is_dir():
            raise PolicyError(f"{directory} is not a directory")
        modules: dict[str, str] = {}
        data: dict[str, Any] = {}
        digest = hashlib.sha256()
        for path in sorted(directory.rglob("*")):
            if path.suffix not in (".rego", ".json") or not path.is_file():
                continue
            relative = path.relative_to(directory).as_posix()
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PolicyError(f"{relative}: {exc}") from exc
            digest.update(relative.encode() + b"\0" + text.encode() + b"\0")
            if path.suffix == ".rego":
                modules[relative] = text
            else:
                _merge_data(data, path.parent.relative_to(directory).parts, json_document(relative, text))
        if not modules:
            raise PolicyError(f"{directory} holds no .rego module")
        return cls(modules, data, digest.hexdigest()[:12])


def json_document(name: str, text: str) -> Any:
    """`text` parsed as JSON; PolicyError names `name` (and never lets a deep nesting become a traceback)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{name}: not JSON: {exc}") from exc
    except RecursionError as exc:
        raise PolicyError(f"{name}: JSON nested too deeply to read") from exc


def _merge_data(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = data
    for part in parts:
        node = node.setdefault(part, {})
    if not isinstance(value, dict):
        raise PolicyError(f"data at /{'/'.join(parts)} must be a JSON object")
    node.update(value)
