"""SDK bench for Deputy: what `deputy_client` adds to an authorised HTTP call on a warm cache, and what a DPoP
proof costs at the client and at the verifier.

It builds its own deployment in a temporary directory (a user IdP and a SPIFFE trust domain with fresh
ES256 keys, one resource, the packaged policy), starts `deputy serve` on a free loopback port, opens a task
with `DeputyClient` and mints one token per scheme (the cache is then warm), and measures, each in rounds
that alternate the variants so drift hits them alike:

- **Bearer overhead**: a GET through `httpx2.AsyncClient` with `auth=task.auth(...)` against the same GET
  with the token already in a static `Authorization` header. Both go to an in-process transport that
  answers 200 at once, so the difference of the medians is the SDK's own work per call, not the network's.
- **DPoP at the client**: the same call with a DPoP-bound token (`Authorization: DPoP` and a fresh proof
  with `ath`), against the Bearer call; and `DpopKey.proof` alone.
- **DPoP at the verifier**: `AccessTokenVerifier.verify_request` with a DPoP-bound token and its proof,
  against the same with a Bearer token (both warm: the token's signature is cached after its first use,
  as it is in a resource server; a proof is new on every call, so its signature is checked every time).

Examples:
    python bench/sdk.py
    python bench/sdk.py --calls 20000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import scale_out

from deputy_client import DeputyClient
from deputy_client.resource import AccessTokenVerifier
from gateway.dev import DemoIdentities, DemoResource
from token_exchange.dpop import DpopKey

IDP = "https://idp.example.com"
TRUST_DOMAIN = "example.org"
AGENT = f"spiffe://{TRUST_DOMAIN}/agents/mail"
WATCHER = f"spiffe://{TRUST_DOMAIN}/rs/mail"
RESOURCE = "https://mail.example.com"
URL = f"{RESOURCE}/inbox"
TARGET_BEARER_US = 50.0  # issue 10: under 50 µs median for Bearer
ROUNDS = 5
POLICY_DATA = {"access": {"grants": {AGENT: {RESOURCE: ["mail.read"]}}, "delegations": {IDP: {"alice": [AGENT]}}}}

Call = Callable[[], Awaitable[Any]]


async def timed(call: Call, count: int) -> list[float]:
    """Seconds per call, `count` calls."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def compare(variants: dict[str, Call], calls: int) -> dict[str, float]:
    """Median µs per call of each variant, over ROUNDS rounds that alternate them."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():  # warm-up: caches, first connection, code paths
        await timed(call, 200)
    for _ in range(ROUNDS):
        for name, call in variants.items():
            samples[name] += await timed(call, calls // ROUNDS)
    return {name: round(statistics.median(values) * 1e6, 2) for name, values in samples.items()}


def answering_200(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json={"ok": True})


async def client_side(deputy: DeputyClient, bound: DeputyClient, user_token: str, calls: int) -> dict[str, float]:
    """Medians of a warm GET: static header, SDK Bearer, SDK DPoP; and a proof alone."""
    transport = httpx2.MockTransport(answering_200)
    async with (
        deputy.task(user_token, scope=["mail.read"], audiences=[RESOURCE], purpose="bench") as task,
        bound.task(user_token, scope=["mail.read"], audiences=[RESOURCE], purpose="bench") as bound_task,
    ):
        token = await task.token(RESOURCE, "mail.read")
        async with (
            httpx2.AsyncClient(transport=transport, headers={"Authorization": f"Bearer {token}"}) as static,
            httpx2.AsyncClient(transport=transport, auth=task.auth(RESOURCE, "mail.read")) as bearer,
            httpx2.AsyncClient(transport=transport, auth=bound_task.auth(RESOURCE, "mail.read")) as dpop,
        ):
            for client in (bearer, dpop):
                (await client.get(URL)).raise_for_status()  # mints: the cache is warm from here on
            key = DpopKey()
            medians = await compare({
                "static_header": lambda: static.get(URL),
                "sdk_bearer": lambda: bearer.get(URL),
                "sdk_dpop": lambda: dpop.get(URL),
            }, calls)
            medians["proof_alone"] = await compare_sync(lambda: key.proof("GET", URL, access_token=token), calls)
    return medians


async def compare_sync(call: Callable[[], Any], calls: int) -> float:
    async def wrapped() -> Any:
        return call()
    return (await compare({"it": wrapped}, calls))["it"]


async def verifier_side(deputy: DeputyClient, bound: DeputyClient, user_token: str, issuer: str,
                        svid: Callable[[], str], calls: int) -> dict[str, float]:
    """Medians of `verify_request`: a Bearer token, and a DPoP-bound token with a fresh proof per call."""
    key = bound.dpop_key
    assert key is not None
    async with (
        deputy.task(user_token, scope=["mail.read"], audiences=[RESOURCE], purpose="bench") as task,
        bound.task(user_token, scope=["mail.read"], audiences=[RESOURCE], purpose="bench") as bound_task,
        httpx2.AsyncClient(timeout=10) as rs_client,
        AccessTokenVerifier(issuer=issuer, audience=RESOURCE, client=rs_client, svid=svid) as verifier,
    ):
        bearer = await task.token(RESOURCE, "mail.read")
        bound_token = await bound_task.token(RESOURCE, "mail.read")

        async def with_bearer() -> Any:
            return await verifier.verify_request(authorization=[f"Bearer {bearer}"], dpop=[], method="GET",
                                                 url=URL, required_scope="mail.read")

        async def with_dpop() -> Any:
            proof = key.proof("GET", URL, access_token=bound_token)
            return await verifier.verify_request(authorization=[f"DPoP {bound_token}"], dpop=[proof],
                                                 method="GET", url=URL, required_scope="mail.read")

        medians = await compare({"verify_bearer": with_bearer, "verify_dpop_with_proof": with_dpop}, calls)
        medians["proof_alone"] = await compare_sync(lambda: key.proof("GET", URL, access_token=bound_token), calls)
    return medians


async def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="deputy-sdk-bench-") as tmp:
        listen = f"127.0.0.1:{scale_out.free_port()}"
        deployment = DemoIdentities(Path(tmp) / "deployment")
        config = deployment.create(listen=listen, idp=IDP, trust_domain=TRUST_DOMAIN, data=POLICY_DATA,
                                   resources=(DemoResource(RESOURCE, ("mail.read",), (WATCHER,)),))
        log("starting deputy serve ...")
        with scale_out.replicas(config, listen, 1, workers=1) as running:
            issuer = running[0][0]
            svid = lambda: deployment.svid(AGENT)  # noqa: E731
            async with (
                DeputyClient(issuer, identity=svid, dpop=False) as deputy,
                DeputyClient(issuer, identity=svid) as bound,
            ):
                log(f"client side: {args.calls} calls per variant ...")
                client = await client_side(deputy, bound, deployment.user_token("alice"), args.calls)
                log(f"verifier side: {args.calls} calls per variant ...")
                verifier = await verifier_side(deputy, bound, deployment.user_token("alice"), issuer,
                                               lambda: deployment.svid(WATCHER), args.calls)
    bearer_overhead = round(client["sdk_bearer"] - client["static_header"], 2)
    return {
        "calls_per_variant": args.calls,
        "client_us": client,
        "verifier_us": verifier,
        "sdk_bearer_overhead_us": bearer_overhead,
        "sdk_dpop_overhead_us": round(client["sdk_dpop"] - client["static_header"], 2),
        "dpop_cost_at_client_us": round(client["sdk_dpop"] - client["sdk_bearer"], 2),
        "dpop_cost_at_verifier_us": round(verifier["verify_dpop_with_proof"] - verifier["proof_alone"]
                                          - verifier["verify_bearer"], 2),
        "target_bearer_overhead_us": TARGET_BEARER_US,
        "met": bearer_overhead < TARGET_BEARER_US,
        "cpu_count": os.cpu_count(),
    }


def print_table(result: dict[str, Any]) -> None:
    client, verifier = result["client_us"], result["verifier_us"]
    print(f"Deputy SDK bench: medians of {result['calls_per_variant']} warm calls per variant, "
          f"{result['cpu_count']} CPUs\n")
    rows = [
        ("GET, token in a static header (baseline)", client["static_header"]),
        ("GET, auth=task.auth(...), Bearer", client["sdk_bearer"]),
        ("GET, auth=task.auth(...), DPoP (fresh proof per call)", client["sdk_dpop"]),
        ("DpopKey.proof alone", client["proof_alone"]),
        ("verify_request, Bearer", verifier["verify_bearer"]),
        ("verify_request, DPoP, proof made in the loop", verifier["verify_dpop_with_proof"]),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value:>8.1f} µs")
    print()
    print(f"  SDK overhead per call, Bearer: {result['sdk_bearer_overhead_us']:.1f} µs; "
          f"DPoP: {result['sdk_dpop_overhead_us']:.1f} µs")
    print(f"  a DPoP proof costs the client {result['dpop_cost_at_client_us']:.1f} µs per call and the verifier "
          f"{result['dpop_cost_at_verifier_us']:.1f} µs (verify_request with DPoP, less making the proof, "
          "less Bearer)")
    verdict = "met" if result["met"] else "NOT met"
    print(f"\ntarget (issue 10): SDK overhead under {result['target_bearer_overhead_us']:.0f} µs median for "
          f"Bearer: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="calls per variant (default 10,000)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)
    if args.calls < ROUNDS:
        parser.error(f"--calls must be at least {ROUNDS}")
    log = (lambda _: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    result = asyncio.run(run(args, log))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
