"""The `deputy` command: serve the gateway, rotate its keys, check a config file."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from delegation.stores.sqlite import SqliteStore, sqlite_path

from . import keystore, logs
from .settings import ConfigError, Settings, load_settings
from .wiring import Prepared, prepare

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ConfigError, keystore.KeyStoreError) as exc:
        print(f"deputy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deputy", description="Deputy: delegated-access gateway for AI agents (RFC 8693 token exchange)."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway", description="Run the gateway.")
    _config_option(serve)
    serve.add_argument("--workers", type=_positive, default=1, help="worker processes sharing the port (default 1)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="manage the signing keys")
    key_commands = keys.add_subparsers(required=True, metavar="ACTION")
    rotate = key_commands.add_parser(
        "rotate", help="make a new current signing key; the old one stays published as previous"
    )
    _config_option(rotate)
    rotate.set_defaults(run=_rotate)

    check = commands.add_parser("check", help="validate a config file and the policy, then exit")
    _config_option(check)
    check.set_defaults(run=_check)
    return parser


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


def _ready(config: Path | None) -> tuple[Prepared, keystore.KeyRing]:
    """Everything made once before serving: settings checked, policy compiled, keys and schema ready."""
    settings = load_settings(config)
    prepared = prepare(settings)
    keys = keystore.load_or_create(settings.state_dir, settings.tokens.signing_alg)
    _migrate(settings)
    return prepared, keys


def _migrate(settings: Settings) -> None:
    async def run() -> None:
        store = await SqliteStore.open(sqlite_path(settings.store_url))
        await store.close()

    try:
        asyncio.run(run())
    except Exception as exc:
        raise ConfigError(f"store.url: {exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import build_app

    logs.configure(args.log_level.upper())
    prepared, keys = _ready(args.config)
    settings = prepared.settings
    _banner(settings, prepared, keys, args.workers)
    common = {"host": settings.host, "port": settings.port, "log_level": args.log_level, "access_log": False}
    if args.workers == 1:
        uvicorn.run(build_app(prepared, keys), **common)
    else:
        if args.config is not None:
            os.environ["DEPUTY_CONFIG"] = str(args.config.resolve())
        uvicorn.run("gateway.app:create_app", factory=True, workers=args.workers, **common)
    return 0


def _banner(settings: Settings, prepared: Prepared, keys: keystore.KeyRing, workers: int) -> None:
    lines = [
        f"Deputy listening on http://{settings.host}:{settings.port} ({workers} worker{'s' * (workers > 1)})",
        f"  issuer            {settings.issuer}",
        f"  state             {settings.state_dir}",
        f"  signing key       {keys.current.algorithm} kid={keys.current.kid}",
        f"  policy            embedded Rego, revision {prepared.policy.revision}",
        f"  subject issuers   {', '.join(s.issuer for s in settings.subject_issuers) or 'none'}",
        f"  trust domains     {', '.join(d.name for d in settings.trust_domains) or 'none'}",
        f"  resources         {', '.join(r.audience for r in settings.resources) or 'none'}",
    ]
    if not (settings.subject_issuers and settings.trust_domains and settings.resources):
        lines.append("  note: with no subject issuer, trust domain or resource configured, every exchange is refused;")
        lines.append("        see README.md 'Configure' for a deputy.toml")
    print("\n".join(lines), flush=True)


def _rotate(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    ring = keystore.rotate(settings.state_dir, settings.tokens.signing_alg)
    print(f"new signing key {ring.current.kid} ({ring.current.algorithm})")
    if ring.previous:
        print(f"previous key {ring.previous.kid} stays published until the next rotation")
    print("restart the gateway to sign with the new key")
    return 0


def _check(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    prepared = prepare(settings)
    print(f"config ok: {len(settings.resources)} resources, policy revision {prepared.policy.revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
