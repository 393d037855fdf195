"""DEMO ONLY: `deputy demo`, the whole story on one machine in well under a minute, nothing configured.

A demo identity provider and SPIFFE trust domain, a Deputy gateway, and a demo mail API that verifies
tokens with Deputy's resource-server verifier. The mail agent opens a task for alice, delegates to a
summarizer sub-agent, which reads the inbox; a widening attempt is refused; the agent completes the
task, and the sub-agent's next call is rejected. Both agents use the agent SDK (`deputy_client`), as a
real agent would: their tokens are DPoP-bound to each one's key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from fastapi import Depends, FastAPI

from deputy_client import DeputyClient, Handoff, InvalidRequest, InvalidScope, OAuthError, Task
from deputy_client.resource import AccessTokenVerifier, VerifiedAccess
from deputy_client.resource.dependency import require_scope

from .dev import AGENT, LABEL, MAIL, MAIL_API, SUBAGENT, DemoIdentities, find
from .process import gateway_process

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
async def serve_app(app: Any, port: int) -> AsyncIterator[str]:
    """Serve the ASGI `app` on 127.0.0.1:`port` until the block ends; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Demo:
    """The story's actors, the mail agent and the summarizer, each with its own SDK client (its own JWT-SVID
    and DPoP key), against a running gateway and the demo mail API; each step prints itself."""

    def __init__(self, ids: DemoIdentities, api: str, agent: DeputyClient, summarizer: DeputyClient,
                 story: Story) -> None:
        self.ids, self.api, self.agent, self.summarizer, self.story = ids, api, agent, summarizer, story

    def refused(self, error: OAuthError) -> None:
        self.story.show("refused", f"{error.status} {error}")

    async def run(self) -> bool:
        """The whole story: whether every step came out as told."""
        self.story.say(f"alice's mail agent ({AGENT}) opens a task with alice's token and its own JWT-SVID.")
        async with self.agent.task(self.ids.user_token("alice"), scope=["mail.read", "mail.send"], audiences=[MAIL],
                                   purpose="summarize today's mail") as task:
            for label, value in (("task", task.id), ("scope ceiling", " ".join(task.scope)),
                                 ("expires in", f"{task.expires_at - int(time.time())} s")):
                self.story.show(label, value)
            self.story.say(f"It delegates reading to a summarizer sub-agent ({SUBAGENT}).")
            handoff = await task.delegate(scope=["mail.read"], audiences=[MAIL])
            async with self.summarizer.join(handoff) as child, httpx2.AsyncClient(
                auth=child.auth(MAIL, "mail.read"), base_url=self.api, timeout=10
            ) as reader:
                self.story.show("child task", child.id)
                self.story.show("scope", " ".join(child.scope))
                contained = await self.read_then_widen(child, reader)
                ended = await self.complete_and_check(task, handoff, reader)
        return contained and ended

    async def read_then_widen(self, child: Task, reader: httpx2.AsyncClient) -> bool:
        """The sub-agent reads the inbox, then cannot widen; whether all went as told."""
        self.story.say("The summarizer gets an access token for the mail API and reads the inbox.")
        inbox = await reader.get("/inbox")
        body = inbox.json()
        self.story.show("GET /inbox", f"{inbox.status_code}: {len(body.get('messages', []))} messages "
                                      f"for {body.get('user')}, read by {body.get('read_by')}")
        self.story.say("The summarizer tries to widen its access to mail.send: refused.")
        widened = True
        try:
            await child.token(MAIL, "mail.send")
        except InvalidScope as error:
            self.refused(error)
            widened = False
        sent = await reader.post("/send")
        self.story.show("POST /send", f"{sent.status_code} with the mail.read token")
        return inbox.status_code == 200 and not widened and sent.status_code == 403

    async def complete_and_check(self, task: Task, handoff: Handoff, reader: httpx2.AsyncClient) -> bool:
        self.story.say("The mail agent completes the task (authenticated by its JWT-SVID).")
        started = time.monotonic()
        done = await task.complete()
        self.story.show("complete", f"{done['state']}: {len(done['ended_tasks'])} tasks ended, "
                                    f"{done['revoked_tokens']} tokens revoked")
        self.story.say("The summarizer calls the mail API again with its token: rejected.")
        response = await reader.get("/inbox")
        while response.status_code == 200 and time.monotonic() - started < 5:
            await asyncio.sleep(0.01)
            response = await reader.get("/inbox")
        self.story.show("GET /inbox", f"{response.status_code} {response.headers.get('www-authenticate', '')[:70]}")
        self.story.show("revoked after", f"{(time.monotonic() - started) * 1000:.0f} ms")
        self.story.say("The summarizer asks the gateway for a new task under the ended one: refused.")
        try:
            async with self.summarizer.join(handoff):
                return False
        except InvalidRequest as error:
            self.refused(error)
        return done["state"] == "completed" and response.status_code == 401


async def _story(ids: DemoIdentities, gateway: str) -> int:
    story = Story()
    async with httpx2.AsyncClient(timeout=10) as client:
        verifier = AccessTokenVerifier(issuer=gateway, audience=MAIL, client=client,
                                       svid=lambda: ids.svid(MAIL_API), max_feed_staleness=5)
        async with verifier, serve_app(mail_api(verifier), _free_port()) as api, DeputyClient(
            gateway, identity=lambda: ids.svid(AGENT)
        ) as agent, DeputyClient(gateway, identity=lambda: ids.svid(SUBAGENT)) as summarizer:
            story.say(f"Gateway {gateway} and demo mail API {api} are up; the API follows the revocation feed.")
            ok = await Demo(ids, api, agent, summarizer, story).run()
    print(f"\n{'Done' if ok else 'FAILED'} in {time.monotonic() - story.started:.1f} s ({LABEL}).", flush=True)
    return 0 if ok else 1


async def run_resource(make_app: Callable[[AccessTokenVerifier], Any], *, issuer: str, ids: DemoIdentities,
                       port: int) -> None:
    """Serve `make_app(verifier)` on 127.0.0.1:`port` as the dev resource server of the mail resource,
    following the revocations of the gateway at `issuer`, until stopped (the examples' runner)."""
    async with httpx2.AsyncClient(timeout=30) as client, AccessTokenVerifier(
        issuer=issuer, audience=MAIL, client=client, svid=lambda: ids.svid(MAIL_API), max_feed_staleness=5,
    ) as verifier:
        server = uvicorn.Server(uvicorn.Config(make_app(verifier), host="127.0.0.1", port=port, log_level="warning"))
        print(f"{LABEL}: serving {MAIL} on http://127.0.0.1:{port}, tokens from {issuer}", flush=True)
        await server.serve()


def resource_main(make_app: Callable[[AccessTokenVerifier], Any], *, description: str, port: int) -> None:
    """`python examples/<name>.py [--issuer URL] [--port N] [--dev-dir DIR]`, against `deputy serve --dev`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--issuer", default="http://127.0.0.1:8600", help="the Deputy gateway's issuer")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--dev-dir", type=Path, default=Path(".deputy-dev"), help="the state of deputy serve --dev")
    args = parser.parse_args()
    asyncio.run(run_resource(make_app, issuer=args.issuer, ids=DemoIdentities(find(args.dev_dir)), port=args.port))


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
