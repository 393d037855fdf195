"""DEMO ONLY: write Deputy's demo identities to a directory, and make tokens from them.

    python examples/demo_identities.py setup DIR          # keys, JWKS, bundle, policy data, deputy.toml
    python examples/demo_identities.py user-token alice --dir DIR
    python examples/demo_identities.py svid spiffe://demo.test/agent/mail --dir DIR

The private keys are written unprotected. Never use them for anything but a local demo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.dev import LABEL, DemoIdentities


def main() -> int:

    parser = argparse.ArgumentParser(description=f"{LABEL} identities for trying Deputy locally.")
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup", help="write keys, JWKS, bundle, policy data and deputy.toml")
    setup.add_argument("dir", type=Path)
    setup.add_argument("--listen", default="127.0.0.1:8600")
    for name, arg in (("user-token", "user"), ("svid", "spiffe_id")):
        command = commands.add_parser(name)
        command.add_argument(arg)
        command.add_argument("--dir", type=Path, default=Path(".deputy-dev"))
    args = parser.parse_args()
    if args.command == "setup":
        print(f"{LABEL}: wrote {DemoIdentities(args.dir).create(listen=args.listen)}")
    elif args.command == "user-token":
        print(DemoIdentities(args.dir).user_token(args.user))
    else:
        print(DemoIdentities(args.dir).svid(args.spiffe_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
