"""The `deputy` command: serve the gateway; the admin commands over its admin API; offline maintenance on its
config and database (check, keys rotate, db upgrade)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import admin_cli, dev, key_ring, logs, policy_cli
from .admin_http import ApiFailure
from .key_ring import KeyRing, KeyStoreError, KeyVault
from .settings import DEFAULT_LISTEN, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from .sealed_keys import KeyEncryptionKey
    from .wiring import Prepared

# The serving stack (FastAPI, uvicorn, the policy engine, the store) is imported by the commands that use
# it, so `deputy dev ...` and `deputy --help` start in a fraction of the time.

EXIT_CONFIG = 2
EXIT_REFUSED = 1
OFFLINE = "(offline: opens the database directly)"
DEV_DIR = Path(".deputy-dev")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ConfigError, KeyStoreError) as exc:
        print(f"deputy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ApiFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deputy", description="Deputy: delegated-access gateway for AI agents (RFC 8693 token exchange)."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    _add_serve(commands)
    admin_cli.add_commands(commands)
    _add_dev(commands)
    keys = commands.add_parser("keys", help=f"manage the signing keys {OFFLINE}")
    key_commands = keys.add_subparsers(required=True, metavar="ACTION")
    rotate = key_commands.add_parser(
        "rotate", help=f"make a new current signing key; the old one stays published as previous {OFFLINE}"
    )
    _config_option(rotate)
    rotate.set_defaults(run=_rotate)

    check = commands.add_parser("check", help="validate a config file and the policy, then exit (offline)")
    _config_option(check)
    check.set_defaults(run=_check)
    db = commands.add_parser("db", help=f"the store's database {OFFLINE}")
    db_commands = db.add_subparsers(required=True, metavar="ACTION")
    upgrade = db_commands.add_parser(
        "upgrade", help=f"bring the store's schema to this Deputy's version (PostgreSQL: before serving) {OFFLINE}")
    _config_option(upgrade)
    upgrade.set_defaults(run=_db_upgrade)
    policy_cli.add_commands(commands, _config_option)
    demo = commands.add_parser("demo", help="DEMO ONLY: run the whole story (task, delegation, revocation) locally")
    demo.set_defaults(run=_demo)
    return parser


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the gateway", description="Run the gateway.")
    _config_option(serve)
    serve.add_argument("--workers", type=_positive, default=1, help="worker processes sharing the port (default 1)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--dev",
        action="store_true",
        help="DEMO ONLY: throwaway state in ./.deputy-dev, a demo identity provider, trust domain and resource",
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"where to serve, instead of the config's `listen` (default {DEFAULT_LISTEN}); "
             "an issuer the config does not set follows it",
    )
    serve.set_defaults(run=_serve)


def _add_dev(commands: Any) -> None:
    dev_parser = commands.add_parser("dev", help="DEMO ONLY: tokens from the demo identities of `deputy serve --dev`")
    dev_commands = dev_parser.add_subparsers(required=True, metavar="ACTION")
    user_token = dev_commands.add_parser("user-token", help="print a demo user token for USER")
    user_token.add_argument("user")
    user_token.set_defaults(run=_dev_token)
    svid = dev_commands.add_parser("svid", help="print a demo JWT-SVID for SPIFFE_ID")
    svid.add_argument("spiffe_id")
    svid.set_defaults(run=_dev_token)
    for command in (user_token, svid):
        command.add_argument("--dir", type=Path, help=f"demo state (default: ./{DEV_DIR} if there, else the one "
                                                      "the last `deputy serve --dev` on this machine uses)")


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ["DEPUTY_CONFIG"]) if os.environ.get("DEPUTY_CONFIG") else None,
        help="path to deputy.toml (default: $DEPUTY_CONFIG, else the embedded defaults)",
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return int(text)


def _ready(settings: Settings, *, dev_listen: str | None) -> tuple[Prepared, KeyRing]:
    """Everything made once before serving, once the port is known to be free: with --dev (`dev_listen`) the
    demo identities and their config, then the policy compiled, the schema and the keys."""
    from .wiring import prepare

    if dev_listen is not None:
        settings = load_settings(dev.DemoIdentities(DEV_DIR).create(listen=dev_listen, admin_group=dev.ADMIN_GROUP,
                                                                     console=True))
        dev.remember(DEV_DIR)
    prepared = prepare(settings)
    return prepared, _with_keys(settings, prepared.encryption_key, key_ring.load_or_create)


def _with_keys(settings: Settings, kek: KeyEncryptionKey | None,
               change: Callable[[KeyVault, str], Awaitable[tuple[KeyRing, int]]]) -> KeyRing:
    """Open the store (which makes or checks its schema), then `change` the key ring in the vault the
    settings choose (`key_ring.load_or_create` or `rotate`)."""
    from delegation.records import StoreError
    from delegation.stores import open_store

    from .wiring import key_vault

    async def run() -> KeyRing:
        try:
            store = await open_store(settings.store_url)
        except Exception as exc:
            raise ConfigError(f"store.url: {exc}") from exc
        try:
            ring, _ = await change(key_vault(settings, kek, store), settings.tokens.signing_alg)
            return ring
        except StoreError as exc:
            raise ConfigError(f"store.url: {exc}") from exc
        finally:
            await store.close()

    return asyncio.run(run())


def _serve(args: argparse.Namespace) -> int:
    """Bind the port (or, for workers, check it) and the metrics listener before any state is made; announce
    once serving. Metrics are served by the one process that serves, or by the parent of the workers."""
    from . import metrics, workers
    from .app import build_app

    logs.configure(args.log_level.upper())
    if args.dev and args.config is not None:
        raise ConfigError("--dev: cannot be combined with --config (dev mode makes its own)")
    listen = args.listen or (DEFAULT_LISTEN if args.dev else None)
    settings = load_settings(None if args.dev else args.config, listen=listen)  # with --dev, only where
    if args.workers > 1:
        workers.check_port_free(settings.host, settings.port)
        if args.dev or settings.console is not None:  # --dev serves the console
            raise ConfigError("--workers: the web console ([console]) keeps its sessions in the serving process, "
                              "so a gateway serving it runs with --workers 1 (docs/admin.md, The web console)")
        with metrics.for_workers(settings.metrics.listen) as worker_died:
            prepared, keys = _ready(settings, dev_listen=listen if args.dev else None)
            return workers.run(args.workers, settings=prepared.settings, log_level=args.log_level,
                               on_ready=lambda: _announce(args, prepared, keys), on_death=worker_died)
    with workers.listening(settings.host, settings.port) as sock, metrics.in_process(settings.metrics.listen) as seen:
        prepared, keys = _ready(settings, dev_listen=listen if args.dev else None)
        return workers.serve(build_app(prepared, seen), sock, log_level=args.log_level,
                             on_ready=lambda: _announce(args, prepared, keys))


def _announce(args: argparse.Namespace, prepared: Prepared, keys: KeyRing) -> None:
    _banner(prepared.settings, prepared, keys, args.workers)
    if args.dev:
        _dev_banner(prepared.settings)


def _banner(settings: Settings, prepared: Prepared, keys: KeyRing, workers: int) -> None:
    lines = [
        f"Deputy listening on http://{settings.host}:{settings.port} ({workers} worker{'s' * (workers > 1)})",
        f"  issuer            {settings.issuer}",
        f"  state             {settings.state_dir}",
        f"  signing key       {keys.tokens.current.algorithm} kid={keys.tokens.current.kid}"
        f" ({'in the store, sealed' if settings.keys.encryption_key_file else 'files'})",
        f"  policy            {_policy_line(settings, prepared)}",
        f"  subject issuers   {', '.join(s.issuer for s in settings.subject_issuers) or 'none'}",
        f"  trust domains     {', '.join(d.name for d in settings.trust_domains) or 'none'}",
        f"  resources         {', '.join(r.audience for r in settings.resources) or 'none'}",
    ]
    if settings.metrics.listen is not None:
        host, port = settings.metrics.listen
        lines.append(f"  metrics           http://{host}:{port}/metrics")
    if not (settings.subject_issuers and settings.trust_domains and settings.resources):
        lines.append("  note: with no subject issuer, trust domain or resource configured, every exchange is refused;")
        lines.append("        see README.md 'Configure' for a deputy.toml")
    print("\n".join(lines), flush=True)


def _policy_line(settings: Settings, prepared: Prepared) -> str:
    if settings.policy.engine == "opa":
        return f"OPA server at {settings.policy.opa_url} (timeout {settings.policy.timeout_ms} ms; see /readyz)"
    return f"embedded Rego, revision {prepared.policy.revision}"


def _dev_banner(settings: Settings) -> None:
    from .dev import AGENT, LABEL, MAIL

    print(f"""
