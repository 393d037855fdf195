"""`deputy tasks|revoke|audit|block|login`: the admin operations from the command line, through the running
gateway's admin API (never its database), with the gateway's own authorisation."""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from . import admin_commands as run
from .admin_output import InputError, point, span
from .admin_target import add_address, add_options

IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,64}")
PARTIES = ("agent", "trust-domain", "user")
PARTY_HELP = {
    "agent": "an agent: its SPIFFE ID, or a Kubernetes or OIDC workload id with --issuer",
    "trust-domain": "every agent of a SPIFFE trust domain",
    "workload-issuer": "every workload of a Kubernetes or OIDC workload issuer",
    "user": "a user's sub (with --issuer: at that subject issuer only)",
}
ISSUER_HELP = ("the workload issuer of a non-SPIFFE --agent (required), or the subject issuer of --user "
               "(default: that sub at every subject issuer)")


def add_commands(commands: Any) -> None:
    _add_tasks(commands)
    revoke = _command(commands, "revoke", "revoke every open task and token of an agent, a trust domain or a user, "
                                          "and bar the credentials it holds", run.revoke_party)
    _party(revoke, PARTIES)
    _add_audit(commands)
    _add_blocks(commands)
    login = commands.add_parser("login", help="get an admin token from the identity provider (RFC 8628 device "
                                              "grant) and keep it for this gateway")
    login.add_argument("--issuer", required=True, help="the identity provider, e.g. https://login.example.com")
    login.add_argument("--client-id", required=True, help="the CLI's public client at the identity provider")
    login.add_argument("--scope", help="scopes to ask for (default: the identity provider's)")
    login.add_argument("--audience", help="the gateway's [admin] audience, asked for as the RFC 8707 resource "
                                          "(default: ADDR/admin, the gateway's default; not read from the gateway)")
    add_address(login)
    login.set_defaults(run=run.login)


def _command(commands: Any, name: str, text: str, handler: Any, *, reason: bool = True, needs_reason: bool = False,
             json: str = "print the admin API's JSON answer") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text[0].upper() + text[1:])
    add_options(parser)
    if reason or needs_reason:
        parser.add_argument("--reason", required=needs_reason,
                            help="why: recorded with the acting admin in the audit trail")
    parser.add_argument("--json", action="store_true", help=json)
    parser.set_defaults(run=handler)
    return parser


def _add_tasks(commands: Any) -> None:
    tasks = commands.add_parser("tasks", help="list, inspect, complete or revoke tasks")
    actions = tasks.add_subparsers(required=True, metavar="ACTION")
    listing = _command(actions, "list", "tasks, newest first", run.list_tasks, reason=False)
    listing.add_argument("--agent", help="only tasks of this agent (a SPIFFE ID, or a workload id at any issuer)")
    listing.add_argument("--user", help="only tasks of this user (sub)")
    listing.add_argument("--state", choices=["open", "completed", "revoked", "expired"])
    listing.add_argument("--limit", type=int, default=50, help="at most this many tasks (default 50)")
    for name, handler, text, reason in (
            ("show", run.show_task, "one task: its chain, children and tokens", False),
            ("complete", run.complete_task, "complete a task and everything derived from it", True),
            ("revoke", run.revoke_task, "revoke a task and everything derived from it", True)):
        action = _command(actions, name, text, handler, reason=reason)
        action.add_argument("task_id", metavar="TASK_ID", type=_identifier, help="a task id, or a unique prefix of one")


def _add_audit(commands: Any) -> None:
    audit = _command(commands, "audit", "the audit trail, newest first", run.audit, reason=False,
                     json="one event per line, as the admin API's JSON")
    audit.add_argument("--task", help="only the events of this task (its id)")
    audit.add_argument("--agent", help="only the events of this agent")
    audit.add_argument("--user", help="only the events of this user (sub)")
    audit.add_argument("--since", type=_time, help="ISO 8601, Unix seconds, or a span back from now (1h, 2d)")
    audit.add_argument("--until", type=_time, help="likewise")
    audit.add_argument("--limit", type=int, default=50, help="at most this many events first (default 50)")
    audit.add_argument("--follow", "-f", action="store_true", help="then print new events as they happen "
                                                                   "(oldest first; Ctrl-C ends)")
    audit.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)


def _add_blocks(commands: Any) -> None:
    block = commands.add_parser("block", help="keep an agent, a trust domain, a workload issuer or a user out "
                                              "for a while (incident control)")
    actions = block.add_subparsers(required=True, metavar="ACTION")
    add = _command(actions, "add", "refuse every exchange by a party for a span, and revoke all it holds",
                   run.add_block, needs_reason=True)
    _party(add, (*PARTIES[:2], "workload-issuer", PARTIES[2]))
    add.add_argument("--for", dest="duration", type=_span, required=True, metavar="SPAN",
                     help="how long: 90s, 15m, 2h, 1d, 1w, or seconds")
    listing = _command(actions, "list", "the blocks in force", run.list_blocks, reason=False)
    listing.add_argument("--all", action="store_true", help="also the expired and lifted ones")
    remove = _command(actions, "remove", "lift a block before it expires", run.remove_block)
    remove.add_argument("block_id", metavar="BLOCK_ID", type=_identifier, help="a block id, or a unique prefix of one")


def _party(parser: argparse.ArgumentParser, kinds: tuple[str, ...]) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    for kind in kinds:
        who.add_argument(f"--{kind}", help=PARTY_HELP[kind])
    parser.add_argument("--issuer", help=ISSUER_HELP)


def _identifier(text: str) -> str:
    """A Deputy id (base64url, `token_exchange.rfc9068.new_id`) or a prefix of one: nothing else reaches a URL."""
    if not IDENTIFIER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an id: ids are letters, digits, '-' and '_'")
    return text


def _span(text: str) -> int:
    try:
        return span(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _time(text: str) -> int:
    try:
        return point(text, now=int(time.time()))
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
