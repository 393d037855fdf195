"""Bundles as `opa run -s -b FILE` reads them (REST reference items 17-19): a gzipped tarball's manifest,
modules and data, validated before activation with OPA's messages (`v1/bundle/bundle.go`)."""

from __future__ import annotations

import fnmatch
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.opa_store import BundleError, LoadedBundle, OpaError, errors_occurred, merged, read_module, slash
from tests.rego_v1 import Outline


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
        raise BundleError(errors_occurred(exc.errors) if isinstance(exc, OpaError) else f"{path}: {exc}") from exc


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
        data.update(merged(data, value))
        return
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    old = node.get(parts[-1])
    node[parts[-1]] = merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


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
    raise BundleError(f"manifest roots {shown} do not permit data at path '{slash(path)}' (hint: check bundle "
                      "directory structure)")
