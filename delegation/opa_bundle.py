"""A policy directory as OPA takes it: a bundle file (OPA Bundles › Bundle File Format), or pushed into a
running server through its Policy and Data APIs (OPA REST › Policy API, Data API).

The bundle holds `.manifest` (`revision` = the directory's content revision, `roots` = the packages of its
modules and the top-level keys of its data, so OPA refuses anything else that writes there), each module
at its relative path, and one root `data.json` with the merged data. `opa run -s -b FILE` serves it.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
from opa_client import AsyncOpaClient
from opa_client.errors import RegoParseError

from .policy import PolicyError, PolicySource

_PACKAGE = re.compile(r"^package\s+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*$", re.MULTILINE)


def roots(source: PolicySource) -> list[str]:
    """The bundle's roots: each module's package (as a path) and each top-level data key."""
    packages = set()
    for name, text in source.modules.items():
        found = _PACKAGE.search(text)
        if found is None:
            raise PolicyError(f"{name}: no package declaration")
        packages.add(found[1].replace(".", "/"))
    every = packages | set(source.data)
    # OPA refuses a manifest whose roots overlap (Bundles › Multiple Sources): `deputy/lib` lies in `deputy`.
    return sorted(r for r in every if not any(r.startswith(f"{other}/") for other in every))


def write_bundle(source: PolicySource, out: Path) -> list[str]:
    """Write the bundle to `out` (gzipped tar); returns the names of the files in it."""
    manifest = {"revision": source.revision, "roots": roots(source)}
    files = {".manifest": json.dumps(manifest, indent=2) + "\n", **source.modules,
             "data.json": json.dumps(source.data, indent=2, sort_keys=True) + "\n"}
    with tarfile.open(out, "w:gz") as bundle:
        for name, text in files.items():
            encoded = text.encode()
            entry = tarfile.TarInfo(f"/{name}")
            entry.size, entry.mode = len(encoded), 0o644
            bundle.addfile(entry, io.BytesIO(encoded))
    return list(files)


async def push(source: PolicySource, client: AsyncOpaClient) -> list[str]:
    """Load the data (`PUT /v1/data/KEY` per top-level key) and then the modules (`PUT /v1/policies/PATH`,
    exactly as written: no v0-to-v1 rewriting) into a running OPA; returns what was loaded."""
    loaded = []
    for key, value in sorted(source.data.items()):
        if not isinstance(value, dict):
            raise PolicyError(f"data.{key}: OPA's Data API takes an object at each top-level key")
        await _put(f"data.{key}", client.update_or_create_data(value, key))
        loaded.append(f"data.{key}")
    for name, text in source.modules.items():
        await _put(name, client.update_policy_from_string(text, name, rego_compat=False))
        loaded.append(name)
    return loaded


async def _put(what: str, call: Awaitable[bool]) -> None:
    try:
        await call
    except RegoParseError as exc:
        raise PolicyError(f"{what}: OPA refused it: {exc}") from exc
    except aiohttp.ClientResponseError as exc:  # e.g. 401/403 from OPA's authorization, or a body not JSON
        raise PolicyError(f"{what}: OPA answered HTTP {exc.status}: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise PolicyError(f"{what}: cannot reach OPA: {type(exc).__name__}: {exc}") from exc
    except (ValueError, TypeError, AttributeError) as exc:  # the client reading an error body of another shape
        raise PolicyError(f"{what}: OPA answered something that is not an OPA response: {exc}") from exc
