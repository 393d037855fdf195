"""A SPIFFE Workload API server for tests (SPIFFE Workload Endpoint §5, Workload API §5.3 JWT-SVID profile):
py-spiffe's generated servicer on a Unix socket, serving JWT-SVIDs signed by a trust domain's real key and its
JWT bundle. Like SPIRE's agent it refuses any call without the `workload.spiffe.io: true` metadata."""

from __future__ import annotations

import json
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.support import TrustDomain

SECURITY_HEADER = ("workload.spiffe.io", "true")


class WorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    """Hands out SVIDs for `path` in `domain`, valid `ttl` seconds; `fetched` holds each one it made."""

    def __init__(self, directory: Path, domain: TrustDomain, path: str, *, ttl: int = 300) -> None:
        self.domain, self.path, self.ttl = domain, path, ttl
        self.fetched: list[str] = []
        self.refused = 0
        self._stopping = threading.Event()
        self.socket = directory / "workload.sock"
        self.endpoint = f"unix://{self.socket}"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{self.socket}")
        self.server.start()

    def _allowed(self, context: Any) -> bool:
        if SECURITY_HEADER in tuple(context.invocation_metadata()):
            return True
        self.refused += 1
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        return False

    def FetchJWTSVID(self, request: Any, context: Any) -> Any:
        self._allowed(context)
        if not request.audience:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        svid = self.domain.svid(self.path, audience=request.audience[0], ttl=self.ttl)
        self.fetched.append(svid)
        spiffe_id = f"spiffe://{self.domain.name}{self.path}"
        return workload_pb2.JWTSVIDResponse(svids=[workload_pb2.JWTSVID(spiffe_id=spiffe_id, svid=svid)])

    def FetchJWTBundles(self, request: Any, context: Any) -> Any:
        self._allowed(context)
        bundle = json.dumps(self.domain.jwks()).encode()
        yield workload_pb2.JWTBundlesResponse(bundles={self.domain.name: bundle})
        while context.is_active() and not self._stopping.wait(0.1):
            pass

    def close(self) -> None:
        self._stopping.set()
        self.server.stop(grace=None).wait()
