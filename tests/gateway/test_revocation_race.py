"""A revocation leaves nothing usable, even while exchanges are in flight (issue 7, item 2).

A real gateway with `--workers 2` on loopback. Each round puts about 40 exchanges for one party in
flight (one-shot access tokens, task openings, tokens within tasks opened just before; sent one a
millisecond, so the gateway is still taking new ones when the revoke arrives), each on a fresh
connection so that both workers serve them (SO_REUSEPORT spreads connections by their ports), and sends
`/admin/revoke?user=` (or `?agent=`) 20 ms in. Each granted access token is introspected at once, as a
resource server would. Once the revoke has answered 200:

- no access token granted in the round introspects as active, whichever worker issued it, nor did any
  introspection sent after the revoke answered;
- no task opened before or during the round mints any more, even for a fresh SVID of its agent;
- every access token granted in the round (each answered active, or would have) is named with its task
  in the paged feed and in the SSE stream, which was open throughout.

Why this fails without the check inside the write's transaction (the code before the reshape, which
checked cutoffs once, early, then asked the policy, signed, and wrote): an exchange that passed the early
check before the revocation committed, and wrote after it, recorded a task (implicit or opened) that the
revocation's cascade had not seen. Its token then stays active at introspection, its task token still
mints, and the feed never names it. Now the cutoff is re-read inside the write's own transaction, so a
write either commits before the revocation (and its cascade ends it) or is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import jwt
import pytest

from gateway.dev import DemoIdentities, DemoResource
from tests.support import ACCESS_TOKEN, GRANT, JWT, free_port, gateway_process

TXN = "urn:ietf:params:oauth:token-type:txn_token"
IDP = "https://idp.example.com"
MAIL = "https://mail.example.com"
AGENT = "spiffe://example.org/agents/mail"
WATCHER = "spiffe://example.org/rs/mail"
ADMIN = "spiffe://example.org/ops/admin"
ROUNDS = 5
ONE_SHOT, OPENINGS, MINTS, PRE_OPENED = 20, 10, 10, 4
SPREAD_S = 0.001  # one exchange sent every millisecond: the gateway is still taking new ones at 20 ms
REVOKE_AFTER_S = 0.02


def race_agent(round_no: int) -> str:
    return f"spiffe://example.org/agents/race-{round_no}"


def race_user(round_no: int) -> str:
    return f"race-user-{round_no}"


@dataclass
class Env:
    ids: DemoIdentities
    url: str

    def svid(self, spiffe_id: str, **claims: Any) -> str:
        return self.ids.svid(spiffe_id, **claims)

    def as_agent(self, spiffe_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.svid(spiffe_id)}"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ids = DemoIdentities(tmp_path_factory.mktemp("race") / "deployment")
    agents = [AGENT, *(race_agent(r) for r in range(ROUNDS))]
    users = ["alice", *(race_user(r) for r in range(ROUNDS))]
    data = {"access": {"grants": {a: {MAIL: ["mail.read", "mail.send"]} for a in agents},
                       "delegations": {IDP: {u: agents for u in users}}}}
    config = ids.create(listen=f"127.0.0.1:{free_port()}", idp=IDP, trust_domain="example.org", data=data,
                        resources=(DemoResource(MAIL, ("mail.read", "mail.send"), (WATCHER,)),), admins=(ADMIN,))
    with gateway_process(config, workers=2) as url:
        yield Env(ids, url)


@dataclass
class Round:
    """One race: who acts, what each exchange answered, and what introspection said meanwhile."""

    user: str
    agent: str
    user_token: str
    svid: str
    task_tokens: list[str] = field(default_factory=list)
    access_tokens: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    introspected: list[tuple[float, bool]] = field(default_factory=list)  # (sent at, answered active)
    revoke_answered_at: float = float("inf")


REFUSALS = ("subject_token rejected: issued before an admin revoked this user",
            "actor_token rejected: issued before an admin revoked this agent",
            "subject_token rejected: the task has ended")


def fresh_client(env: Env) -> httpx2.AsyncClient:
    """No keep-alive: every request opens its own connection, so the kernel spreads them over both workers."""
    return httpx2.AsyncClient(base_url=env.url, timeout=20, limits=httpx2.Limits(max_keepalive_connections=0))


async def exchange(env: Env, client: httpx2.AsyncClient, form: dict[str, Any], race: Round, *,
                   delay: float = 0) -> None:
    """One exchange; a granted access token is introspected at once, as a resource server would."""
    await asyncio.sleep(delay)
    response = await client.post("/token", data={"grant_type": GRANT, "actor_token_type": JWT, **form})
    body = response.json()
    if response.status_code != 200:
        assert (response.status_code, body["error"]) == (400, "invalid_request"), response.text
        assert body["error_description"].startswith(REFUSALS), response.text
        race.refusals.append(body["error_description"])
    elif body["issued_token_type"] == TXN:
        race.task_tokens.append(body["access_token"])
    else:
        race.access_tokens.append(body["access_token"])
        sent_at = time.monotonic()
        answer = await client.post("/introspect", data={"token": body["access_token"]},
                                   headers=env.as_agent(WATCHER))
        race.introspected.append((sent_at, answer.json()["active"]))


def one_shot(race: Round) -> dict[str, Any]:
    return {"subject_token": race.user_token, "subject_token_type": ACCESS_TOKEN, "actor_token": race.svid,
            "resource": MAIL, "scope": "mail.read"}


def opening(race: Round) -> dict[str, Any]:
    return {"subject_token": race.user_token, "subject_token_type": ACCESS_TOKEN, "actor_token": race.svid,
            "requested_token_type": TXN, "audience": MAIL, "scope": "mail.read"}


def within(task_token: str, svid: str) -> dict[str, Any]:
    return {"subject_token": task_token, "subject_token_type": TXN, "actor_token": svid, "resource": MAIL,
            "scope": "mail.read"}


async def race_round(env: Env, client: httpx2.AsyncClient, race: Round, party: dict[str, str]) -> None:
    """Open tasks; then send the ~40 exchanges, one a millisecond, and the revoke 20 ms in; wait for all."""
    for _ in range(PRE_OPENED):
        await exchange(env, client, opening(race), race)
    assert len(race.task_tokens) == PRE_OPENED, race.refusals
    pre_opened = list(race.task_tokens)
    forms = [one_shot(race)] * ONE_SHOT + [opening(race)] * OPENINGS
    forms += [within(pre_opened[i % PRE_OPENED], race.svid) for i in range(MINTS)]
    random.shuffle(forms)
    in_flight = [asyncio.create_task(exchange(env, client, form, race, delay=i * SPREAD_S))
                 for i, form in enumerate(forms)]
    await asyncio.sleep(REVOKE_AFTER_S)
    revoked = await client.post("/admin/revoke", params=party, headers=env.as_agent(ADMIN))
    race.revoke_answered_at = time.monotonic()
    assert revoked.status_code == 200, revoked.text
    await asyncio.gather(*in_flight)


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def nothing_usable(env: Env, client: httpx2.AsyncClient, race: Round) -> None:
    """No access token of the round is active, not even one introspected while the revoke was answering."""
    assert all(not active for sent_at, active in race.introspected if sent_at > race.revoke_answered_at)
    watcher = env.as_agent(WATCHER)
    answers = await gather(client.post("/introspect", data={"token": t}, headers=watcher) for t in race.access_tokens)
    assert [a.json() for a in answers] == [{"active": False}] * len(race.access_tokens)
    fresh_svid = env.svid(race.agent, iat=int(time.time()) + 2)  # issued after the revoke: the agent itself works
    mints = await gather(client.post("/token", data={"grant_type": GRANT, "actor_token_type": JWT,
                                                     **within(t, fresh_svid)}) for t in race.task_tokens)
    for mint in mints:
        assert (mint.status_code, mint.json()["error"]) == (400, "invalid_request"), mint.text
        assert "ended" in mint.json()["error_description"], mint.text


def named_in(events: list[dict[str, Any]], race: Round) -> bool:
    """Whether the feed's events name every access token of the round and every task it made."""
    jtis = {j for e in events for j in e["jtis"]}
    tasks = {t for e in events for t in e["task_ids"]}
    return ({claims(t)["jti"] for t in race.access_tokens} <= jtis
            and {claims(t)["txn"] for t in race.access_tokens + race.task_tokens} <= tasks)


