"""The policy seam: what the gateway asks (`PolicyInput`), what it gets (`Decision`), and who answers.

The gateway queries `data.deputy.decision`. Whatever the policy returns, the caller still enforces the
invariants (scope only narrows, lifetime only shortens); an error or an undefined decision denies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from regopy import Interpreter, LogLevel
from regopy import rego_shared as _native

log = logging.getLogger(__name__)

ENTRYPOINT = "deputy/decision"


class PolicyError(Exception):
    """The policy could not be loaded, compiled or evaluated."""


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    scope: tuple[str, ...] = ()
    ttl: int | None = None
    reasons: tuple[str, ...] = ()
    error: str | None = None

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(allow=False, reasons=(reason,))

    @classmethod
    def from_document(cls, document: Any) -> Decision:
        """Read a policy result strictly: anything malformed is a denial naming the problem."""
        if not isinstance(document, dict) or type(document.get("allow")) is not bool:
            return cls.deny("policy result has no boolean allow")
        reasons = document.get("reasons", [])
        scope = document.get("scope", [])
        ttl = document.get("ttl")
        error = document.get("error")
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            return cls.deny("policy result reasons is not a list of strings")
        if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
            return cls.deny("policy result scope is not a list of strings")
        if ttl is not None and (type(ttl) is not int or ttl <= 0):
            return cls.deny("policy result ttl is not a positive integer")
        if error is not None and not isinstance(error, str):
            return cls.deny("policy result error is not a string")
        return cls(document["allow"], tuple(scope), ttl, tuple(reasons), error)


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """The document passed to the policy as `input`."""

    document: Mapping[str, Any] = field(compare=False)


class PolicyEngine(Protocol):
    """Decides one request. Implementations never raise for a policy problem: they deny."""

    revision: str

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
                _merge_data(data, path.parent.relative_to(directory).parts, _json(relative, text))
        if not modules:
            raise PolicyError(f"{directory} holds no .rego module")
        return cls(modules, data, digest.hexdigest()[:12])


def _json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{name}: not JSON: {exc}") from exc


def _merge_data(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = data
    for part in parts:
        node = node.setdefault(part, {})
    if not isinstance(value, dict):
        raise PolicyError(f"data at /{'/'.join(parts)} must be a JSON object")
    node.update(value)


class EmbeddedRego:
    """In-process Rego (regopy): compiled once into a bundle, evaluated per request (≈0.2 ms)."""

    def __init__(self, source: PolicySource) -> None:
        self.revision = source.revision
        builder = Interpreter()
        builder.log_level = LogLevel.NONE  # errors come back in the exception, not printed on stdout
        try:
            builder.add_data(dict(source.data))
            for name, text in source.modules.items():
                builder.add_module(name, text)
            self._bundle = builder.build(None, [ENTRYPOINT])
        except Exception as exc:  # regopy raises RegoError, and ValueError/TypeError for bad data
            raise PolicyError(f"policy does not compile: {_compiler_message(str(exc), source.modules)}") from exc
        self._runner = Interpreter()

    async def decide(self, query: PolicyInput) -> Decision:
        try:
            set_input(self._runner, query.document)
            output = self._runner.query_bundle_entrypoint(self._bundle, ENTRYPOINT)
            results = output.results if output.ok() else []
        except Exception as exc:  # evaluation errors deny; they must never reach the client as a 500
            log.warning("policy.error", extra={"error": str(exc)[:500]})
            return Decision.deny("policy evaluation failed")
        if not results or not results[0].expressions:
            return Decision.deny("policy decision is undefined")
        return Decision.from_document(results[0].expressions[0])


def set_input(interpreter: Interpreter, document: Mapping[str, Any]) -> None:
    """Hand the input document to rego-cpp through its C input API.

    regopy's own `set_input` does the same walk with generic ABC checks and a C string buffer per
    value; this one dispatches on exact JSON types and passes bytes, about 40% faster, and it is the
    largest part of a decision. Anything that is not a JSON value raises (and the decision denies).
    """
    handle = _native.rego_new_input()
    try:
        _push(handle, document, 0)
        if _native.rego.regoSetInput(interpreter._impl, handle):
            raise PolicyError("rego-cpp refused the input document")
    finally:
        _native.rego_free_input(handle)


def _push(handle: int, value: Any, depth: int) -> None:
    if depth > _MAX_INPUT_DEPTH:
        raise PolicyError("input document nested too deeply")
    kind = type(value)
    if kind is str:
        failed = _INPUT.regoInputString(handle, value.encode())
    elif kind is dict or kind is MappingProxyType:
        for key, item in value.items():
            if type(key) is not str or _INPUT.regoInputString(handle, key.encode()):
                raise PolicyError("input object keys must be strings")
            _push(handle, item, depth + 1)
            if _INPUT.regoInputObjectItem(handle):
                raise PolicyError("rego-cpp refused an input object item")
        failed = _INPUT.regoInputObject(handle, len(value))
    elif kind is list or kind is tuple:
        for item in value:
            _push(handle, item, depth + 1)
        failed = _INPUT.regoInputArray(handle, len(value))
    elif kind is bool:
        failed = _INPUT.regoInputBoolean(handle, value)
    elif kind is int:
        if not -(2**63) <= value < 2**63:  # ctypes would wrap it silently
            raise PolicyError("input holds an integer beyond 64 bits")
        failed = _INPUT.regoInputInt(handle, value)
    elif kind is float:
        failed = _INPUT.regoInputFloat(handle, value)
    elif value is None:
        failed = _INPUT.regoInputNull(handle)
    else:
        raise PolicyError(f"input holds a {kind.__name__}, not a JSON value")
    if failed:
        raise PolicyError("rego-cpp refused an input value")


_INPUT = _native.rego
_MAX_INPUT_DEPTH = 64


_REGO_ERROR = re.compile(r"\(error \d+:(?P<module>[^|\n]*)\|(?P<offset>\d+)\|\d+\s*\(errormsg (?P<length>\d+):")


def _compiler_message(text: str, modules: Mapping[str, str]) -> str:
    """regopy's error s-expression as one line: `module:line:column: message; ...`."""
    found = []
    for match in _REGO_ERROR.finditer(text):
        source, offset = modules.get(match["module"], ""), int(match["offset"])
        line = source.count("\n", 0, offset) + 1
        column = offset - source.rfind("\n", 0, offset)
        found.append(f"{match['module']}:{line}:{column}: {text[match.end():match.end() + int(match['length'])]}")
    return "; ".join(found) if found else " ".join(text.split())
