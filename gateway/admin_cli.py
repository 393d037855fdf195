"""`deputy tasks|revoke|audit`: the admin operations from the command line, on the configured store.

The operator's authority is access to the gateway's state (the config and its 0600 database); every
action is audited as `cli:<user>`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from delegation.admin import NotFound, TaskAdmin
from delegation.store import AuditQuery, Store, TaskQuery
from delegation.stores import open_store
from delegation.tasks import COMPLETED, REVOKED
from token_exchange.errors import InvalidRequest

from .admin_views import agent_label, revoked_party, task_view
from .settings import ConfigError, load_settings

T = TypeVar("T")


def add_commands(commands: Any, config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    tasks = commands.add_parser("tasks", help="list, inspect, complete or revoke tasks")
    actions = tasks.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="tasks, newest first")
    listing.add_argument("--agent", help="only tasks of this agent (a SPIFFE ID, or a workload id at any issuer)")
    listing.add_argument("--user", help="only tasks of this user (sub)")
    listing.add_argument("--state", choices=["open", "completed", "revoked", "expired"])
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(run=_list)
    for name, run, text in (("show", _show, "one task: its chain, children and tokens"),
                            ("complete", _complete, "complete a task and everything derived from it"),
                            ("revoke", _revoke_task, "revoke a task and everything derived from it")):
        action = actions.add_parser(name, help=text)
        action.add_argument("task_id")
        action.set_defaults(run=run)
        config_option(action)
    config_option(listing)

    revoke = commands.add_parser("revoke", help="revoke every open task of an agent, a trust domain or a user")
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", help="an agent: its SPIFFE ID, or a Kubernetes or OIDC workload id with --issuer")
    who.add_argument("--trust-domain", help="every agent of a SPIFFE trust domain")
    who.add_argument("--user", help="a user's sub")
    revoke.add_argument("--issuer", help="the workload issuer of a non-SPIFFE --agent (required), or the subject "
                                         "issuer of --user (default: that sub at every subject issuer)")
    revoke.set_defaults(run=_revoke_matching)
    config_option(revoke)

    audit = commands.add_parser("audit", help="the audit trail, newest first")
    audit.add_argument("--task")
    audit.add_argument("--agent")
    audit.add_argument("--user")
    audit.add_argument("--since", type=int, help="unix time")
    audit.add_argument("--until", type=int, help="unix time")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(run=_audit)
    config_option(audit)


def _with_store(args: argparse.Namespace, work: Callable[[Store], Awaitable[T]]) -> T:
    settings = load_settings(args.config)

    async def run() -> T:
        store = await open_store(settings.store_url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _operator() -> str:
    return f"cli:{getpass.getuser()}"


def _list(args: argparse.Namespace) -> int:
    tasks = _with_store(args, lambda s: s.tasks(TaskQuery(agent=args.agent, user=args.user, state=args.state,
                                                          limit=args.limit)))
    rows = [(t.id[:12], t.state, agent_label(t.agent.id, t.agent.domain), t.user_subject, str(t.scope),
             _when(t.deadline), t.depth) for t in tasks]
    print(table(("TASK", "STATE", "AGENT", "USER", "SCOPE", "DEADLINE", "DEPTH"), rows))
    return 0


def _show(args: argparse.Namespace) -> int:
    detail = _with_store(args, lambda s: s.task_detail(args.task_id))
    if detail is None:
        raise ConfigError(f"task {args.task_id}: not found")
    task = detail.task
    view = {**task_view(task), "agent": agent_label(task.agent.id, task.agent.domain)}
    for key in ("id", "state", "agent", "purpose", "scope", "audiences", "parent_id", "root_id"):
        print(f"{key:<10} {view[key]}")
    print(f"{'user':<10} {task.user_subject} ({task.user_issuer})")
    print(f"{'chain':<10} {' -> '.join(agent_label(a.id, a.domain) for a in task.chain)}")
    print(f"{'deadline':<10} {_when(task.deadline)}")
    print()
    print(table(("JTI", "AUDIENCE", "SCOPE", "EXPIRES", "REVOKED"),
                [(t.record.jti[:12], t.record.audience, t.record.scope, _when(t.record.expires_at),
                  "yes" if t.revoked_at else "") for t in detail.tokens]))
    return 0


def _end(args: argparse.Namespace, state: str) -> int:
    async def work(store: Store) -> dict[str, Any]:
        return await TaskAdmin(store).revoke_task(args.task_id, admin=_operator(), now=int(time.time()),
                                                   state=state)

    try:
        result = _with_store(args, work)
    except NotFound as exc:
        raise ConfigError(f"task {args.task_id}: not found") from exc
    print(f"task {result['task_id']} {result['state']}: {len(result['ended_tasks'])} task(s) ended, "
          f"{result['revoked_tokens']} token(s) revoked")
    return 0


def _complete(args: argparse.Namespace) -> int:
    return _end(args, COMPLETED)


def _revoke_task(args: argparse.Namespace) -> int:
    return _end(args, REVOKED)


def _revoke_matching(args: argparse.Namespace) -> int:
    try:
        party = revoked_party(agent=args.agent, trust_domain=args.trust_domain, user=args.user, issuer=args.issuer)
    except InvalidRequest as exc:
        raise ConfigError(f"--agent/--trust-domain/--user/--issuer: {exc.description}") from exc
    result = _with_store(args, lambda s: TaskAdmin(s).revoke_matching(party, admin=_operator(), now=int(time.time())))
    print(f"revoked {len(result['revoked_tasks'])} task(s) and {result['revoked_tokens']} token(s)")
    return 0


def _audit(args: argparse.Namespace) -> int:
    query = AuditQuery(task=args.task, agent=args.agent, user=args.user, since=args.since, until=args.until,
                       limit=args.limit)
    events = [record.as_dict() for record in _with_store(args, lambda s: s.audit_events(query))]
    if args.json:
        for event in events:
            print(json.dumps(event))
        return 0
    rows = [(_when(e["at"]), e["action"], e["outcome"], e["error"] or "", agent_label(e["agent"], e["agent_domain"]),
             e["user_subject"] or "", e["granted_scope"] or e["requested_scope"] or "", "; ".join(e["reasons"])[:60])
            for e in events]
    print(table(("AT", "ACTION", "OUTCOME", "ERROR", "AGENT", "USER", "SCOPE", "REASONS"), rows))
    return 0


def _when(timestamp: int | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table with aligned columns; '(none)' when there are no rows."""
    if not rows:
        return "(none)"
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
