"""The test OPA's store: policies, data and bundles, evaluated by regopy (rego-cpp) per queried path.

Each queried path is compiled once into a regopy bundle and then only evaluated; every write clears the
compiled bundles (OPA caches prepared queries per path and resets them on a store commit the same way).
Writes follow OPA's storage and compiler checks, with OPA's messages (`v1/server/server.go`, `v1/storage`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import regopy
from regopy import Interpreter, LogLevel, NodeKind, RegoError
from regopy import rego_shared as _rego
from regopy.interpreter import Bundle

from delegation.policy import PolicyError
from delegation.rego import set_input
from tests.rego_v1 import Outline, outline

VERSION = f"deputy-test-opa (regopy {regopy.__version__})"
MSG_COMPILE = "error(s) occurred while compiling module(s)"
MSG_EVAL = "error(s) occurred while evaluating query"
_REGO_ERROR = re.compile(r"\(error(?: (\d+):|\s)")  # `(error 1:name|offset|length`, or `(error` alone
_REGO_ERROR_AT = re.compile(r"\|(\d+)\|\d+\s*\(errormsg (\d+):")
_REGO_MESSAGE = re.compile(r"\(errormsg (\d+):")


class OpaError(Exception):
    """A failure in OPA's error shape (item 13): the HTTP status, `code`, `message` and `errors`."""

    def __init__(self, status: int, code: str, message: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.errors = status, code, message, list(errors)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


class BundleError(Exception):
    """A bundle `opa run -b` would refuse to activate (items 17-19)."""


def bad_request(message: str) -> OpaError:
    return OpaError(400, "invalid_parameter", message)


def ast_error(code: str, message: str, file: str, row: int, col: int) -> dict[str, Any]:
    """One entry of `errors` (item 13), as OPA's `ast.Error` serialises it."""
    return {"code": code, "message": message, "location": {"file": file, "row": row, "col": col}}




@dataclass(frozen=True, slots=True)
class LoadedBundle:
    """A bundle activated at start-up: its name (the path given, as `opa run -b` names it) and manifest."""

    name: str
    revision: str
    roots: tuple[str, ...]
    manifest: Mapping[str, Any]
    modules: Mapping[str, str]
    data: Mapping[str, Any]
    outlines: Mapping[str, Outline] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Target:
    """What regopy compiles for a queried path: an entrypoint (or, when a segment holds `/`, a query)."""

    entrypoint: str | None
    query: str | None


MISSING: Any = object()  # no input, no document


class PolicyStore:
    """Policies, data and bundles behind the API. Every write clears the compiled bundles, so each queried
    path is compiled once per change and then only evaluated (OPA caches prepared queries the same way)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.modules: dict[str, str] = {}
        self.outlines: dict[str, Outline] = {}
        self.data: dict[str, Any] = {}
        self.bundles: dict[str, LoadedBundle] = {}
        self.compilations = 0
        self._compiled: dict[_Target, Bundle] = {}
        self._runners: dict[tuple[bool, bool], Interpreter] = {}

    # -- decisions (items 1-7)

    def evaluate(self, path: tuple[str | int, ...], document: Any = MISSING, *, strict: bool = False
                 ) -> tuple[bool, Any]:
        """`data.<path>` with `document` as input (none when left out): (defined, value). Raises OpaError."""
        with self._lock:
            runner = self._runner(strict=strict, with_input=document is not MISSING)
            if document is not MISSING:
                _feed(runner, document)
            if not path:
                return True, self._root(runner)
            prefix = _entry_prefix(path)
            defined, value = self._run(runner, _target(path[:prefix]))
            return _walk(value, path[prefix:]) if defined else (False, None)

    def _root(self, runner: Interpreter) -> dict[str, Any]:
        """`data` itself, key by key: rego-cpp leaves base documents out of a query of the whole of `data`."""
        keys = set(self.data) | {o.package[0] for o in self.outlines.values() if o.package}
        document = {}
        for key in sorted(keys):
            defined, value = self._run(runner, _target((key,)))
            if defined:
                document[key] = value
        return document

    def _run(self, runner: Interpreter, target: _Target) -> tuple[bool, Any]:
        bundle = self._compiled.get(target) or self._compile(target)
        try:
            if target.entrypoint is not None:
                handle = _rego.rego_bundle_query_entrypoint(runner._impl, bundle._impl, target.entrypoint)
            else:
                handle = _rego.rego_bundle_query(runner._impl, bundle._impl)
        except RegoError as exc:
            raise OpaError(500, "internal_error", MSG_EVAL, _regopy_errors(str(exc), self.modules)) from exc
        try:
            return _read_output(handle)
        finally:
            _rego.rego_free_output(handle)

    def _compile(self, target: _Target) -> Bundle:
        entrypoints = [target.entrypoint] if target.entrypoint is not None else []
        try:
            bundle = _builder(self.modules, self.data).build(target.query, entrypoints)
        except RegoError as exc:
            raise OpaError(500, "internal_error", MSG_EVAL, _regopy_errors(str(exc), self.modules)) from exc
        self._compiled[target] = bundle
        self.compilations += 1
        return bundle

    def _runner(self, *, strict: bool, with_input: bool) -> Interpreter:
        """One interpreter per mode, so a request without input never sees an earlier request's input."""
        runner = self._runners.get((strict, with_input))
        if runner is None:
            runner = self._runners[strict, with_input] = _quiet()
            runner.strict_built_in_errors = strict
        return runner

    # -- provenance (item 4, `?provenance`)

    def provenance(self) -> dict[str, Any]:
        """OPA's `ProvenanceV1`; `bundles` maps each bundle's name to its manifest revision."""
        found: dict[str, Any] = {"version": VERSION, "build_commit": "", "build_timestamp": "", "build_hostname": ""}
        with self._lock:
            if self.bundles:
                found["bundles"] = {name: {"revision": b.revision} for name, b in self.bundles.items()}
        return found

    def revisions(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {name: {"revision": b.revision} for name, b in self.bundles.items()}

    # -- the Policy API (items 8-10)

    def put_policy(self, policy_id: str, text: str) -> None:
        """Parse, check and compile before installing (item 8); refuse a bundle's package (item 9)."""
        with self._lock:
            if policy_id in self.outlines:
                self._check_scope(self.outlines[policy_id].package)
            if self.modules.get(policy_id) == text:
                return
            module = read_module(policy_id, text)
            self._check_scope(module.package)
            modules, outlines = {**self.modules, policy_id: text}, {**self.outlines, policy_id: module}
            check_compiles(modules, outlines, self.data)
            self.modules, self.outlines = modules, outlines
            self._compiled.clear()

    def policies(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"id": key, "raw": self.modules[key]} for key in sorted(self.modules)]

    def policy(self, policy_id: str) -> dict[str, str]:
        with self._lock:
            if policy_id not in self.modules:
                raise _policy_not_found(policy_id)
            return {"id": policy_id, "raw": self.modules[policy_id]}

    def delete_policy(self, policy_id: str) -> None:
        with self._lock:
            if policy_id not in self.modules:
                raise _policy_not_found(policy_id)
            self._check_scope(self.outlines[policy_id].package)
            del self.modules[policy_id], self.outlines[policy_id]
            self._compiled.clear()

    # -- the Data API's writes (items 11-12)

    def put_data(self, path: tuple[str, ...], value: Any, *, if_none_match: bool = False) -> bool:
        """Write a base document, creating parents (item 11). False: it exists and `If-None-Match: *`."""
        with self._lock:
            self._check_scope(path)
            if if_none_match and _lookup(self.data, path) is not MISSING:
                return False
            data = _written(self.data, path, value)
            conflicts = path_conflicts(self.outlines, data)
            if conflicts:
                raise bad_request(errors_occurred(conflicts))
            self.data = data
            self._compiled.clear()
            return True

    def patch_data(self, root: tuple[str, ...], operations: Any) -> None:
        """Item 12: JSON Patch (RFC 6902) `add`, `remove`, `replace` under root, all or nothing; 204."""
        with self._lock:
            data = self.data
            for operation in operations if isinstance(operations, list) else [operations]:
                kind, path, value = _patch_operation(root, operation)
                self._check_scope(path)
                data = _patched(data, kind, path, value)
            conflicts = path_conflicts(self.outlines, data)
            if conflicts:
                raise bad_request(errors_occurred(conflicts))
            self.data = data
            self._compiled.clear()

    def delete_data(self, path: tuple[str, ...]) -> None:
        """Remove a base document: 204, or 404 when it does not exist (item 12)."""
        with self._lock:
            self._check_scope(path)
            if _lookup(self.data, path) is MISSING:
                raise OpaError(404, "resource_not_found", f"storage_not_found_error: {slash(path)}: document "
                               "does not exist")
            if not path:
                raise bad_request("storage_invalid_patch_error: root cannot be removed")
            self.data = _written(self.data, path, MISSING)
            self._compiled.clear()

    def _check_scope(self, path: Sequence[str]) -> None:
        """Item 9: writes under an activated bundle's roots are refused, with OPA's messages (checkPathScope)."""
        if self.bundles and not path:
            raise bad_request("can't write to document root with bundle roots configured")
        for bundle in self.bundles.values():
            for root in bundle.roots:
                if root == "":
                    raise bad_request(f'all paths owned by bundle "{bundle.name}"')
                if all(a == b for a, b in zip(path, root.split("/"), strict=False)):
                    raise bad_request(f'path {"/".join(path)} is owned by bundle "{bundle.name}"')

    # -- bundles (items 17-19)

    def activate(self, bundle: LoadedBundle) -> None:
        """Install a validated bundle's modules and data, and its manifest under `data.system.bundles`."""
        with self._lock:
            data = merged(merged(self.data, dict(bundle.data)),
                           {"system": {"bundles": {bundle.name: {"manifest": dict(bundle.manifest)}}}})
            modules, outlines = {**self.modules, **bundle.modules}, {**self.outlines, **bundle.outlines}
            try:
                check_compiles(modules, outlines, data)
            except OpaError as exc:
                raise BundleError(errors_occurred(exc.errors or [exc.body()])) from exc
            self.data, self.modules, self.outlines = data, modules, outlines
            self.bundles[bundle.name] = bundle
            self._compiled.clear()


def _quiet() -> Interpreter:
    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE  # errors come back in the exception, not on stdout
    return interpreter


def _builder(modules: Mapping[str, str], data: Mapping[str, Any]) -> Interpreter:
    builder = _quiet()
    builder.add_data(dict(data))
    for name, text in modules.items():
        builder.add_module(name, text)
    return builder


def _feed(runner: Interpreter, document: Any) -> None:
    """Deputy's fast C-API input path; JSON text for what it refuses (U+0000, deep nesting, huge ints)."""
    try:
        if not isinstance(document, dict):
            raise PolicyError("not an object")
        set_input(runner, document)
    except PolicyError:
        try:
            runner.set_input_term(json.dumps(document))
        except (RegoError, ValueError) as exc:  # e.g. a number beyond float range, which Python reads as inf
            raise bad_request(f"body contains malformed input document: {exc}") from exc


def _entry_prefix(path: tuple[str | int, ...]) -> int:
    """How many leading segments regopy resolves: up to the first array index."""
    for at, segment in enumerate(path):
        if isinstance(segment, int):
            return at
    return len(path)


def _target(prefix: tuple[str | int, ...]) -> _Target:
    names = [str(segment) for segment in prefix]
    if any("/" in name for name in names):  # an escaped %2F: not expressible as an entrypoint
        return _Target(None, "data" + "".join(f"[{json.dumps(name)}]" for name in names))
    return _Target("/".join(names), None)


def _walk(value: Any, rest: tuple[str | int, ...]) -> tuple[bool, Any]:
    """The segments after the first array index, as OPA's ref evaluation reads them."""
    for key in rest:
        indexes = isinstance(key, int) and isinstance(value, list) and 0 <= key < len(value)
        if not (indexes or (isinstance(key, str) and isinstance(value, dict) and key in value)):
            return False, None
        value = value[key]
    return True, value


def _read_output(handle: int) -> tuple[bool, Any]:
    if not _rego.rego_output_ok(handle):
        raise OpaError(500, "internal_error", MSG_EVAL, _node_errors(_rego.rego_output_node(handle)))
    text = _rego.rego_output_string(handle)
    if text == "undefined":
        return False, None
    if not text.startswith("{"):  # an error rego-cpp reports as an ok output, e.g. an unknown function
        raise OpaError(500, "internal_error", MSG_EVAL, _regopy_errors(text, {}, "eval_internal_error"))
    return True, json.loads(text)["expressions"][0]


def _node_errors(node: int) -> list[dict[str, Any]]:
    """An ErrorSeq node's errors: each an Error with an ErrorMessage and an ErrorCode child."""
    errors = []
    for at in range(_rego.rego_node_size(node)):
        error = _rego.rego_node_get(node, at)
        found = {"code": "eval_internal_error", "message": "evaluation failed"}
        for part in (_rego.rego_node_get(error, i) for i in range(_rego.rego_node_size(error))):
            kind = _rego.rego_node_type(part)
            if kind in (NodeKind.ErrorMessage, NodeKind.ErrorCode) and (value := _rego.rego_node_value(part)):
                found["message" if kind == NodeKind.ErrorMessage else "code"] = value
        errors.append(found)
    return errors


def _regopy_errors(text: str, modules: Mapping[str, str], code: str = "rego_parse_error") -> list[dict[str, Any]]:
    """regopy's error s-expression as `errors` entries, located in the module that failed when it says."""
    errors: list[dict[str, Any]] = []
    for match in _REGO_ERROR.finditer(text):
        name = text[match.end():match.end() + int(match[1])] if match[1] else ""
        place = _REGO_ERROR_AT.match(text, match.end() + len(name)) if match[1] else None
        said = place or _REGO_MESSAGE.search(text, match.end())
        if said is None:
            continue
        message = text[said.end():said.end() + int(said[said.lastindex or 1])]
        if place is None:
            errors.append({"code": code, "message": message})
            continue
        source = modules.get(name, "").encode()[:int(place[1])]
        errors.append(ast_error(code, message, name, source.count(b"\n") + 1, len(source) - source.rfind(b"\n")))
    return errors or [{"code": code, "message": " ".join(text.split())[:500]}]


def read_module(policy_id: str, text: str, *, rego_v1: bool = True) -> Outline:
    """Parse one module as OPA v1 would before installing it: 400 with `errors` when it does not parse."""
    module = outline(text, rego_v1=rego_v1)
    if module.empty:
        raise bad_request("empty module")
    problems = [ast_error(p.code, p.message, policy_id, p.row, p.col) for p in module.problems]
    if not problems:
        try:
            _quiet().add_module(policy_id, text)
        except RegoError as exc:
            problems = _regopy_errors(str(exc), {policy_id: text})
    if problems:
        raise OpaError(400, "invalid_parameter", MSG_COMPILE, problems)
    return module


def check_compiles(modules: Mapping[str, str], outlines: Mapping[str, Outline], data: Mapping[str, Any]) -> None:
    """All modules together, with the data: path conflicts (rego_compile_error), then regopy's build."""
    conflicts = path_conflicts(outlines, data)
    if conflicts:
        raise OpaError(400, "invalid_parameter", MSG_COMPILE, conflicts)
    packages = sorted({"/".join(o.package) for o in outlines.values() if o.package})
    if not packages:
        return
    try:
        _builder(modules, data).build(None, packages)
    except RegoError as exc:
        raise OpaError(400, "invalid_parameter", MSG_COMPILE,
                       _regopy_errors(str(exc), modules, "rego_compile_error")) from exc


def path_conflicts(outlines: Mapping[str, Outline], data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OPA's CheckPathConflicts: a rule's path must not hold base data (storage.NonEmpty)."""
    found, seen = [], set()
    for policy_id, module in sorted(outlines.items()):
        for rule in module.rules:
            if rule.path not in seen and _non_empty(data, rule.path):
                seen.add(rule.path)
                message = f"conflicting rule for data path {'/'.join(rule.path)} found"
                found.append(ast_error("rego_compile_error", message, policy_id, rule.row, rule.col))
    return found


def _non_empty(data: Any, path: tuple[str, ...]) -> bool:
    """storage.NonEmpty: a value at the path (not an empty object), or a non-object on the way there."""
    node = data
    for key in path:
        if not isinstance(node, dict):
            return True
        if key not in node:
            return False
        node = node[key]
    return not (isinstance(node, dict) and not node)


def errors_occurred(errors: Sequence[Mapping[str, Any]]) -> str:
    """Go's `ast.Errors.Error()`: `1 error occurred: file:row: code: message`."""
    lines = []
    for error in errors:
        where = error.get("location")
        place = f"{where['file']}:{where['row']}: " if where else ""
        lines.append(f"{place}{error['code']}: {error['message']}")
    if len(lines) == 1:
        return f"1 error occurred: {lines[0]}"
    return f"{len(lines)} errors occurred:\n" + "\n".join(lines)


def _policy_not_found(policy_id: str) -> OpaError:
    return OpaError(404, "resource_not_found", f'storage_not_found_error: policy id "{policy_id}"')


def slash(path: Sequence[str]) -> str:
    return "/" + "/".join(path)


def _child(node: Any, key: str) -> Any:
    """A storage path step: an object's key, or an array's index written in decimal."""
    if isinstance(node, dict):
        return node.get(key, MISSING)
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    return MISSING


def _lookup(data: Any, path: Sequence[str]) -> Any:
    node = data
    for key in path:
        node = _child(node, key)
        if node is MISSING:
            break
    return node


def _written(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of data with value at path (removed when MISSING); missing parents become objects (MakeDir),
    and a step through anything else is OPA's write conflict."""
    if not path:
        if not isinstance(value, dict):
            raise bad_request("storage_invalid_patch_error: root must be object")
        return value
    top: dict[str, Any] = dict(data)
    node: dict[str, Any] | list[Any] = top
    for depth, key in enumerate(path):
        last = depth == len(path) - 1
        child = value if last else _child(node, key)
        if not last:
            if child is MISSING and isinstance(node, dict):
                child = {}
            if not isinstance(child, dict | list):
                raise OpaError(404, "resource_conflict", "storage_write_conflict_error: "
                               + slash(path[:depth] if child is MISSING else path[:depth + 1]))
            child = dict(child) if isinstance(child, dict) else list(child)
        _put(node, key, child, slash(path))
        if not last:
            node = child
    return top


def _put(node: dict[str, Any] | list[Any], key: str, value: Any, where: str) -> None:
    if isinstance(node, dict):
        if value is MISSING:
            del node[key]
        else:
            node[key] = value
        return
    if not (key.isdigit() and int(key) < len(node)):
        raise OpaError(404, "resource_not_found", f"storage_not_found_error: {where}: array index out of range")
    if value is MISSING:
        del node[int(key)]
    else:
        node[int(key)] = value


def _patch_operation(root: tuple[str, ...], operation: Any) -> tuple[str, tuple[str, ...], Any]:
    if not isinstance(operation, dict) or operation.get("op") not in ("add", "remove", "replace"):
        raise bad_request(f"bad patch operation: {operation.get('op') if isinstance(operation, dict) else operation}")
    pointer = operation.get("path", "")
    if not isinstance(pointer, str):
        raise bad_request(f"bad patch path: {pointer}")
    parts = [unquote(p).replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/") if p]
    return operation["op"], (*root, *parts), operation.get("value")


def _patched(data: dict[str, Any], kind: str, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """One patch operation: the parent must exist (404), an array takes an index or `-` (append)."""
    if not path:
        if kind == "remove":
            raise bad_request("storage_invalid_patch_error: root cannot be removed")
        return _written(data, path, value)
    parent, key = _lookup(data, path[:-1]), path[-1]
    if isinstance(parent, list):
        return _written(data, path[:-1], _patched_array(parent, kind, path, value))
    if not isinstance(parent, dict) or (kind != "add" and key not in parent):
        raise OpaError(404, "resource_not_found", f"storage_not_found_error: {slash(path)}: document does not exist")
    return _written(data, path, MISSING if kind == "remove" else value)


def _patched_array(items: list[Any], kind: str, path: tuple[str, ...], value: Any) -> list[Any]:
    key = path[-1]
    at = len(items) if key == "-" else int(key) if key.isdigit() else -1
    if not 0 <= at <= (len(items) if kind == "add" else len(items) - 1):
        raise OpaError(404, "resource_not_found", f"storage_not_found_error: {slash(path)}: array index out of range")
    changed = list(items)
    if kind == "add":
        changed.insert(at, value)
    elif kind == "replace":
        changed[at] = value
    else:
        del changed[at]
    return changed


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """extra deep-merged over base: objects merge key by key, anything else replaces."""
    result = dict(base)
    for key, value in extra.items():
        old = result.get(key)
        result[key] = merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return result
