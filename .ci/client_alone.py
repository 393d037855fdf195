"""Run by .ci/client-alone with the Python of a venv that has `./client` alone (issue 10, Done when).

`installed`: none of the gateway's server dependencies came with deputy-client, and the gateway's own
packages cannot be imported. `run URL DIR`: an agent (DeputyClient, its SVID from a file) opens a task for
alice and gets a DPoP-bound token; a verifier (AccessTokenVerifier on the gateway's SSF stream) accepts it
with a fresh proof; the task ends when the block is left, and the verifier then refuses the token.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import sys
import time
from pathlib import Path

SERVER_DEPENDENCIES = {"deputy-gateway", "fastapi", "starlette", "uvicorn", "regopy", "opa-python-client", "aiohttp",
                       "psycopg", "psycopg-pool", "prometheus-client", "sse-starlette"}
MAIL = "https://mail.demo.test"
URL = MAIL + "/inbox"


def installed() -> int:
    names = {dist.metadata["Name"].lower().replace("_", "-") for dist in importlib.metadata.distributions()}
    found = sorted(names & SERVER_DEPENDENCIES)
    importable = [name for name in ("gateway", "delegation", "policies") if importlib.util.find_spec(name)]
    print(f"deputy-client alone: {len(names)} distributions; server dependencies among them: {found or 'none'}; "
          f"gateway packages importable: {importable or 'none'}")
    return 1 if found or importable else 0


async def agent_and_verifier(gateway: str, state: Path) -> int:
    import httpx2

    from deputy_client import DeputyClient, SvidFile
    from deputy_client.resource import AccessTokenVerifier, InvalidToken, VerifiedAccess

    user_token = (state / "user.jwt").read_text().strip()
    async with (
        httpx2.AsyncClient(timeout=10) as http,
        AccessTokenVerifier(issuer=gateway, audience=MAIL, client=http,
                            svid=lambda: (state / "rs.svid").read_text().strip()) as verifier,
        DeputyClient(gateway, identity=SvidFile(state / "agent.svid")) as deputy,
    ):
        assert deputy.dpop_key is not None
        key = deputy.dpop_key

        async def verify(token: str) -> VerifiedAccess:
            return await verifier.verify_request(authorization=[f"DPoP {token}"],
                                                 dpop=[key.proof("GET", URL, access_token=token)],
                                                 method="GET", url=URL, required_scope="mail.read")

        async with deputy.task(user_token, scope=["mail.read"], audiences=[MAIL], purpose="CI: client alone") as task:
            token = await task.token(MAIL, "mail.read")
            access = await verify(token)
            print(f"agent: task {task.id} opened; verifier: accepted for {access.subject} "
                  f"(DPoP-bound: {access.dpop_bound})")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                await verify(token)
            except InvalidToken as exc:
                print(f"agent: task completed; verifier: refused ({exc})")
                return 0
            await asyncio.sleep(0.05)
    print("the verifier still accepted the token 10 s after its task completed", file=sys.stderr)
    return 1


def main() -> int:
    if sys.argv[1:] == ["installed"]:
        return installed()
    if len(sys.argv) == 4 and sys.argv[1] == "run":
        return asyncio.run(agent_and_verifier(sys.argv[2], Path(sys.argv[3])))
    print("usage: client_alone.py installed | run GATEWAY_URL STATE_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
