"""A FastAPI API protected by Deputy's access tokens, with its RFC 9728 metadata.

`GET /inbox` needs `mail.read`, `POST /send` needs `mail.send` (the demo mail API's routes, each with
`Depends(require_scope(verifier, ...))`), and its RFC 9728 metadata naming Deputy.
Against `deputy serve --dev` (its resource `https://mail.demo.test` and resource server SVID):

    deputy serve --dev &
    python examples/fastapi_api.py           # serves http://127.0.0.1:8701 (--issuer, --port)
"""

from __future__ import annotations

from fastapi import FastAPI

from deputy_client.resource import AccessTokenVerifier
from deputy_client.resource.dependency import serve_metadata
from deputy_client.resource.metadata import protected_resource_metadata
from gateway.demo import mail_api, resource_main


def api(verifier: AccessTokenVerifier) -> FastAPI:
    """The mail API for `verifier.audience`, serving its metadata at `/.well-known/oauth-protected-resource`."""
    app = mail_api(verifier)
    serve_metadata(app, protected_resource_metadata(verifier.audience, issuer=verifier.issuer,
                                                    scopes=["mail.read", "mail.send"], resource_name="Demo mail API"))
    return app


if __name__ == "__main__":
    resource_main(api, description="A FastAPI API protected by Deputy", port=8701)
