"""A test OPA: OPA's REST API (v1.x) on loopback, evaluated by a real Rego engine (regopy, rego-cpp).

The `opa` binary cannot be installed from this project's package sources, so Deputy's OPA-engine tests
and `bench/policy.py` run against this server. It follows `../shared/reference/opa-rest-api.md` (cited
as "item N") and OPA's server source (`v1/server/server.go`) for status codes, bodies and messages.

    running_opa(bundle=..., decision_logs=True)   # in process: uvicorn in a thread, a free port
    python -m tests.opa_server --addr 127.0.0.1:8181 [--bundle FILE] [--no-decision-logs]

To run the same tests against a real OPA, start one and name it; `opa_for_tests()` then yields its URL
(an `ExternalOpa`: no fault switches, and a `bundle` must be given to `opa run` instead):

    opa run -s --addr 127.0.0.1:8181 [-b bundle.tar.gz]
    DEPUTY_TEST_OPA_URL=http://127.0.0.1:8181 python -m pytest tests/...

Known differences from OPA, where regopy gives no better: compile-time checks are OPA v1's parse checks
(`tests/rego_v1.py`), rego-cpp's parser and data/rule path conflicts, so an undefined function or an
unsafe variable is reported when a query reaches it (500), not at `PUT /v1/policies`; policies carry no
`ast`; evaluation errors carry no `location`; `metrics`, `explain`, `instrument`, `pretty`, the Query,
Compile, Config and Status APIs, the v0 API, signed and delta bundles are not served; REST writes do not
traverse arrays.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import gzip
import json
import os
import re
import socket
import tarfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.error import URLError
from urllib.parse import unquote
from urllib.request import urlopen

import regopy
import uvicorn
import yaml
from regopy import Interpreter, LogLevel, NodeKind, RegoError
from regopy import rego_shared as _rego
from regopy.interpreter import Bundle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from delegation.policy import PolicyError
from delegation.rego import set_input
from tests.rego_v1 import Outline, outline

VERSION = f"deputy-test-opa (regopy {regopy.__version__})"
MSG_COMPILE = "error(s) occurred while compiling module(s)"
MSG_EVAL = "error(s) occurred while evaluating query"
INPUT_MISSING = {"code": "api_usage_warning", "message": "'input' key missing from the request"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_INTEGER = re.compile(r"[+-]?\d+")
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


# ---- the store: modules, data, bundles; compiled once per queried path ----------------------------------


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


_MISSING = object()


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

    def evaluate(self, path: tuple[str | int, ...], document: Any = _MISSING, *, strict: bool = False
                 ) -> tuple[bool, Any]:
        """`data.<path>` with `document` as input (none when left out): (defined, value). Raises OpaError."""
        with self._lock:
            runner = self._runner(strict=strict, with_input=document is not _MISSING)
            if document is not _MISSING:
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
            if if_none_match and _lookup(self.data, path) is not _MISSING:
                return False
            data = _written(self.data, path, value)
            conflicts = path_conflicts(self.outlines, data)
            if conflicts:
                raise bad_request(_errors_occurred(conflicts))
            self.data = data
            self._compiled.clear()
            return True

    def delete_data(self, path: tuple[str, ...]) -> None:
        """Remove a base document: 204, or 404 when it does not exist (item 12)."""
        with self._lock:
            self._check_scope(path)
            if _lookup(self.data, path) is _MISSING:
                raise OpaError(404, "resource_not_found", f"storage_not_found_error: {_slash(path)}: document "
                               "does not exist")
            if not path:
                raise bad_request("storage_invalid_patch_error: root cannot be removed")
            self.data = _written(self.data, path, _MISSING)
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
            data = _merged(_merged(self.data, dict(bundle.data)),
                           {"system": {"bundles": {bundle.name: {"manifest": dict(bundle.manifest)}}}})
            modules, outlines = {**self.modules, **bundle.modules}, {**self.outlines, **bundle.outlines}
            try:
                check_compiles(modules, outlines, data)
            except OpaError as exc:
                raise BundleError(_errors_occurred(exc.errors or [exc.body()])) from exc
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
        runner.set_input_term(json.dumps(document))


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


def _errors_occurred(errors: Sequence[Mapping[str, Any]]) -> str:
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


def _slash(path: Sequence[str]) -> str:
    return "/" + "/".join(path)


def _lookup(data: Any, path: Sequence[str]) -> Any:
    node = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _written(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of data with value at path (removed when _MISSING), parents made as objects (MakeDir)."""
    if not path:
        if not isinstance(value, dict):
            raise bad_request("storage_invalid_patch_error: root must be object")
        return value
    top = dict(data)
    node = top
    for depth, key in enumerate(path[:-1]):
        child = node.get(key, {})
        if not isinstance(child, dict):
            raise OpaError(404, "resource_conflict", f"storage_write_conflict_error: {_slash(path[:depth + 1])}")
        node[key] = node = dict(child)
    if value is _MISSING:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return top


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        merged[key] = _merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


