"""DEMO ONLY: `deputy demo`, the whole story on one machine in well under a minute, nothing configured.

A demo identity provider and SPIFFE trust domain, a Deputy gateway, and a demo mail API that verifies
tokens with Deputy's resource-server verifier. The mail agent opens a task for alice, delegates to a
summarizer sub-agent, which reads the inbox; a widening attempt is refused; the agent completes the
task, and the sub-agent's next call is rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from fastapi import Depends, FastAPI

from resource_server import AccessTokenVerifier, VerifiedAccess
from resource_server.dependency import require_scope

from .dev import AGENT, LABEL, MAIL, MAIL_API, SUBAGENT, DemoIdentities
from .process import gateway_process

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
USER_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
TXN = "urn:ietf:params:oauth:token-type:txn_token"


INBOX = [
    {"from": "bob@example.com", "subject": "Quarterly numbers", "body": "Revenue is up 12%."},
    {"from": "carol@example.com", "subject": "Lunch?", "body": "Thursday at noon works."},
]


def mail_api(verifier: AccessTokenVerifier) -> FastAPI:
    """A tiny mail API protected by Deputy access tokens: GET /inbox needs mail.read, POST /send mail.send."""
    app = FastAPI(title="Demo mail API (DEMO ONLY)", docs_url=None, redoc_url=None, openapi_url=None)
    reader, sender = require_scope(verifier, "mail.read"), require_scope(verifier, "mail.send")

    @app.get("/inbox")
    async def inbox(access: VerifiedAccess = Depends(reader)) -> dict[str, Any]:  # noqa: B008
        return {"user": access.subject, "read_by": access.agent, "task": access.task_id, "messages": INBOX}

    @app.post("/send")
    async def send(access: VerifiedAccess = Depends(sender)) -> dict[str, Any]:  # noqa: B008
        return {"user": access.subject, "sent_by": access.agent, "status": "queued"}

    return app


class Story:
    """Prints numbered steps and what each answered."""

    def __init__(self) -> None:
        self.step = 0
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        self.step += 1
        print(f"\n[{self.step}] {text}", flush=True)

    def show(self, label: str, value: Any) -> None:
        print(f"      {label:<14} {value}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _serve(app: Any, port: int) -> AsyncIterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _story(ids: DemoIdentities, gateway: str) -> int:
    story = Story()
    async with httpx2.AsyncClient(timeout=10) as client:
        verifier = AccessTokenVerifier(issuer=gateway, audience=MAIL, client=client,
                                       svid=lambda: ids.svid(MAIL_API), max_feed_staleness=5)
        async with verifier, _serve(mail_api(verifier), _free_port()) as api:
            story.say(f"Gateway {gateway} and demo mail API {api} are up; the API follows the revocation feed.")

            async def token(**form: str) -> dict[str, Any]:
                response = await client.post(gateway + "/token", data={"grant_type": GRANT, **form})
                body = response.json()
                if response.status_code != 200:
                    story.show("refused", f"{response.status_code} {body['error']}: {body['error_description']}")
                return {"status": response.status_code, **body}

            story.say(f"alice's mail agent ({AGENT}) opens a task with alice's token and its own JWT-SVID.")
            task = await token(subject_token=ids.user_token("alice"), subject_token_type=USER_TOKEN,
                               actor_token=ids.svid(AGENT), actor_token_type=JWT, requested_token_type=TXN,
                               audience=MAIL, scope="mail.read mail.send", purpose="summarize today's mail")
            story.show("task", task["task_id"])
            story.show("scope ceiling", task["scope"])
            story.show("expires in", f"{task['expires_in']} s")

            story.say(f"It delegates reading to a summarizer sub-agent ({SUBAGENT}).")
            child = await token(subject_token=task["access_token"], subject_token_type=TXN,
                                actor_token=ids.svid(SUBAGENT), actor_token_type=JWT, requested_token_type=TXN,
                                scope="mail.read")
            story.show("child task", child["task_id"])
            story.show("scope", child["scope"])

            story.say("The summarizer gets an access token for the mail API and reads the inbox.")
            access = await token(subject_token=child["access_token"], subject_token_type=TXN,
                                 actor_token=ids.svid(SUBAGENT), actor_token_type=JWT, resource=MAIL,
                                 scope="mail.read")
            inbox = await client.get(api + "/inbox", headers={"Authorization": f"Bearer {access['access_token']}"})
            story.show("GET /inbox", f"{inbox.status_code}: {len(inbox.json().get('messages', []))} messages "
                                     f"for {inbox.json().get('user')}, read by {inbox.json().get('read_by')}")

            story.say("The summarizer tries to widen its access to mail.send: refused.")
            widened = await token(subject_token=child["access_token"], subject_token_type=TXN,
                                  actor_token=ids.svid(SUBAGENT), actor_token_type=JWT, resource=MAIL,
                                  scope="mail.send")
            sent = await client.post(api + "/send", headers={"Authorization": f"Bearer {access['access_token']}"})
            story.show("POST /send", f"{sent.status_code} with the mail.read token")

            story.say("The mail agent completes the task (authenticated by its JWT-SVID).")
            started = time.monotonic()
            done = await client.post(f"{gateway}/tasks/{task['task_id']}/complete",
                                     headers={"Authorization": f"Bearer {ids.svid(AGENT)}"})
            story.show("complete", f"{done.status_code}: {len(done.json()['ended_tasks'])} tasks ended, "
                                   f"{done.json()['revoked_tokens']} tokens revoked")

            story.say("The summarizer calls the mail API again with its token: rejected.")
            status = 200
            while status == 200 and time.monotonic() - started < 5:
                response = await client.get(api + "/inbox",
                                            headers={"Authorization": f"Bearer {access['access_token']}"})
                status = response.status_code
                if status == 200:
                    await asyncio.sleep(0.01)
            story.show("GET /inbox", f"{status} {response.headers.get('www-authenticate', '')[:70]}")
            story.show("revoked after", f"{(time.monotonic() - started) * 1000:.0f} ms")

            story.say("The summarizer asks the gateway for a new token under the ended task: refused.")
            again = await token(subject_token=child["access_token"], subject_token_type=TXN,
                                actor_token=ids.svid(SUBAGENT), actor_token_type=JWT, resource=MAIL,
                                scope="mail.read")
    ok = (inbox.status_code == 200 and widened["status"] == 400 and sent.status_code == 403
          and done.status_code == 200 and status == 401 and again["status"] == 400)
    print(f"\n{'Done' if ok else 'FAILED'} in {time.monotonic() - story.started:.1f} s ({LABEL}).", flush=True)
    return 0 if ok else 1


def main() -> int:
    print(f"Deputy demo ({LABEL}: throwaway keys in a temporary directory)", flush=True)
    with tempfile.TemporaryDirectory(prefix="deputy-demo-") as directory:
        ids = DemoIdentities(Path(directory) / "demo")
        port = _free_port()
        config = ids.create(listen=f"127.0.0.1:{port}")
        gateway = f"http://127.0.0.1:{port}"
        with gateway_process(config, gateway, log=Path(directory) / "gateway.log"):
            return asyncio.run(_story(ids, gateway))


if __name__ == "__main__":
    sys.exit(main())
