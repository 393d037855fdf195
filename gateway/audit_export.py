"""Audit retention: events older than `[audit] retention` are written out as JSON lines, then deleted
from the store, so the trail in the store stays bounded and nothing is lost (docs/operations.md)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from delegation.store import AuditRecord, Maintenance

from .settings import AuditSettings

EXPORT_BATCH = 1000


class AuditExport(Protocol):
    async def write(self, records: Sequence[AuditRecord]) -> None:
        """Keep these records outside the store, durably, or raise OSError."""
        ...


class DailyFiles:
    """`<directory>/audit-YYYY-MM-DD.jsonl` per UTC day of the events, appended to, fsynced, owner-only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def write(self, records: Sequence[AuditRecord]) -> None:
        await asyncio.to_thread(self._write, records)

    def _write(self, records: Sequence[AuditRecord]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        by_day: dict[str, list[str]] = {}
        for record in records:
            day = datetime.fromtimestamp(record.event.at, UTC).strftime("%Y-%m-%d")
            by_day.setdefault(day, []).append(json.dumps(record.as_dict()) + "\n")
        for day, lines in by_day.items():
            fd = os.open(self.directory / f"audit-{day}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.writelines(lines)
                out.flush()
                os.fsync(out.fileno())


class StandardOutput:
    """One JSON line per event on standard output, for a log shipper."""

    async def write(self, records: Sequence[AuditRecord]) -> None:
        sys.stdout.writelines(json.dumps(record.as_dict()) + "\n" for record in records)
        sys.stdout.flush()


def audit_export(settings: AuditSettings) -> AuditExport:
    return StandardOutput() if settings.export == "stdout" else DailyFiles(settings.export_dir)


async def retire_audit(store: Maintenance, export: AuditExport, *, now: int, retention: int,
                       batch: int = EXPORT_BATCH) -> int:
    """Write out, then delete, every event older than `retention` seconds; a batch is deleted only once it
    is written (a crash in between writes it again: each line carries its `id`). Returns how many."""
    if retention == 0:
        return 0
    retired = 0
    while records := await store.audit_before(now - retention, batch):
        await export.write(records)
        retired += await store.drop_audit([record.id for record in records])
        if len(records) < batch:
            break
    return retired
