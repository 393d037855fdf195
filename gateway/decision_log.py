"""`[audit] decision_log`: each policy decision also as one OPA-style decision-log line (OPA DecisionLogs).

The audit store holds every decision already; this file is for tools that read OPA's format. Fields:
`decision_id`, `labels` (`app`, `engine`), `path`, `input`, `result`, `timestamp` (RFC 3339), `metrics`
(`timer_policy_decision_ns`), `bundles` (the revision), plus Deputy's `outcome` and `error`. The input is
the policy input, which holds verified claims, never a token. Every worker appends whole lines to the
same file (`O_APPEND`, one write per line).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from delegation.audit import AuditEvent
from delegation.observe import NoObserver
from delegation.policy import ENTRYPOINT

log = logging.getLogger(__name__)


class DecisionLogFile(NoObserver):
    """Appends a line for every token request the policy was asked about."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._path = path

    def decided(self, event: AuditEvent) -> None:
        if event.policy_input is None:
            return  # refused before the policy was asked
        line = decision_log_line(event)
        try:
            written = os.write(self._fd, line)
            while written < len(line):  # a short write (a full disk, a signal): finish the line
                written += os.write(self._fd, line[written:])
        except OSError as exc:  # a full disk must not fail the exchange: the audit store holds the record
            log.error("decision_log.write_failed", extra={"path": str(self._path), "error": str(exc)})

    def close(self) -> None:
        os.close(self._fd)


def decision_log_line(event: AuditEvent) -> bytes:
    """One JSON line; the input and result are the audit event's JSON text as it is, not parsed and
    written again."""
    entry: dict[str, Any] = {
        "decision_id": event.decision_id,
        "labels": {"app": "deputy", "engine": event.policy_engine},
        "path": ENTRYPOINT,
        "timestamp": datetime.fromtimestamp(event.at, UTC).isoformat().replace("+00:00", "Z"),
        "outcome": event.outcome,
        "error": event.error,
    }
    if event.policy_latency_us is not None:
        entry["metrics"] = {"timer_policy_decision_ns": event.policy_latency_us * 1000}
    if event.policy_revision:
        entry["bundles"] = {"deputy": {"revision": event.policy_revision}}
    documents = f',"input":{event.policy_input}' if event.policy_input is not None else ""
    if event.policy_result is not None:
        documents += f',"result":{event.policy_result}'
    return (json.dumps(entry, separators=(",", ":"))[:-1] + documents + "}\n").encode()