# ---- bundles: `opa run -s -b FILE` (items 17-19) ---------------------------------------------------------


def read_bundle(file: Path, name: str | None = None) -> LoadedBundle:
    """A gzipped tarball read and validated as `opa run -b` does before activating it. Raises BundleError."""
    name = name or str(file)
    files = _bundle_files(file)
    if ".signatures.json" in files:  # item 22: a signed bundle without keys does not activate
        raise BundleError("verification key not provided")
    if "patch.json" in files:
        raise BundleError("delta bundles (patch.json) are not served by the test OPA")
    manifest = _manifest(files)
    roots = tuple(manifest["roots"])
    modules: dict[str, str] = {}
    outlines: dict[str, Outline] = {}
    data: dict[str, Any] = {}
    for path, content in sorted(files.items()):
        if path.endswith(".rego"):
            module_id = f"{name}/{path}"
            outlines[module_id] = _bundle_module(module_id, path, content, manifest)
            modules[module_id] = content.decode()
            _permit_package(roots, outlines[module_id].package, path)
        elif PurePosixPath(path).name in ("data.json", "data.yaml"):
            _insert(data, PurePosixPath(path).parent.parts, _bundle_data(path, content))
    _permit_data(roots, data, ())
    return LoadedBundle(name, manifest.get("revision", ""), roots, manifest, modules, data, outlines)


