"""Store implementations, opened by URL."""

from __future__ import annotations

from ..records import StoreError
from ..store import Store
from .sqlite import SqliteStore, sqlite_path


async def open_store(url: str) -> Store:
    """The store a `[store] url` names: `sqlite:///path` (PostgreSQL comes with the scale-out issue)."""
    if url.startswith("sqlite:///"):
        try:
            path = sqlite_path(url)
        except ValueError as exc:
            raise StoreError(f"store.url: {exc}") from exc
        return await SqliteStore.open(path)
    raise StoreError("store.url: only sqlite:///path URLs are supported in this version")