async def gather(calls: Iterator[Awaitable[httpx2.Response]]) -> list[httpx2.Response]:
    return list(await asyncio.gather(*calls))


async def feed_after(env: Env, client: httpx2.AsyncClient, cursor: int) -> tuple[list[dict[str, Any]], int]:
    """Every event of the paged feed after `cursor`, and the cursor to ask with next."""
    events: list[dict[str, Any]] = []
    while True:
        page = (await client.get("/revocations", params={"since": cursor}, headers=env.as_agent(WATCHER))).json()
        events += page["events"]
        if not page["events"]:
            return events, int(page["next"])
        cursor = page["next"]


async def follow_stream(env: Env, cursor: int, into: list[dict[str, Any]]) -> None:
    """Append every event of `/revocations/stream` after `cursor` to `into`, until cancelled."""
    async with httpx2.AsyncClient(base_url=env.url, timeout=httpx2.Timeout(5, read=None)) as client, \
            client.stream("GET", "/revocations/stream", params={"since": cursor},
                          headers=env.as_agent(WATCHER)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                into.append(json.loads(line.removeprefix("data:")))


async def streamed(streamed_events: list[dict[str, Any]], race: Round, *, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while not named_in(streamed_events, race) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return named_in(streamed_events, race)


async def run_round(env: Env, client: httpx2.AsyncClient, kind: str, round_no: int) -> Round:
    now = int(time.time())
    user, agent = (race_user(round_no), AGENT) if kind == "user" else ("alice", race_agent(round_no))
    race = Round(user, agent, env.ids.user_token(user, iat=now - 1), env.svid(agent, iat=now - 1))
    _, cursor = await feed_after(env, client, 0)
    stream: list[dict[str, Any]] = []
    follower = asyncio.create_task(follow_stream(env, cursor, stream))
    try:
        party = {"user": user, "issuer": IDP} if kind == "user" else {"agent": agent}
        await race_round(env, client, race, party)
        await nothing_usable(env, client, race)
        assert named_in((await feed_after(env, client, cursor))[0], race), "the paged feed misses a token"
        assert await streamed(stream, race), "the stream misses a token"
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    return race


@pytest.mark.parametrize("kind", ["user", "agent"])
async def test_issue7_2_revoking_a_party_mid_flight_leaves_nothing_usable_on_any_worker(env: Env, kind: str) -> None:
    async with fresh_client(env) as client:
        rounds = [await run_round(env, client, kind, r) for r in range(ROUNDS)]
    # The race was real: the revocation landed while exchanges were still being answered, so in most
    # rounds some were granted (then ended by its cascade) and some refused (by its cutoff).
    mixed = [r for r in rounds if r.access_tokens and r.refusals]
    assert len(mixed) >= 3, [(len(r.access_tokens), len(r.task_tokens), r.refusals) for r in rounds]
