"""Issue 7 item 10: audit events past `[audit] retention` are written out as JSON lines (a file per UTC
day, or standard output) and only then deleted from the store; 0 keeps every event in the store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from delegation.audit import AuditEvent
from delegation.store import AuditQuery, AuditRecord, Store
from delegation.stores import open_store
from gateway.audit_export import DailyFiles, retire_audit
from gateway.settings import AuditSettings, ConfigError, parse_settings

DAY = 86400
NOW = 1_800_000_000 - 1_800_000_000 % DAY + 12 * 3600  # noon, UTC


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path / 'deputy.db'}")
    yield opened
    await opened.close()


async def append(store: Store, *ages: int) -> None:
    for i, age in enumerate(ages):
        await store.append_audit(AuditEvent(decision_id=f"d{i}", at=NOW - age, action="exchange", outcome="granted"))


def day(offset: int) -> str:
    return datetime.fromtimestamp(NOW - offset * DAY, UTC).strftime("%Y-%m-%d")


async def test_issue7_10_events_past_retention_go_to_a_file_per_day_before_they_leave_the_store(
        store: Store, tmp_path: Path) -> None:
    await append(store, 3 * DAY, 3 * DAY - 60, 2 * DAY, 60)
    exported = tmp_path / "audit"
    assert await retire_audit(store, DailyFiles(exported), now=NOW, retention=DAY, batch=2) == 3
    files = sorted(p.name for p in exported.iterdir())
    assert files == [f"audit-{day(3)}.jsonl", f"audit-{day(2)}.jsonl"]
    lines = [json.loads(line) for name in files for line in (exported / name).read_text().splitlines()]
    assert [(e["decision_id"], e["action"]) for e in lines] == [("d0", "exchange"), ("d1", "exchange"),
                                                                ("d2", "exchange")]
    assert all(isinstance(e["id"], int) for e in lines)  # a consumer can drop a line written twice
    assert all((exported / name).stat().st_mode & 0o777 == 0o600 for name in files)
    assert [r.event.decision_id for r in await store.audit_events(AuditQuery())] == ["d3"]


async def test_issue7_10_retention_0_keeps_every_event_in_the_store(store: Store, tmp_path: Path) -> None:
    await append(store, 400 * DAY)
    assert await retire_audit(store, DailyFiles(tmp_path / "audit"), now=NOW, retention=0) == 0
    assert not (tmp_path / "audit").exists() and len(await store.audit_events(AuditQuery())) == 1


class Failing:
    async def write(self, records: Sequence[AuditRecord]) -> None:
        raise OSError(28, "No space left on device")


async def test_issue7_10_an_event_that_could_not_be_written_out_stays_in_the_store(store: Store) -> None:
    await append(store, 3 * DAY)
    with pytest.raises(OSError):
        await retire_audit(store, Failing(), now=NOW, retention=DAY)
    assert len(await store.audit_events(AuditQuery())) == 1


@pytest.mark.parametrize(("audit", "expected"), [
    ({}, AuditSettings(30 * DAY, "files", Path("/base/.deputy/audit"))),
    ({"retention": 0, "export": "stdout"}, AuditSettings(0, "stdout", Path("/base/.deputy/audit"))),
    ({"export_dir": "trail"}, AuditSettings(30 * DAY, "files", Path("/base/trail"))),
])
def test_issue7_10_audit_settings(audit: dict[str, object], expected: AuditSettings) -> None:
    assert parse_settings({"audit": audit}, base=Path("/base")).audit == expected


@pytest.mark.parametrize(("audit", "message"), [
    ({"retention": -1}, "audit.retention"), ({"export": "syslog"}, "audit.export"),
    ({"retension": 5}, "audit.retension: unknown key"), ({"retention": "30d"}, "audit.retention"),
])
def test_issue7_10_bad_audit_settings_name_the_key(audit: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"audit": audit}, base=Path("/base"))


def test_issue7_9_one_worker_of_two_sweeps(tmp_path: Path) -> None:
    """Both workers start their sweeper; only the one holding the sweep lock sweeps, and nothing fails."""
    import asyncio
    import sqlite3
    import subprocess
    import time

    from tests.conftest import make_setup
    from tests.delegation.test_store_contract import PRESENTED, event, task
    from tests.support import gateway_log, gateway_process

    setup = make_setup(tmp_path)
    database = setup.directory / "state" / "deputy.db"

    async def seed() -> None:
        store = await open_store(f"sqlite:///{database}")
        await store.record_task(task("overdue", deadline=int(time.time()) - 5), event("open_task", "overdue"),
                                presented=PRESENTED)
        await store.close()

    asyncio.run(seed())
    try:
        with gateway_process(setup.config, workers=2):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with sqlite3.connect(database) as db:
                    state = db.execute("SELECT state FROM tasks WHERE id = 'overdue'").fetchone()[0]
                if state == "expired":
                    break
                time.sleep(0.1)
            assert state == "expired"
            holders = subprocess.run(["fuser", str(database) + ".sweeper"], capture_output=True, text=True)
            if holders.returncode in (0, 1) and "not found" not in holders.stderr:
                assert len(holders.stdout.split()) == 1, holders  # one worker holds the sweep lock
        with sqlite3.connect(database) as db:
            expiries = db.execute("SELECT count(*) FROM audit_events WHERE action = 'expire'").fetchone()[0]
        assert expiries == 1
        assert "sweep_failed" not in gateway_log(setup.config).read_text()
    finally:
        setup.jwks_server.close()