*** {LABEL}: throwaway state in {DEV_DIR}/, a demo identity provider (https://idp.demo.test) and a demo
*** SPIFFE trust domain (demo.test) whose keys anyone on this machine can read. Never use in production.

Get a user token and an agent SVID from the demo identities:
  USER_TOKEN=$(deputy dev user-token alice)
  SVID=$(deputy dev svid {AGENT})
Exchange them for a token to the demo resource:
  curl -s {settings.issuer}/token \\
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\
    -d subject_token="$USER_TOKEN" -d subject_token_type=urn:ietf:params:oauth:token-type:access_token \\
    -d actor_token="$SVID" -d actor_token_type=urn:ietf:params:oauth:token-type:jwt \\
    -d resource={MAIL} -d scope=mail.read
Watch and revoke tasks in the web console (sign in as the demo user admin): {settings.issuer}/console
""", flush=True)


def _dev_token(args: argparse.Namespace) -> int:
    """`deputy dev user-token USER` or `deputy dev svid SPIFFE_ID`, from the dev mode's demo identities."""
    identities = dev.DemoIdentities(args.dir or dev.find(DEV_DIR))
    try:
        print(identities.user_token(args.user) if "user" in args else identities.svid(args.spiffe_id))
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from exc
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as run_demo

    return int(run_demo())


def _rotate(args: argparse.Namespace) -> int:
    from .wiring import encryption_key

    settings = load_settings(args.config)
    ring = _with_keys(settings, encryption_key(settings), key_ring.rotate)
    tokens, events = ring.tokens, ring.events
    print(f"new signing key {tokens.current.kid} ({tokens.current.algorithm})")
    if tokens.previous:
        print(f"previous key {tokens.previous.kid} stays published until the next rotation")
    print(f"new event signing key {events.current.kid} ({events.current.algorithm})")
    print("running gateways sign with them within seconds (each worker checks the key ring every second)")
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    """Apply the schema migrations the store needs: PostgreSQL's are only ever applied here (a serving
    gateway refuses a schema other than its own); SQLite also migrates itself when opened."""
    from delegation.records import StoreError
    from delegation.stores import upgrade_store

    settings = load_settings(args.config)
    try:
        before, after = asyncio.run(upgrade_store(settings.store_url))
    except StoreError as exc:
        raise ConfigError(f"store.url: {exc}") from exc
    print(f"database schema: already at version {after}" if before == after
          else f"database schema: upgraded from version {before} to {after}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .wiring import prepare

    settings = load_settings(args.config)
    prepared = prepare(settings)
    count = len(settings.resources)
    print(f"config ok: {count} resource{'s' * (count != 1)}, policy {_policy_line(settings, prepared)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