def _bundle_files(file: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(file, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
            return {_member_path(m.name): archive.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{file}: not a gzipped tarball: {exc}") from exc


def _member_path(name: str) -> str:
    return "/".join(part for part in PurePosixPath(name).parts if part not in ("/", "."))


def _manifest(files: Mapping[str, bytes]) -> dict[str, Any]:
    """Item 18: `.manifest` with `revision`, `roots` (absent: [""], everything), `rego_version`."""
    manifest: dict[str, Any] = {}
    for path, content in files.items():
        if path.endswith(".manifest"):
            try:
                manifest = json.loads(content)
            except ValueError as exc:
                raise BundleError(f"bundle load failed on manifest decode: {exc}") from exc
    if not isinstance(manifest.get("revision", ""), str):
        raise BundleError("bundle load failed on manifest decode: revision must be a string")
    roots = [str(root).strip("/") for root in manifest.get("roots", [""])]
    for at, first in enumerate(roots):
        for second in roots[at + 1:]:
            if _contains([first], second) or _contains([second], first):
                raise BundleError(f"manifest has overlapped roots: '{first}' and '{second}'")
    return {**manifest, "roots": roots}


def _bundle_module(module_id: str, path: str, content: bytes, manifest: Mapping[str, Any]) -> Outline:
    version = manifest.get("rego_version", 1)
    for pattern, file_version in manifest.get("file_rego_versions", {}).items():
        if fnmatch.fnmatch(path, pattern.lstrip("/")):
            version = file_version
    try:
        return read_module(module_id, content.decode(), rego_v1=version != 0)
    except (OpaError, UnicodeDecodeError) as exc:
        raise BundleError(_errors_occurred(exc.errors) if isinstance(exc, OpaError) else f"{path}: {exc}") from exc


def _bundle_data(path: str, content: bytes) -> Any:
    try:
        return yaml.safe_load(content) if path.endswith(".yaml") else json.loads(content)
    except (ValueError, yaml.YAMLError) as exc:
        raise BundleError(f"bundle load failed on /{path}: {exc}") from exc


def _insert(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    """Item 17: data.json lands at its directory's path; a root data.json merges at the root."""
    if not parts:
        if not isinstance(value, dict):
            raise BundleError("bundle load failed: a root data.json must hold an object")
        data.update(_merged(data, value))
        return
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    old = node.get(parts[-1])
    node[parts[-1]] = _merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


def _contains(roots: Sequence[str], path: str) -> bool:
    """OPA's RootPathsContain: some root is the path or a prefix of it, segment by segment."""
    parts = path.split("/") if path else []
    return any(root == "" or parts[:len(root.split("/"))] == root.split("/") for root in roots)


def _permit_package(roots: Sequence[str], package: tuple[str, ...], path: str) -> None:
    if not _contains(roots, "/".join(package)):
        shown = "[" + " ".join(roots) + "]"
        raise BundleError(f"manifest roots {shown} do not permit 'package {'.'.join(package)}' in module '/{path}'")


def _permit_data(roots: Sequence[str], node: Any, path: tuple[str, ...]) -> None:
    """Item 19: every data path lies under a root (OPA's dfs over the bundle's data)."""
    if path and _contains(roots, "/".join(path)):
        return
    if isinstance(node, dict) and (not path or any(_contains(["/".join(path)], root) for root in roots)):
        for key, child in node.items():
            _permit_data(roots, child, (*path, key))
        return
    shown = "[" + " ".join(roots) + "]"
    raise BundleError(f"manifest roots {shown} do not permit data at path '{_slash(path)}' (hint: check bundle "
                      "directory structure)")


# ---- the HTTP API --------------------------------------------------------------------------------------


class OpaServer:
    """The state behind the API: the store, decision logging, and the fault switches tests flip.

    Faults apply to decisions only (`/v1/data` reads): `delay_s` answers after sleeping, `fail_with`
    answers with that status and an OPA error body, `garbage` answers 200 with a body that is not JSON.
    """

    def __init__(self, *, decision_logs: bool = True) -> None:
        self.store = PolicyStore()
        self.decision_logs = decision_logs
        self.decision_log: deque[dict[str, Any]] = deque(maxlen=10_000)  # item 24's fields, one per decision
        self.delay_s = 0.0
        self.fail_with: int | None = None
        self.garbage = False
        self.url = ""

    def app(self) -> Starlette:
        routes = [Route("/health", self._health, methods=METHODS),
                  Route("/v1/data", self._data, methods=METHODS),
                  Route("/v1/data/{path:path}", self._data, methods=METHODS),
                  Route("/v1/policies", self._policies, methods=METHODS),
                  Route("/v1/policies/{path:path}", self._policy, methods=METHODS)]
        return Starlette(routes=routes)

    async def _health(self, request: Request) -> Response:
        """Item 15: 200 `{}` (bundles are activated before the server listens)."""
        return JSONResponse({}) if request.method == "GET" else _not_allowed()

    async def _data(self, request: Request) -> Response:
        try:
            if request.method in ("GET", "POST"):
                return await self._decide(request)
            if request.method == "PUT":
                value = _json_body(await request.body(), "")
                written = self.store.put_data(_storage_path(request, "/v1/data"), value,
                                              if_none_match=request.headers.get("if-none-match") == "*")
                return Response(status_code=204 if written else 304)
            if request.method == "DELETE":
                self.store.delete_data(_storage_path(request, "/v1/data"))
                return Response(status_code=204)
            return _not_allowed()
        except OpaError as exc:
            return _error(exc)

    async def _decide(self, request: Request) -> Response:
        """Items 1-7: `data.<path>`; `result` left out when undefined; `decision_id` when logging."""
        path = ref_path(_after(request, "/v1/data"))
        document = await _request_input(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            return _error(OpaError(self.fail_with, "internal_error", "injected failure (test OPA fault)"))
        if self.garbage:
            return Response(b"<html>this is not JSON", media_type="application/json")
        defined, value = self.store.evaluate(path, document, strict=bool_param(request, "strict-builtin-errors"))
        body: dict[str, Any] = {"result": value} if defined else {}
        if request.method == "POST" and document is _MISSING:
            body["warning"] = INPUT_MISSING
        if bool_param(request, "provenance"):
            body["provenance"] = self.store.provenance()
        if self.decision_logs:
            body["decision_id"] = self._log(request, path, document, body)
        return JSONResponse(body)

    def _log(self, request: Request, path: tuple[str | int, ...], document: Any, body: Mapping[str, Any]) -> str:
        """Item 24: one decision-log event per decision; the decision id goes back to the caller."""
        event: dict[str, Any] = {"decision_id": str(uuid.uuid4()), "path": "/".join(map(str, path)),
                                 "bundles": self.store.revisions(), "labels": {"version": VERSION},
                                 "requested_by": request.client.host if request.client else "",
                                 "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if document is not _MISSING:
            event["input"] = document
        if "result" in body:
            event["result"] = body["result"]
        self.decision_log.append(event)
        decision_id: str = event["decision_id"]
        return decision_id

    async def _policies(self, request: Request) -> Response:
        return JSONResponse({"result": self.store.policies()}) if request.method == "GET" else _not_allowed()

    async def _policy(self, request: Request) -> Response:
        """Items 8-10: PUT (text/plain Rego) → 200 `{}`, GET → `{"result": {"id", "raw"}}`, DELETE."""
        policy_id = unquote(_after(request, "/v1/policies").lstrip("/"))
        try:
            if request.method == "PUT":
                self.store.put_policy(policy_id, _text_body(await request.body()))
                return JSONResponse({})
            if request.method == "GET":
                return JSONResponse({"result": self.store.policy(policy_id)})
            if request.method == "DELETE":
                self.store.delete_policy(policy_id)
                return JSONResponse({})
            return _not_allowed()
        except OpaError as exc:
            return _error(exc)


def _error(exc: OpaError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


def _not_allowed() -> Response:
    """Item 6: an unsupported method is 405 (OPA answers it with an empty body)."""
    return Response(status_code=405)


def _after(request: Request, prefix: str) -> str:
    """The still-escaped path after prefix, so `%2F` stays inside its segment."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    return raw.decode("latin-1").split("?", 1)[0][len(prefix):]


def ref_path(raw: str) -> tuple[str | int, ...]:
    """Item 6: the URL path as a ref under `data`; segments that parse as integers index arrays."""
    path: list[str | int] = []
    for segment in raw.split("/"):
        if not segment:
            continue
        text = unquote(segment)
        if '"' in text:  # OPA: makeRego's error, which writer.ErrorAuto turns into a 500
            raise OpaError(500, "internal_error", f"invalid_parameter: invalid path: invalid ref term '{text}'")
        path.append(int(text) if _INTEGER.fullmatch(text) else text)
    return tuple(path)


def _storage_path(request: Request, prefix: str) -> tuple[str, ...]:
    return tuple(unquote(segment) for segment in _after(request, prefix).split("/") if segment)


def bool_param(request: Request, name: str) -> bool:
    """Item 4 (OPA's getBoolParam): present without a value is true; else any value equal to `true`,
    ignoring case."""
    values = request.query_params.getlist(name)
    if not values:
        return False
    return values == [""] or any(value.lower() == "true" for value in values)


async def _request_input(request: Request) -> Any:
    """The input document (OPA's readInputPostV1 / readInputGetV1), or _MISSING. 400 when malformed."""
    if request.method == "GET":
        values = request.query_params.getlist("input")
        return _json_body(values[-1].encode(), "parameter contains malformed input document: ") if values \
            else _MISSING
    body = await request.body()
    if "gzip" in request.headers.get("content-encoding", ""):
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise bad_request(f"could not decompress the body: {exc}") from exc
    if not body.strip():
        return _MISSING
    if "yaml" in request.headers.get("content-type", ""):
        document = _yaml_body(body)
    else:
        document = _json_body(body, "body contains malformed input document: ")
    if not isinstance(document, dict):
        raise bad_request(f"body contains malformed input document: json: cannot unmarshal {_kind(document)} "
                          "into Go value of type types.DataRequestV1")
    return _MISSING if document.get("input") is None else document["input"]  # `"input": null` is no input


def _json_body(body: bytes, prefix: str) -> Any:
    """One JSON value, as Go's json.Decoder reads it (trailing bytes are not looked at)."""
    try:
        value, _ = json.JSONDecoder().raw_decode(body.decode().lstrip())
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"{prefix}{exc if body.strip() else 'EOF'}") from exc
    return value


def _yaml_body(body: bytes) -> Any:
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise bad_request(f"body contains malformed input document: {exc}") from exc


def _text_body(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        raise bad_request(str(exc)) from exc


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "bool", type(None): "null"}.get(type(value), "number")


# ---- runners -------------------------------------------------------------------------------------------


class RunningOpa(OpaServer):
    """The test OPA serving on a loopback port from a thread with its own event loop; `stop()` is "down"."""

    def __init__(self, *, decision_logs: bool = True) -> None:
        super().__init__(decision_logs=decision_logs)
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sock = _loopback_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, lifespan="off")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="test-opa")
        self._thread.start()
        _wait_until_healthy(self.url, self._thread)

    def stop(self) -> None:
        if self._uvicorn is not None and self._thread is not None:
            self._uvicorn.should_exit = True
            self._thread.join(timeout=10)
            self._uvicorn = None


@dataclass(frozen=True, slots=True)
class ExternalOpa:
    """A real OPA named by DEPUTY_TEST_OPA_URL: only its URL, no fault switches."""

    url: str


@contextmanager
def running_opa(*, bundle: Path | None = None, decision_logs: bool = True) -> Iterator[RunningOpa]:
    """The test OPA on a free loopback port until the block ends, serving `bundle` like `opa run -s -b`."""
    server = RunningOpa(decision_logs=decision_logs)
    if bundle is not None:
        server.store.activate(read_bundle(bundle, str(bundle)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def opa_for_tests(*, bundle: Path | None = None, decision_logs: bool = True) -> Iterator[RunningOpa | ExternalOpa]:
    """The real OPA at DEPUTY_TEST_OPA_URL when it is set (started by hand, with any bundle given to
    `opa run -b`), else the test OPA from `running_opa`."""
    external = os.environ.get("DEPUTY_TEST_OPA_URL")
    if external:
        yield ExternalOpa(external.rstrip("/"))
        return
    with running_opa(bundle=bundle, decision_logs=decision_logs) as server:
        yield server


def _loopback_socket(host: str, port: int) -> socket.socket:
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the test OPA listens on loopback only, not {host}")
    family = socket.AF_INET6 if host == "::1" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _wait_until_healthy(url: str, thread: threading.Thread, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the test OPA stopped while starting")
        try:
            with urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            time.sleep(0.02)
    raise RuntimeError(f"the test OPA did not answer {url}/health within {timeout}s")


class _AnnouncingServer(uvicorn.Server):
    """Prints the URL once listening; uvicorn handles SIGTERM and SIGINT in the main thread."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(self._url, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.opa_server --addr 127.0.0.1:8181 [--bundle FILE] [--no-decision-logs]`."""
    parser = argparse.ArgumentParser(prog="python -m tests.opa_server", description=__doc__.split("\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:8181", help="loopback HOST:PORT (port 0: any free port)")
    parser.add_argument("--bundle", action="append", default=[], help="a bundle tarball, as `opa run -b FILE`")
    parser.add_argument("--no-decision-logs", action="store_true", help="answer without decision_id")
    args = parser.parse_args(argv)
    host, _, port = args.addr.rpartition(":")
    server = OpaServer(decision_logs=not args.no_decision_logs)
    try:
        for file in args.bundle:
            server.store.activate(read_bundle(Path(file), file))
        sock = _loopback_socket(host.strip("[]") or "127.0.0.1", int(port))
    except (BundleError, ValueError, OSError) as exc:
        parser.exit(1, f"error: {exc}\n")
    shown = f"[{sock.getsockname()[0]}]" if sock.family == socket.AF_INET6 else sock.getsockname()[0]
    server.url = f"http://{shown}:{sock.getsockname()[1]}"
    config = uvicorn.Config(server.app(), log_level="warning", access_log=False, lifespan="off")
    _AnnouncingServer(config, server.url).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
