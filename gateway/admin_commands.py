"""What each admin command does over the admin API, and what it says it acted on. Exit statuses: 0 done,
1 the gateway refused or could not be reached, 2 a usage or configuration error, 3 a revocation or block
that matched nothing."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2

from token_exchange.errors import InvalidRequest

from .admin_http import AdminApi, ApiFailure
from .admin_login import DeviceLogin, store_token
from .admin_output import WIDTH, colour_on, cut, emit, fields, note, seconds, table, text, when
from .admin_target import target
from .admin_views import agent_label, revoked_party
from .settings import ConfigError, checked_url

MATCHED_NOTHING = 3
SHORT_ID = 12


def _api(args: argparse.Namespace) -> AdminApi:
    return AdminApi(target(args))


def _short(identifier: object) -> str:
    return str(identifier or "")[:SHORT_ID]


def _colour() -> bool:
    return colour_on(sys.stdout)


def _reason(args: argparse.Namespace) -> dict[str, object]:
    return {"reason": args.reason} if args.reason else {}


def _warn(body: dict[str, Any]) -> None:
    for warning in body.get("warnings") or ():
        print(f"warning: {warning}", file=sys.stderr)


def _matched(body: dict[str, Any], tasks: list[Any]) -> bool:
    """The API's `matched` where it says so; else whether anything was ended or revoked."""
    matched = body.get("matched")
    return bool(matched) if isinstance(matched, bool) else bool(tasks or body.get("revoked_tokens"))


# --- tasks -------------------------------------------------------------------------------------------------


def _said(args: argparse.Namespace, body: dict[str, Any], acted_on: list[Any], *, nothing: Callable[[], str],
          done: Callable[[], str]) -> int:
    """A revocation's answer: the JSON as it came, or its warnings and one line saying what it did; exit 3
    when it matched nothing."""
    matched = _matched(body, acted_on)
    if args.json:
        emit(body)
    else:
        _warn(body)
        print(done() if matched else nothing())
    return 0 if matched else MATCHED_NOTHING


def list_tasks(args: argparse.Namespace) -> int:
    with _api(args) as api:
        body = api.get("/admin/tasks", agent=args.agent, user=args.user, state=args.state, limit=args.limit)
    if args.json:
        emit(body)
        return 0
    rows = [(_short(t["id"]), t["state"], agent_label(t["agent"], t.get("agent_domain")), t["user"]["sub"],
             t["scope"], when(t["deadline"]), len(t["chain"]) - 1) for t in body["tasks"]]
    print(table(("TASK", "STATE", "AGENT", "USER", "SCOPE", "DEADLINE", "DEPTH"), rows, colour=_colour(),
                cut_first=("SCOPE", "USER")))
    return 0


def show_task(args: argparse.Namespace) -> int:
    with _api(args) as api:
        task = api.get(f"/admin/tasks/{args.task_id}")
    if args.json:
        emit(task)
        return 0
    user = task["user"]
    print(fields([("id", task["id"]), ("state", task["state"]), ("agent", agent_label(task["agent"],
                  task.get("agent_domain"))), ("user", f"{user['sub']} at {user['iss']}"),
                  ("purpose", task["purpose"]), ("scope", task["scope"]), ("audiences", task["audiences"]),
                  ("chain", " -> ".join(task["chain"])), ("parent", task["parent_id"]), ("root", task["root_id"]),
                  ("created", when(task["created_at"])), ("deadline", when(task["deadline"])),
                  ("ended", when(task["ended_at"])), ("children", task["children"])]))
    print()
    rows = [(_short(t["jti"]), t["audience"], t["scope"], when(t["expires_at"]), when(t["revoked_at"]))
            for t in task["tokens"]]
    print(table(("JTI", "AUDIENCE", "SCOPE", "EXPIRES", "REVOKED"), rows, colour=_colour(), cut_first=("SCOPE",)))
    return 0


def complete_task(args: argparse.Namespace) -> int:
    return _end_task(args, "complete")


def revoke_task(args: argparse.Namespace) -> int:
    return _end_task(args, "revoke")


