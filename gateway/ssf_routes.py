"""The OpenID SSF 1.0 transmitter's endpoints: metadata (§7), SET keys, stream configuration (§8.1.1), status
(§8.1.2), verification (§8.1.4) and RFC 8936 polling. Receivers authenticate as they do for `/revocations`:
a JWT-SVID listed in some resource's `clients`, as a Bearer token."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from delegation.ssf import Transmitter
from token_exchange import ssf
from token_exchange.actors import VerifiedActor
from token_exchange.errors import InvalidRequest
from token_exchange.rfc8936 import PollRequest

from .auth import deputy, resource_client
from .http_forms import read_json
from .openapi import (
    PollBody,
    PollRequestBody,
    SsfConfigurationBody,
    SsfJwksBody,
    StreamConfigBody,
    StreamRead,
    StreamRequestBody,
    StreamStatusBody,
    VerificationBody,
    documented,
)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
POLL_BODY_BYTES = 256 * 1024  # a poll acknowledges up to 1000 SETs, and may say why for each
Receiver = Annotated[VerifiedActor, Depends(resource_client)]
StreamId = Annotated[str | None, Query(max_length=64)]


def transmitter(request: Request) -> Transmitter:
    return deputy(request).ssf


def router(issuer: str) -> APIRouter:
    """The metadata at SSF §7.2's well-known path, the endpoints under the issuer's path (where the metadata
    says they are: `<issuer>/ssf/...`)."""
    routes = APIRouter()
    document = ssf.metadata(issuer)

    @routes.get(ssf.well_known_path(issuer), **documented(
        SsfConfigurationBody, bearer=False, summary="SSF 1.0 section 7: the transmitter metadata"))
    async def ssf_configuration() -> JSONResponse:
        return JSONResponse(document, headers={"Cache-Control": "max-age=60"})

    routes.include_router(_streams, prefix=urlsplit(issuer).path.rstrip("/"))
    return routes


_streams = APIRouter(prefix="/ssf")


@_streams.get("/jwks.json", **documented(SsfJwksBody, bearer=False, summary="The SET signing keys (RS256)"))
async def ssf_jwks(request: Request) -> JSONResponse:
    return JSONResponse(deputy(request).keys.events_jwks(), headers={"Cache-Control": "max-age=60"})


@_streams.post("/streams", **documented(StreamConfigBody, json=StreamRequestBody, status=201,
                                        summary="SSF 8.1.1.1: create a stream (no delivery: poll)"))
async def create_stream(request: Request, caller: Receiver) -> JSONResponse:
    config = await transmitter(request).streams.create(caller.id, await read_json(request))
    return JSONResponse(config, status_code=201, headers=NO_STORE)


@_streams.get("/streams", **documented(StreamRead, summary=(
    "SSF 8.1.1.2: a stream's configuration, or without stream_id the list of the caller's")))
async def read_streams(request: Request, caller: Receiver, stream_id: StreamId = None) -> JSONResponse:
    return JSONResponse(await transmitter(request).streams.read(caller.id, stream_id), headers=NO_STORE)


@_streams.patch("/streams", **documented(StreamConfigBody, json=StreamRequestBody, summary=(
    "SSF 8.1.1.3: update a stream: members sent replace theirs, the rest stay")))
async def update_stream(request: Request, caller: Receiver) -> JSONResponse:
    config = await transmitter(request).streams.update(caller.id, await read_json(request), replace_all=False)
    return JSONResponse(config, headers=NO_STORE)


@_streams.put("/streams", **documented(StreamConfigBody, json=StreamRequestBody, summary=(
    "SSF 8.1.1.4: replace a stream's receiver-supplied members")))
async def replace_stream(request: Request, caller: Receiver) -> JSONResponse:
    config = await transmitter(request).streams.update(caller.id, await read_json(request), replace_all=True)
    return JSONResponse(config, headers=NO_STORE)


@_streams.delete("/streams", **documented(None, status=204, summary="SSF 8.1.1.5: delete a stream and its SETs"))
async def delete_stream(request: Request, caller: Receiver, stream_id: StreamId = None) -> Response:
    await transmitter(request).streams.delete(caller.id, _required(stream_id))
    return Response(status_code=204, headers=NO_STORE)


@_streams.get("/status", **documented(StreamStatusBody, summary="SSF 8.1.2.1: a stream's status"))
async def read_status(request: Request, caller: Receiver, stream_id: StreamId = None) -> JSONResponse:
    return JSONResponse(await transmitter(request).streams.status(caller.id, _required(stream_id)), headers=NO_STORE)


@_streams.post("/status", **documented(StreamStatusBody, json=StreamStatusBody, summary=(
    "SSF 8.1.2.2: enable, pause (events held) or disable (nothing held) a stream")))
async def update_status(request: Request, caller: Receiver) -> JSONResponse:
    status = await transmitter(request).streams.set_status(caller.id, await read_json(request))
    return JSONResponse(status, headers=NO_STORE)


@_streams.post("/verify", **documented(None, json=VerificationBody, status=204, summary=(
    "SSF 8.1.4.2: queue a verification event echoing state (429 sooner than min_verification_interval)")))
async def verify(request: Request, caller: Receiver) -> Response:
    await transmitter(request).streams.verify(caller.id, await read_json(request))
    return Response(status_code=204, headers=NO_STORE)


@_streams.post("/poll/{stream_id}", **documented(PollBody, json=PollRequestBody, summary=(
    "RFC 8936: acknowledge SETs and receive the next ones; long poll unless returnImmediately")))
async def poll(stream_id: str, request: Request, caller: Receiver) -> JSONResponse:
    body = PollRequest.parse(await read_json(request, limit=POLL_BODY_BYTES))
    answer: dict[str, Any] = await transmitter(request).poller.poll(caller.id, stream_id, body)
    return JSONResponse(answer, headers=NO_STORE)


def _required(stream_id: str | None) -> str:
    if not stream_id:
        raise InvalidRequest("stream_id is required")
    return stream_id

