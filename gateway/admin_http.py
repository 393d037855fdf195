"""The admin API over HTTP, for the CLI: one gateway address, one admin credential (a Bearer token), JSON in
and out, and every failure as one readable line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2

TIMEOUT = 15.0


class ApiFailure(Exception):
    """The gateway refused, or could not be reached: `str()` is the line to show; the CLI exits 1."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the admin API is and who calls it."""

    addr: str
    token: str
    hint: str = ""  # added to a connection failure


class AdminApi:
    """`request` sends one call to `/admin...`; a refusal raises `ApiFailure` as `error: description`."""

    def __init__(self, target: Target, *, transport: httpx2.BaseTransport | None = None) -> None:
        self.addr, self.hint = target.addr, target.hint
        self._client = httpx2.Client(base_url=target.addr, timeout=TIMEOUT, transport=transport,
                                     headers={"Authorization": f"Bearer {target.token}",
                                              "Accept": "application/json"})

    def get(self, path: str, **params: object) -> dict[str, Any]:
        return self.request("GET", path, params=params)

    def request(self, method: str, path: str, *, params: dict[str, object] | None = None,
                body: dict[str, object] | None = None) -> dict[str, Any]:
        query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items()
                 if v is not None}
        try:
            response = self._client.request(method, path, params=query, json=body)
        except httpx2.HTTPError as exc:
            cause = f"{exc or type(exc).__name__}{f'; {self.hint}' if self.hint else ''}"
            raise ApiFailure(f"cannot reach the gateway at {self.addr}: {cause}") from exc
        return answer(response)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answer(response: httpx2.Response) -> dict[str, Any]:
    """The JSON object of a 2xx answer; otherwise its OAuth error (`error: description`) as ApiFailure."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.is_success and isinstance(document, dict):
        return document
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        description = document.get("error_description") or document.get("detail") or ""
        raise ApiFailure(f"{document['error']}: {description}".rstrip(": "))
    if isinstance(document, dict) and document.get("detail"):
        raise ApiFailure(f"HTTP {response.status_code}: {_detail(document['detail'])}")
    raise ApiFailure(f"HTTP {response.status_code} from {response.request.url} (not the admin API's JSON)")


def _detail(detail: object) -> str:
    """FastAPI's validation detail (a list of {loc, msg}) as one line."""
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ())[1:])}: {d.get('msg')}" for d in detail
                         if isinstance(d, dict))
    return str(detail)