def _end_task(args: argparse.Namespace, action: str) -> int:
    with _api(args) as api:
        body = api.request("POST", f"/admin/tasks/{args.task_id}/{action}", body=_reason(args))
    ended = list(body.get("ended_tasks") or [])
    return _said(args, body, ended,
                 nothing=lambda: f"task {body['task_id']} was already {body['state']}: nothing changed",
                 done=lambda: f"task {body['task_id']} {body['state']}: {len(ended)} task(s) ended "
                              f"({', '.join(_short(t) for t in ended)}), {body['revoked_tokens']} token(s) revoked")


# --- revoke, block -----------------------------------------------------------------------------------------


def _party(args: argparse.Namespace) -> str:
    """The party named on the command line, checked as the API checks it, described."""
    try:
        party = revoked_party(agent=args.agent, trust_domain=args.trust_domain, user=args.user, issuer=args.issuer)
    except InvalidRequest as exc:
        raise ConfigError(f"--agent/--trust-domain/--user/--issuer: {exc.description}") from exc
    return party.describe()


def revoke_party(args: argparse.Namespace) -> int:
    described = _party(args)
    query: dict[str, object] = {"agent": args.agent, "trust_domain": args.trust_domain, "user": args.user,
                                "issuer": args.issuer}
    with _api(args) as api:
        body = api.request("POST", "/admin/revoke", params=query, body=_reason(args))
    tasks = list(body.get("revoked_tasks") or [])
    return _said(args, body, tasks,
                 nothing=lambda: f"nothing matched: {described} holds no open task or live token "
                                 "(the credentials it was issued until now are barred all the same)",
                 done=lambda: f"revoked {len(tasks)} task(s) and {body['revoked_tokens']} token(s) of {described}")


def add_block(args: argparse.Namespace) -> int:
    if args.workload_issuer is None:  # the API checks a workload issuer itself
        _party(args)
    named = {k: v for k, v in (("agent", args.agent), ("trust_domain", args.trust_domain),
                               ("workload_issuer", args.workload_issuer), ("user", args.user),
                               ("issuer", args.issuer)) if v is not None}
    with _api(args) as api:
        body = api.request("POST", "/admin/blocks", body={**named, "for": args.duration, **_reason(args)})
    if args.json:
        emit(body)
        return 0
    _warn(body)
    block, revoked = body["block"], body.get("revoked") or {}
    print(f"blocked {_block_party(block)} until {when(block['expires_at'])} (block {block['id']}); revoked "
          f"{revoked.get('tasks', 0)} task(s) and {revoked.get('tokens', 0)} token(s)")
    return 0


def list_blocks(args: argparse.Namespace) -> int:
    with _api(args) as api:
        body = api.get("/admin/blocks", all=True if args.all else None)
    if args.json:
        emit(body)
        return 0
    blocks = body["blocks"]
    rows = [(_short(b["id"]), b["kind"], _block_party(b, kind=False), when(b["expires_at"])) for b in blocks]
    lines = table(("BLOCK", "KIND", "PARTY", "EXPIRES"), rows, colour=_colour()).splitlines()
    print("\n".join([lines[0], *_with_notes(lines[1:], [f"by {text(b.get('created_by'))}: {text(b.get('reason'))}"
                                                         for b in blocks])]))
    return 0


def _with_notes(lines: list[str], notes: list[str]) -> list[str]:
    """Each table row followed by its note (reasons, who), indented and cut to WIDTH; no line for no note."""
    out = []
    for line, note_text in zip(lines, notes, strict=False):
        out.append(line)
        if note_text:
            out.append(cut(f"    {note_text}", WIDTH))
    return out


def remove_block(args: argparse.Namespace) -> int:
    with _api(args) as api:
        body = api.request("DELETE", f"/admin/blocks/{args.block_id}", body=_reason(args))
    if args.json:
        emit(body)
        return 0
    block = body["block"]
    print(f"lifted block {block['id']} on {_block_party(block)}")
    return 0


def _block_party(block: dict[str, Any], *, kind: bool = True) -> str:
    party = text(block.get("party"))
    named = f"{party} at {block['issuer']}" if block.get("issuer") else party
    return f"{text(block.get('kind')).replace('_', ' ')} {named}" if kind else named


