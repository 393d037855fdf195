"""Revocation bench for Deputy: time from `POST /tasks/{id}/complete` until a running resource-server
verifier (deputy_client.resource.AccessTokenVerifier, embedded defaults) rejects the task's token.

It builds its own deployment in a temporary directory (a user IdP and a SPIFFE trust domain with freshly
generated ES256 keys, one resource whose `clients` lists the verifier's SPIFFE ID, the packaged policy),
starts `deputy serve` on a free loopback port, starts one verifier following its SSF poll stream (or, with
`--revocations feed`, the native revocation feed), then for
each task: open it, mint an access token within it, verify that token (must pass), complete the task, and
poll `verify` every 1 ms until it is refused as revoked. The clock starts just before `complete` is sent.

With `--store postgresql://... --replicas 2`, two replicas share the database: the verifier follows the
first's SSF stream (it listens at the issuer's address) while every task is opened, used and completed on
the second, so each revocation crosses replicas (LISTEN/NOTIFY) before the verifier feels it.

Examples:
    python bench/revocation.py                 # 1,000 tasks
    python bench/revocation.py --tasks 200 --json
    python bench/revocation.py --store postgresql://postgres@127.0.0.1:54329/deputy_bench --replicas 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import scale_out

from deputy_client.resource import AccessTokenVerifier, FeedStale, InvalidToken
from gateway.dev import DemoIdentities, DemoResource

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
TXN = "urn:ietf:params:oauth:token-type:txn_token"
IDP = "https://idp.example.com"
TRUST_DOMAIN = "example.org"
AGENT = f"spiffe://{TRUST_DOMAIN}/agents/mail"
WATCHER = f"spiffe://{TRUST_DOMAIN}/rs/mail"
RESOURCE = "https://mail.example.com"
MAX_TASKS = 10_000
POLL_S = 0.001
GIVE_UP_S = 5.0
TARGET_P99_MS = 1000.0  # issue #3: p99 under 1 s with embedded defaults
TARGET_REPLICAS_P99_MS = 100.0  # issue 9: completed on replica A, felt through replica B's SSF stream
POLICY_DATA = {"access": {"grants": {AGENT: {RESOURCE: ["mail.read", "mail.send"]}},
                          "delegations": {IDP: {"alice": [AGENT]}}}}


async def one_task(client: httpx2.AsyncClient, deployment: DemoIdentities, verifier: AccessTokenVerifier) -> float:
    """Open, mint, verify, complete; seconds from sending `complete` until the verifier refuses the token."""
    agent = deployment.svid(AGENT)
    opened = await client.post(
        "/token",
        data={
            "grant_type": GRANT,
            "subject_token": deployment.user_token("alice"),
            "subject_token_type": ACCESS_TOKEN,
            "actor_token": agent,
            "actor_token_type": JWT_TYPE,
            "requested_token_type": TXN,
            "scope": "mail.read",
            "audience": RESOURCE,
        },
    )
    opened.raise_for_status()
    task = opened.json()
    minted = await client.post(
        "/token",
        data={
            "grant_type": GRANT,
            "subject_token": task["access_token"],
            "subject_token_type": TXN,
            "actor_token": agent,
            "actor_token_type": JWT_TYPE,
            "scope": "mail.read",
            "resource": RESOURCE,
            "requested_token_type": ACCESS_TOKEN,
        },
    )
    minted.raise_for_status()
    token = minted.json()["access_token"]
    await verifier.verify(token, "mail.read")
    started = time.perf_counter()
    done = await client.post(f"/tasks/{task['task_id']}/complete", headers={"Authorization": f"Bearer {agent}"})
    done.raise_for_status()
    while time.perf_counter() - started < GIVE_UP_S:
        try:
            await verifier.verify(token, "mail.read")
        except FeedStale:
            raise
        except InvalidToken:
            return time.perf_counter() - started
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"token of task {task['task_id']} still accepted after {GIVE_UP_S:g} s")


async def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """With several replicas, the verifier follows the first (at the issuer's address) and every task is
    opened, used and completed on the last: a revocation crosses replicas before the verifier feels it."""
    with tempfile.TemporaryDirectory(prefix="deputy-revocation-bench-") as tmp:
        listen = f"127.0.0.1:{scale_out.free_port()}"
        deployment = DemoIdentities(Path(tmp) / "deployment")
        config = deployment.create(listen=listen, idp=IDP, trust_domain=TRUST_DOMAIN, data=POLICY_DATA,
                                   resources=(DemoResource(RESOURCE, ("mail.read", "mail.send"), (WATCHER,)),))
        if args.store:
            scale_out.use_store(config, args.store)
        log(f"starting {scale_out.describe(args, 1)} ...")
        with scale_out.replicas(config, listen, args.replicas, workers=1) as running:
            followed, completing = running[0][0], running[-1][0]
            async with (
                httpx2.AsyncClient(base_url=completing, timeout=10) as client,
                httpx2.AsyncClient(timeout=10) as rs_client,
                AccessTokenVerifier(
                    issuer=followed, audience=RESOURCE, client=rs_client, svid=lambda: deployment.svid(WATCHER),
                    revocations=args.revocations,
                ) as verifier,
            ):
                staleness = verifier.max_feed_staleness
                latencies, failures = await measure(args.tasks, client, deployment, verifier, log)
    ordered = sorted(latencies)
    p99 = percentile_ms(ordered, 99)
    target = TARGET_REPLICAS_P99_MS if args.replicas > 1 else TARGET_P99_MS
    return {
        "tasks": args.tasks,
        "rejected": len(ordered),
        "failures": failures,
        "p50_ms": percentile_ms(ordered, 50),
        "p90_ms": percentile_ms(ordered, 90),
        "p99_ms": p99,
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else None,
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 2) if ordered else None,
        "target_p99_ms": target,
        "met": p99 is not None and p99 < target and not failures,
        "verifier": {"revocations": args.revocations, "max_feed_staleness_s": staleness,
                     "poll_interval_ms": POLL_S * 1000},
        "gateway": scale_out.describe(args, 1),
        "completed_on_another_replica": args.replicas > 1,
        "cpu_count": os.cpu_count(),
    }


async def measure(tasks: int, client: httpx2.AsyncClient, deployment: DemoIdentities, verifier: AccessTokenVerifier,
                  log: Any) -> tuple[list[float], dict[str, int]]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    for i in range(tasks):
        try:
            latencies.append(await one_task(client, deployment, verifier))
        except (httpx2.HTTPError, InvalidToken, TimeoutError) as exc:
            kind = type(exc).__name__
            failures[kind] = failures.get(kind, 0) + 1
        if (i + 1) % 100 == 0:
            log(f"  {i + 1}/{tasks} tasks")
    return latencies, failures


def percentile_ms(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))  # nearest rank
    return round(ordered[index] * 1000, 2)


def print_table(result: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(
        f"Deputy revocation bench: complete -> verifier rejects, {result['tasks']} tasks, "
        f"one verifier on loopback, {result['cpu_count']} CPUs\n{result['gateway']}"
        + (": completed on one replica, followed on another" if result["completed_on_another_replica"] else "")
    )
    print()
    columns = ("p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms")
    header = f"{'tasks':>7}{'rejected':>10}{'failed':>8}" + "".join(f"{c:>9}" for c in columns)
    print(header)
    print("-" * len(header))
    print(
        f"{result['tasks']:>7}{result['rejected']:>10}{sum(result['failures'].values()):>8}"
        f"{ms(result['p50_ms']):>9}{ms(result['p90_ms']):>9}{ms(result['p99_ms']):>9}"
        f"{ms(result['max_ms']):>9}{ms(result['mean_ms']):>9}"
    )
    if result["failures"]:
        print("failures: " + ", ".join(f"{k}: {v}" for k, v in sorted(result["failures"].items())))
    print()
    verdict = "met" if result["met"] else "NOT met"
    print(f"target p99 < {result['target_p99_ms']:.0f} ms: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help=f"tasks to open and complete (1..{MAX_TASKS})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    parser.add_argument("--revocations", choices=("ssf", "feed"), default="ssf",
                        help="what the verifier follows: its own SSF poll stream (default) or the native feed")
    scale_out.add_options(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.tasks <= MAX_TASKS:
        parser.error(f"--tasks must be between 1 and {MAX_TASKS}")
    scale_out.check_options(args)
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    result = asyncio.run(run(args, log))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
