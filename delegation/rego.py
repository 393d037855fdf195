"""The embedded engine: the policy compiled once into a rego-cpp bundle (regopy), evaluated per request."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from regopy import Interpreter, LogLevel
from regopy import rego_shared as _native

from token_exchange.rfc9068 import new_id

from .policy import ENTRYPOINT, Decision, PolicyError, PolicyInput, PolicySource

log = logging.getLogger(__name__)

_INPUT = _native.rego
_MAX_INPUT_DEPTH = 64
_REGO_ERROR = re.compile(r"\(error \d+:(?P<module>[^|\n]*)\|(?P<offset>\d+)\|\d+\s*\(errormsg (?P<length>\d+):")


class EmbeddedRego:
    """In-process Rego (regopy): compiled once into a bundle, evaluated per request (≈0.2 ms)."""

    engine = "embedded"

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

    async def start(self) -> None:
        """Nothing to open: the policy was compiled when the engine was made."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def problem(self) -> str | None:
        return None

    async def decide(self, query: PolicyInput) -> Decision:
        decision_id = new_id()
        try:
            set_input(self._runner, query.document)
            output = self._runner.query_bundle_entrypoint(self._bundle, ENTRYPOINT)
            results = output.results if output.ok() else []
        except Exception as exc:  # evaluation errors deny; they must never reach the client as a 500
            log.warning("policy.error", extra={"error": str(exc)[:500], "decision_id": decision_id})
            return Decision.deny("policy evaluation failed", revision=self.revision, decision_id=decision_id)
        if not results or not results[0].expressions:
            return Decision.deny("policy decision is undefined", revision=self.revision, decision_id=decision_id)
        return Decision.from_document(results[0].expressions[0], revision=self.revision, decision_id=decision_id)


def set_input(interpreter: Interpreter, document: Mapping[str, Any]) -> None:
    """Hand the input document to rego-cpp through its C input API.

    regopy's own `set_input` does the same walk with generic ABC checks and a C string buffer per
    value; this one dispatches on exact JSON types and passes bytes, about 40% faster, and it is the
    largest part of a decision. The C API takes NUL-terminated strings, so a string holding U+0000
    would reach the policy cut short: it raises instead (and the decision denies), as does anything
    that is not a JSON value.
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
        if b"\0" in (encoded := value.encode()):
            raise PolicyError(_HOLDS_NUL)
        failed = _INPUT.regoInputString(handle, encoded)
    elif kind is dict or kind is MappingProxyType:
        for key, item in value.items():
            if type(key) is not str or b"\0" in (encoded := key.encode()):
                raise PolicyError(f"input object keys must be strings; {_HOLDS_NUL}")
            failed = _INPUT.regoInputString(handle, encoded)
            _push(handle, item, depth + 1)
            if failed or _INPUT.regoInputObjectItem(handle):
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


_HOLDS_NUL = "no string may hold U+0000, which the engine would cut short"


def _compiler_message(text: str, modules: Mapping[str, str]) -> str:
    """regopy's error s-expression as one line: `module:line:column: message; ...`."""
    found = []
    for match in _REGO_ERROR.finditer(text):
        source, offset = modules.get(match["module"], ""), int(match["offset"])
        line = source.count("\n", 0, offset) + 1
        column = offset - source.rfind("\n", 0, offset)
        found.append(f"{match['module']}:{line}:{column}: {text[match.end():match.end() + int(match['length'])]}")
    return "; ".join(found) if found else " ".join(text.split())