# --- audit -------------------------------------------------------------------------------------------------


AUDIT_HEADERS = ("AT", "ACTION", "OUTCOME", "AGENT", "USER", "SCOPE")
FOLLOW_WIDTHS = (20, 12, 15, 27, 7, 9)  # 100 columns with the gaps


def audit(args: argparse.Namespace) -> int:
    query = {"task": args.task, "agent": args.agent, "user": args.user, "since": args.since, "until": args.until}
    with _api(args) as api:
        events = api.get("/admin/audit", **query, limit=args.limit)["events"]
        if not args.follow:
            _print_events(events, args.json)
            return 0
        _print_events(events[::-1], args.json, widths=FOLLOW_WIDTHS, header=True)
        try:
            for batch in _new_events(api, query, events, args.interval):
                _print_events(batch, args.json, widths=FOLLOW_WIDTHS, header=False)
        except KeyboardInterrupt:
            return 0
    return 0


def _new_events(api: AdminApi, query: dict[str, Any], seen: list[dict[str, Any]], interval: float,
                sleep: Callable[[float], None] = time.sleep) -> Iterator[list[dict[str, Any]]]:
    """Poll the trail: each round, the events from the second of the newest seen on (`since`) whose
    position in the trail (`id`) is past the last one printed."""
    cursor = max((_at(e) for e in seen), default=int(time.time()))
    last = max((int(e["id"]) for e in seen), default=None)
    while True:
        sleep(interval)
        events = api.get("/admin/audit", **{**query, "since": cursor, "until": None}, limit=1000)["events"]
        fresh = [e for e in events[::-1] if last is None or int(e["id"]) > last]
        if fresh:
            cursor, last = max(cursor, *(_at(e) for e in fresh)), max(int(e["id"]) for e in fresh)
            yield fresh


def _at(event: dict[str, Any]) -> int:
    return seconds(event["at"]) or 0


def _print_events(events: list[dict[str, Any]], as_json: bool, *, widths: tuple[int, ...] | None = None,
                  header: bool = True) -> None:
    """JSON lines, or a table with each event's reasons on an indented line below it; with `widths`, a
    stream's rows (its header once, and nothing for no rows)."""
    if as_json:
        for event in events:
            print(json.dumps(event), flush=True)
        return
    rows = [(when(e["at"]), e["action"], e.get("error") or e["outcome"],
             agent_label(e.get("agent"), e.get("agent_domain")), e.get("user_subject"),
             e.get("granted_scope") or e.get("requested_scope")) for e in events]
    lines = table(AUDIT_HEADERS, rows, colour=_colour(), cut_first=("SCOPE", "USER"), widths=widths,
                  empty=None if widths else "(none)").splitlines()
    out = [*(lines[:1] if header else []), *_with_notes(lines[1:], ["; ".join(e.get("reasons") or ())
                                                                   for e in events])]
    if out:
        print("\n".join(out), flush=True)


# --- login -------------------------------------------------------------------------------------------------


def login(args: argparse.Namespace) -> int:
    if not args.addr:
        raise ConfigError("login: give the gateway the token is for, with --addr or DEPUTY_ADDR")
    addr = checked_url(args.addr, key="--addr (or DEPUTY_ADDR)").rstrip("/")
    with httpx2.Client(timeout=15.0) as client:
        audience = args.audience or f"{addr}/admin"
        device = DeviceLogin(client, checked_url(args.issuer, key="--issuer"), args.client_id, audience)
        device_endpoint, token_endpoint = device.endpoints()
        started = device.start(device_endpoint, args.scope)
        where = started.get("verification_uri_complete") or started["verification_uri"]
        note(f"to sign in, open {where} and enter the code {started['user_code']}")
        token = device.poll(token_endpoint, started)
    if not isinstance(token.get("access_token"), str):
        raise ApiFailure("the identity provider answered no access_token")
    path = store_token(addr, token, now=int(time.time()))
    print(f"signed in at {args.issuer}: the token for {addr} is kept in {path}")
    return 0
