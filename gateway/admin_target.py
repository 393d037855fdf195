"""Which gateway the admin CLI talks to, and as whom: `--addr` or DEPUTY_ADDR, and a credential that is never
a static secret: a token (`--token-file`, DEPUTY_TOKEN: a user token from the IdP, or a JWT-SVID), the token of
`deputy login`, or this workload's JWT-SVID from the SPIFFE Workload API. With no address, a running
`deputy serve --dev` on this machine, as its demo admin (DEMO ONLY)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import httpx2

from token_exchange.rfc8414 import origin, well_known_path

from . import dev
from .admin_http import ApiFailure, Target
from .admin_login import stored_token
from .admin_output import note
from .settings import ConfigError, checked_url

DEV_DIR = Path(".deputy-dev")
NO_CREDENTIAL = ("no admin credential for {addr}: set DEPUTY_TOKEN or give --token-file (a user token from the "
                 "identity provider, or a JWT-SVID), run `deputy login`, or run where the SPIFFE Workload API "
                 "is (SPIFFE_ENDPOINT_SOCKET)")


def add_options(parser: argparse.ArgumentParser) -> None:
    """`--addr` and `--token-file`, for every command that calls the admin API."""
    add_address(parser)
    parser.add_argument("--token-file", type=Path, metavar="PATH",
                        help="a file holding the admin's token (default: $DEPUTY_TOKEN, then `deputy login`'s, "
                             "then the SPIFFE Workload API)")


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--addr", default=os.environ.get("DEPUTY_ADDR") or None, metavar="URL",
                        help="the gateway, e.g. https://deputy.example.com (default: $DEPUTY_ADDR, else a running "
                             "`deputy serve --dev` on this machine)")


def target(args: argparse.Namespace) -> Target:
    """The gateway and the admin's token, as the options and environment say; a dev gateway when neither
    names an address."""
    token = _given_token(args)
    if args.addr:
        addr = checked_url(args.addr, key="--addr (or DEPUTY_ADDR)").rstrip("/")
        return Target(addr, token or stored_token(addr, now=int(time.time())) or _workload_svid(addr))
    return _dev_target(token)


def _given_token(args: argparse.Namespace) -> str | None:
    """The token of --token-file, else of DEPUTY_TOKEN, else none."""
    path: Path | None = args.token_file
    if path is None:
        return os.environ.get("DEPUTY_TOKEN", "").strip() or None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file: {exc.strerror or exc}: {path}") from exc
    if not token:
        raise ConfigError(f"--token-file: {path} is empty")
    return token


def _workload_svid(addr: str) -> str:
    """This workload's JWT-SVID for the gateway's issuer as audience, from the SPIFFE Workload API."""
    if not os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
        raise ConfigError(NO_CREDENTIAL.format(addr=addr))
    from deputy_client.identity import WorkloadApiIdentity

    audience = _issuer(addr)

    async def fetch() -> str:
        source = WorkloadApiIdentity(timeout=5.0)
        try:
            return await source.svid(audience)
        finally:
            await source.close()

    try:
        return asyncio.run(fetch())
    except Exception as exc:  # py-spiffe raises its own errors and gRPC's; any of them means no SVID
        raise ApiFailure(f"no JWT-SVID from the SPIFFE Workload API at {os.environ['SPIFFE_ENDPOINT_SOCKET']}: "
                         f"{exc}") from exc


def _issuer(addr: str) -> str:
    """The gateway's issuer (the audience of an SVID for it), from its RFC 8414 metadata; else `addr`. A
    server at `addr` naming another issuer is refused (RFC 8414 §3.3): it would get this workload's SVID
    for that other gateway, to use there as an admin."""
    try:
        metadata = httpx2.get(origin(addr) + well_known_path(addr), timeout=5.0).json()
    except (httpx2.HTTPError, ValueError):
        return addr
    issuer = metadata.get("issuer") if isinstance(metadata, dict) else None
    if issuer is None:
        return addr
    if not isinstance(issuer, str) or issuer.rstrip("/") != addr:
        raise ApiFailure(f"the gateway at {addr} names another issuer ({str(issuer)[:100]}): no JWT-SVID is "
                         "fetched for it (RFC 8414 section 3.3); give its issuer as --addr")
    return issuer


def _dev_target(token: str | None) -> Target:
    """DEMO ONLY: the gateway of the last `deputy serve --dev` here (./.deputy-dev, else the one recorded)."""
    identities = dev.DemoIdentities(dev.find(DEV_DIR))
    try:
        addr = identities.issuer
    except FileNotFoundError:
        raise ConfigError("no gateway address: give --addr or set DEPUTY_ADDR (or start `deputy serve --dev` "
                          "on this machine)") from None
    who = "the given token" if token else f"the demo admin {dev.ADMIN}"
    note(f"dev mode: the `deputy serve --dev` gateway at {addr} ({identities.directory.resolve()}), as {who}")
    return Target(addr, token or identities.svid(dev.ADMIN), hint="is `deputy serve --dev` still running?")
