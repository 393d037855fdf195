"""Policy decisions per second and their latency: the embedded engine, and the OPA path.

The embedded engine (`EmbeddedRego`, rego-cpp in process) and the OPA engine (`OpaServer`: opa-python-client
over loopback HTTP to the test OPA server of tests/opa_server.py, a separate process serving the packaged
policy as a bundle) each decide the inputs of Deputy's decision table (tests/policy/cases), round robin,
for a fixed time at each concurrency. The figures are the engine's cost as the gateway sees it: for OPA
they include the HTTP round trip, JSON both ways and the server's evaluation, and on this 2-core machine
the server and this client share the cores.

    python bench/policy.py                    # 5 s per row; OPA at 1 and 16 decisions in flight
    python bench/policy.py --seconds 10 --concurrency 1 8 32
    python bench/policy.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delegation.opa import OpaServer  # noqa: E402
from delegation.opa_bundle import write_bundle  # noqa: E402
from delegation.policy import PolicyEngine, PolicyInput, PolicySource  # noqa: E402
from delegation.policy_cases import read_cases  # noqa: E402
from delegation.rego import EmbeddedRego  # noqa: E402
from policies import PACKAGED_POLICIES  # noqa: E402
from tests.support import free_port  # noqa: E402

INPUTS = [PolicyInput(case.input) for case in read_cases(ROOT / "tests" / "policy" / "cases")]


async def measure(engine: PolicyEngine, seconds: float, concurrency: int) -> dict[str, Any]:
    """`concurrency` loops deciding back to back for `seconds`; every latency kept."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def loop(offset: int) -> None:
        nonlocal failures
        i = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await engine.decide(INPUTS[i % len(INPUTS)])
            except Exception:
                failures += 1
            latencies.append(time.perf_counter() - started)
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {"engine": engine.engine, "concurrency": concurrency, "decisions": len(latencies), "failures": failures,
            "per_s": len(latencies) / elapsed, "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000}


@contextmanager
def opa_process(bundle: Path) -> Iterator[str]:
    """The test OPA server as its own process, serving `bundle`; yields its URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.opa_server", "--addr", f"127.0.0.1:{port}",
                                "--bundle", str(bundle)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise SystemExit("the test OPA server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@asynccontextmanager
async def started(engine: PolicyEngine) -> AsyncIterator[PolicyEngine]:
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def run(seconds: float, concurrencies: list[int], url: str) -> list[dict[str, Any]]:
    rows = []
    engines: list[PolicyEngine] = [EmbeddedRego(PolicySource.read(PACKAGED_POLICIES)), OpaServer(url, timeout_ms=5000)]
    for engine in engines:
        # The embedded engine decides without yielding to the event loop: more in flight is the same loop.
        levels = [1] if engine.engine == "embedded" else concurrencies
        async with started(engine):
            await measure(engine, min(1.0, seconds), max(levels))  # warm-up, discarded
            for concurrency in levels:
                rows.append(await measure(engine, seconds, concurrency))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"Deputy policy bench: {len(INPUTS)} inputs of tests/policy/cases, round robin; {os.cpu_count()} CPUs",
             "embedded = rego-cpp in process; opa = opa-python-client over loopback HTTP to tests/opa_server.py", "",
             f"{'engine':<10}{'in flight':>10}{'decisions':>11}{'failed':>8}{'per s':>10}{'p50 ms':>9}{'p99 ms':>9}",
             "-" * 67]
    for r in rows:
        lines.append(f"{r['engine']:<10}{r['concurrency']:>10}{r['decisions']:>11}{r['failures']:>8}"
                     f"{r['per_s']:>10.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per row (default 5)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="decisions in flight")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "bundle.tar.gz"
        write_bundle(PolicySource.read(PACKAGED_POLICIES), bundle)
        with opa_process(bundle) as url:
            rows = asyncio.run(run(args.seconds, args.concurrency, url))
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0 if all(r["failures"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
