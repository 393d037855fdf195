"""What the `POST /token` fast path in front of FastAPI buys: gateway CPU per exchange, in process.

Builds the bench's deployment (bench/exchange.py), starts the app's lifespan in this process, and
sends the same pre-built exchanges through the ASGI interface, alternating rounds between the app as
served (`TokenFastPath` in front of FastAPI) and the FastAPI app behind it, which routes `/token` to the
same handler through its middleware and router. No network, no client: what differs is only the path
through the framework. Reports µs per exchange for each, and the difference, over several rounds.

    python bench/fast_path.py                 # 5 rounds of 2,000 exchanges each way
    python bench/fast_path.py --rounds 9 --exchanges 3000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from exchange import write_deployment

from gateway.app import build_app
from gateway.settings import load_settings
from gateway.wiring import prepare


async def call(app: Any, body: bytes) -> int:
    """One POST /token through the ASGI interface; returns the status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/token", "raw_path": b"/token", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8600)}
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def round_us(app: Any, forms: list[bytes], count: int) -> float:
    """CPU µs per exchange (process time, so the SQLite thread and this loop both count)."""
    started = time.process_time()
    for i in range(count):
        status = await call(app, forms[i % len(forms)])
        if status != 200:
            raise RuntimeError(f"exchange answered {status}")
    return (time.process_time() - started) / count * 1e6


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, list[float]]:
    config, forms = write_deployment(directory, "127.0.0.1:8600", 64)
    settings = load_settings(config)
    prepared = prepare(settings)
    served = build_app(prepared)
    fastapi_app = served.app
    results: dict[str, list[float]] = {"fast path": [], "FastAPI": []}
    async with fastapi_app.router.lifespan_context(fastapi_app):
        await round_us(served, forms, 500)  # warm-up: caches, allocator, policy
        await round_us(fastapi_app, forms, 500)
        for _ in range(args.rounds):
            results["fast path"].append(await round_us(served, forms, args.exchanges))
            results["FastAPI"].append(await round_us(fastapi_app, forms, args.exchanges))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--exchanges", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deputy-fast-path-") as directory:
        results = asyncio.run(measure(args, Path(directory)))
    fast, full = results["fast path"], results["FastAPI"]
    print(f"{'path':<12} {'median µs/exchange':>19} {'min':>8} {'max':>8}   ({args.rounds} rounds x {args.exchanges})")
    for name, values in results.items():
        print(f"{name:<12} {statistics.median(values):>19.1f} {min(values):>8.1f} {max(values):>8.1f}")
    saved = statistics.median(full) - statistics.median(fast)
    print(f"the fast path saves {saved:.1f} µs per exchange ({saved / statistics.median(full):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
