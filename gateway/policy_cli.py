"""`deputy policy ...`: test, evaluate, bundle and push the policy, against the engine the config selects."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .settings import ConfigError, load_settings, opa_address

if TYPE_CHECKING:
    from delegation.policy import PolicyEngine, PolicySource

T = TypeVar("T")
DEFAULT_CASES = Path("tests/policy/cases")
EXIT_FAILED = 1
PUSH_TIMEOUT_S = 10.0


def add_commands(commands: Any, config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    policy = commands.add_parser("policy", help="test, evaluate, bundle or push the policy",
                                 description="Work on the policy with the engine your config selects.")
    actions = policy.add_subparsers(required=True, metavar="ACTION")
    test = actions.add_parser("test", help="run policy case files against the configured engine; exit 1 on a failure")
    test.add_argument("dir", nargs="?", type=Path, default=DEFAULT_CASES,
                      help=f"directory of *.json case files (default: {DEFAULT_CASES})")
    test.set_defaults(run=_test)
    evaluate = actions.add_parser("eval", help="print the decision for one input document, with its reasons")
    evaluate.add_argument("--input", required=True, type=Path, metavar="FILE",
                          help="the input document (JSON; - for stdin)")
    evaluate.set_defaults(run=_eval)
    bundle = actions.add_parser("bundle", help="write an OPA bundle of the policy directory (opa run -s -b OUT)")
    bundle.add_argument("out", type=Path, metavar="OUT.tar.gz")
    bundle.set_defaults(run=_bundle)
    push = actions.add_parser("push", help="load the policy's modules and data into a running OPA (Policy, Data APIs)")
    push.add_argument("--opa", metavar="URL", help="the OPA server (default: [policy] opa_url)")
    push.set_defaults(run=_push)
    for command in (test, evaluate, bundle, push):
        config_option(command)


def _test(args: argparse.Namespace) -> int:
    from delegation.policy_cases import read_cases, run_case

    cases = _policy_call(lambda: read_cases(args.dir))
    engine = _engine(args)
    results = _run(engine, lambda: asyncio.gather(*(run_case(engine, case) for case in cases)))
    for result in results:
        print(f"{'PASS' if result.passed else 'FAIL'}  {result.case.file}: {result.case.name}")
        for problem in result.problems:
            print(f"      {problem}")
    failed = sum(not r.passed for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed ({engine.engine} engine, revision {engine.revision})")
    return EXIT_FAILED if failed else 0


def _eval(args: argparse.Namespace) -> int:
    from delegation.policy import PolicyInput, PolicyUnavailable

    document = _read_json(args.input)
    engine = _engine(args)
    try:
        decision = _run(engine, lambda: engine.decide(PolicyInput(document)))
    except PolicyUnavailable as exc:
        print(f"deputy: the {exc.engine} engine could not decide: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    about = {"engine": engine.engine, "revision": decision.revision, "decision_id": decision.decision_id}
    print(json.dumps({**decision.as_document(), **about}, indent=2))
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from delegation.opa_bundle import write_bundle

    source = _source(args)
    files = _policy_call(lambda: write_bundle(source, args.out))
    print(f"wrote {args.out}: revision {source.revision}, {len(files)} files ({', '.join(files)})")
    print(f"serve it with: opa run -s -b {args.out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from delegation.opa import opa_client
    from delegation.opa_bundle import push

    source = _source(args)
    url = opa_address(args.opa, key="--opa") if args.opa else load_settings(args.config).policy.opa_url

    async def run() -> list[str]:
        async with opa_client(url, timeout_s=PUSH_TIMEOUT_S) as client:
            return await push(source, client)

    loaded = _policy_call(lambda: asyncio.run(run()))
    print(f"pushed revision {source.revision} to {url}: {', '.join(loaded)}")
    return 0


def _engine(args: argparse.Namespace) -> PolicyEngine:
    from .wiring import policy_engine

    return policy_engine(load_settings(args.config).policy)


def _run(engine: PolicyEngine, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` with the engine started (an OPA engine's client open) and stopped after."""
    async def run() -> T:
        await engine.start()
        try:
            return await work()
        finally:
            await engine.stop()

    return asyncio.run(run())


def _source(args: argparse.Namespace) -> PolicySource:
    from delegation.policy import PolicySource
    from policies import PACKAGED_POLICIES

    directory = load_settings(args.config).policy.dir or PACKAGED_POLICIES
    return _policy_call(lambda: PolicySource.read(directory))


def _policy_call(work: Callable[[], T]) -> T:
    """PolicyError → ConfigError: printed as one line, exit 2."""
    from delegation.policy import PolicyError

    try:
        return work()
    except PolicyError as exc:
        raise ConfigError(f"policy: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    from delegation.policy import PolicyError, json_document

    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        document = json_document(str(path), text)
    except (OSError, UnicodeDecodeError, PolicyError) as exc:
        raise ConfigError(f"--input: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"--input: {path}: the input document must be a JSON object")
    return document
