"""DEMO ONLY: a tiny mail API protected by Deputy access tokens, through the resource-server verifier.

(No `from __future__ import annotations`: FastAPI must resolve the Annotated dependencies at runtime.)
"""


from typing import Annotated, Any

from fastapi import Depends, FastAPI

from gateway.resource_server import require_scope
from token_exchange.resource_server import AccessTokenVerifier, VerifiedAccess

INBOX = [
    {"from": "bob@example.com", "subject": "Quarterly numbers", "body": "Revenue is up 12%."},
    {"from": "carol@example.com", "subject": "Lunch?", "body": "Thursday at noon works."},
]


def mail_api(verifier: AccessTokenVerifier) -> FastAPI:
    """GET /inbox needs mail.read; POST /send needs mail.send."""
    app = FastAPI(title="Demo mail API (DEMO ONLY)", docs_url=None, redoc_url=None, openapi_url=None)
    reader = Annotated[VerifiedAccess, Depends(require_scope(verifier, "mail.read"))]
    sender = Annotated[VerifiedAccess, Depends(require_scope(verifier, "mail.send"))]

    @app.get("/inbox")
    async def inbox(access: reader) -> dict[str, Any]:
        return {"user": access.subject, "read_by": access.agent, "task": access.task_id, "messages": INBOX}

    @app.post("/send")
    async def send(access: sender) -> dict[str, Any]:
        return {"user": access.subject, "sent_by": access.agent, "status": "queued"}

    return app
