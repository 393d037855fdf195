"""What the benches share to run a deployment as replicas on PostgreSQL (issue 9): `--store` and `--replicas`,
the config's `[store]` and `[keys]` tables, `deputy db upgrade`, and N `deputy serve` processes on their
own loopback ports with one issuer, as behind a load balancer."""

from __future__ import annotations

import argparse
import base64
import contextlib
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from gateway.process import serving


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="URL",
                        help="a postgresql:// database the bench may fill (default: SQLite in the temporary "
                             "deployment); its keys live in it, sealed with a fresh key-encryption key")
    parser.add_argument("--replicas", type=int, default=1,
                        help="deputy serve processes sharing the store, each on its own port (default 1; "
                             "more than one needs --store)")


def check_options(args: argparse.Namespace) -> None:
    if args.replicas < 1:
        raise SystemExit("bench: --replicas must be at least 1")
    if args.replicas > 1 and not args.store:
        raise SystemExit("bench: --replicas above 1 needs --store postgresql://... (replicas share PostgreSQL)")
    if args.store and not args.store.startswith(("postgresql://", "postgres://")):
        raise SystemExit("bench: --store must be a postgresql:// URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def use_store(config: Path, store: str) -> None:
    """Point `config` at `store` with its keys sealed in it, then bring the schema up to date."""
    kek = config.parent / "kek"
    kek.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    kek.chmod(0o600)
    with config.open("a") as out:
        out.write(f'\n[store]\nurl = "{store}"\n\n[keys]\nencryption_key_file = "{kek}"\n')
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "db", "upgrade", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"bench: deputy db upgrade failed: {done.stderr.strip()}")


def describe(args: argparse.Namespace, workers: int) -> str:
    store = "PostgreSQL" if args.store else "SQLite"
    replicas = f"{args.replicas} replicas x " if args.replicas > 1 else ""
    return f"{replicas}deputy serve --workers {workers} (embedded Rego, {store}, ES256)"


@contextlib.contextmanager
def replicas(config: Path, listen: str, count: int, *, workers: int, timeout: float = 60.0
             ) -> Iterator[list[tuple[str, int]]]:
    """`count` replicas of `config`: the first on `listen` (the issuer's address), the others on free ports.
    Yields each one's (url, pid) once every one answers /healthz."""
    listens = [listen] + [f"127.0.0.1:{free_port()}" for _ in range(count - 1)]
    with contextlib.ExitStack() as stack:
        running = []
        for i, address in enumerate(listens):
            url = f"http://{address}"
            arguments = ["--config", str(config), "--workers", str(workers), "--listen", address,
                         "--log-level", "warning"]
            process = stack.enter_context(serving(arguments, url, log=config.parent / f"gateway-{i}.log",
                                                  timeout=timeout))
            running.append((url, process.pid))
        yield running
