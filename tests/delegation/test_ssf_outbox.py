"""The SSF transmitter on a real SQLite store, below HTTP: two processes making one stream's SETs at once
(each feed event becomes its SETs once: `advance_stream` is compare-and-set), SETs made a bounded number at a
time, push delivery's per-stream backoff (RFC 8935: retried, doubling, capped; reset by a success), the
number of streams a receiver may have, and how many polls it may have held at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from delegation.resources import Resource, Resources
from delegation.ssf import poll
from delegation.ssf.outbox import FEED_PAGE, Outbox
from delegation.ssf.push import BACKOFF_FIRST_S, BACKOFF_MAX_S, PushDelivery
from delegation.ssf.seams import StreamTimings
from delegation.ssf.streams import MAX_STREAMS, StreamManager
from delegation.store import ENABLED, POLL, PUSH, Store, Stream
from delegation.stores import open_store
from tests.delegation.test_store_contract import NOW, PRESENTED, event, record_grant, record_task, task, token
from token_exchange.rfc8935 import PushResult
from token_exchange.rfc8936 import PollRequest
from token_exchange.scope import Scope
from token_exchange.ssf import StreamConflict

ISSUER = "https://deputy.example.com"
MAIL = "https://mail"  # the contract suite's tokens and tasks are for it
CLIENT = "spiffe://example.org/rs/mail"
RESOURCES = Resources([Resource(MAIL, Scope(frozenset({"mail.read"})), 300, frozenset({CLIENT}))])


class Signer:
    """A real RS256 SET signer, as the gateway's event key ring signs."""

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def sign_event(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"typ": "secevent+jwt", "kid": "k1"})


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two processes' stores on one database."""
    first = await open_store(f"sqlite:///{tmp_path / 'deputy.db'}")
    second = await open_store(f"sqlite:///{tmp_path / 'deputy.db'}")
    yield first, second
    await first.close()
    await second.close()


def stream(stream_id: str = "s1", delivery: str = POLL) -> Stream:
    url = "https://rs.example.com/events" if delivery == PUSH else None
    return Stream(stream_id, CLIENT, (MAIL,), delivery, url, None, (), (
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked",), None, ENABLED, None, 0, 1, 1)


async def revoked_tokens(store: Store, count: int) -> list[str]:
    """`count` tokens revoked on their own: `count` feed events."""
    await record_task(store, task("t1"), event("open_task", "t1"))
    jtis = [f"j{i}" for i in range(count)]
    for jti in jtis:
        await record_grant(store, token(jti, "t1"), event("exchange", jti))
        await store.revoke_token(jti, reason="revoked", now=PRESENTED.actor_issued_at or 0)
    return jtis


async def all_pending(store: Store, stream_id: str) -> list[dict[str, Any]]:
    sets, _ = await store.pending_sets(stream_id, 10_000)
    return [jwt.decode(s.token, options={"verify_signature": False}) for s in sets]


async def test_each_feed_event_becomes_its_sets_once_when_two_processes_make_them_at_once(
        stores: tuple[Store, Store]) -> None:
    first, second = stores
    jtis = await revoked_tokens(first, 2 * FEED_PAGE + 30)
    await first.create_stream(stream())
    outboxes = [Outbox(s, Signer(), issuer=ISSUER) for s in stores]
    for _ in range(6):  # each round, at least one of the two makes the next page: three pages, then nothing
        current = [await store.stream("s1") or stream() for store in stores]
        await asyncio.gather(*(outbox.fill(s, wanted=1) for outbox, s in zip(outboxes, current, strict=True)))
    head = (await first.revocations(0, 1, audiences=frozenset())).next
    assert (await second.stream("s1") or stream()).cursor == head
    told = [c["sub_id"]["jti"] for c in await all_pending(first, "s1")]
    assert sorted(told) == sorted(jtis)  # every event once: none lost, none twice
    assert {c["txn"] for c in await all_pending(first, "s1")} == {"t1"}  # the tokens' task


async def test_sets_are_made_a_bounded_number_at_a_time_and_more_is_said_to_remain(stores: tuple[Store, Store]
                                                                                   ) -> None:
    store, _ = stores
    await revoked_tokens(store, FEED_PAGE + 5)
    await store.create_stream(stream())
    outbox = Outbox(store, Signer(), issuer=ISSUER)
    assert await outbox.fill(await store.stream("s1") or stream(), wanted=10) is True
    assert len(await all_pending(store, "s1")) == FEED_PAGE
    assert await outbox.fill(await store.stream("s1") or stream(), wanted=10) is False
    assert len(await all_pending(store, "s1")) == FEED_PAGE + 5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedPusher:
    """The push seam answering as told (the HTTP itself is tested against a real receiver in tests/gateway)."""

    def __init__(self) -> None:
        self.outcome = "failed"
        self.calls = 0

    async def __call__(self, url: str, token: str, *, authorization: str | None) -> PushResult:
        self.calls += 1
        return PushResult(self.outcome, "HTTP 503")  # type: ignore[arg-type]


async def test_rfc8935_a_failing_receiver_is_retried_after_a_doubling_capped_backoff(stores: tuple[Store, Store]
                                                                                    ) -> None:
    store, _ = stores
    await revoked_tokens(store, 1)
    await store.create_stream(stream("p1", PUSH))
    clock, pusher = Clock(), ScriptedPusher()
    outbox = Outbox(store, Signer(), issuer=ISSUER)
    manager = StreamManager(store, outbox, RESOURCES, issuer=ISSUER, timings=StreamTimings())
    delivery = PushDelivery(manager, outbox, store, pusher, clients=[CLIENT], inactivity_timeout=86400,
                            clock=clock, wall_clock=lambda: 2.0)
    await delivery.round()
    calls = 1
    for delay in [min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**i) for i in range(11)]:  # 1, 2, ... 256, 300, 300
        clock.now += delay - 0.01
        await delivery.round()
        assert pusher.calls == calls, delay  # not due yet: not tried
        clock.now += 0.01
        await delivery.round()
        calls += 1
        assert pusher.calls == calls, delay  # due: tried once more
    assert len(await all_pending(store, "p1")) == 1  # the SET stays queued
    pusher.outcome = "delivered"
    clock.now += BACKOFF_MAX_S
    await delivery.round()
    assert await all_pending(store, "p1") == []
    pusher.outcome = "failed"  # a success reset the backoff: the next failure waits the first delay again
    await record_grant(store, token("j-late", "t1"), event("exchange", "j-late"))
    await store.revoke_token("j-late", reason="revoked", now=2)
    await delivery.round()
    calls = pusher.calls
    clock.now += BACKOFF_FIRST_S - 0.01
    await delivery.round()
    assert pusher.calls == calls
    clock.now += 0.01
    await delivery.round()
    assert pusher.calls == calls + 1


async def test_ssf_8_1_1_1_a_receiver_gets_409_past_its_number_of_streams(stores: tuple[Store, Store]) -> None:
    store, _ = stores
    manager = StreamManager(store, Outbox(store, Signer(), issuer=ISSUER), RESOURCES, issuer=ISSUER,
                            timings=StreamTimings())
    for _ in range(MAX_STREAMS):
        await manager.create(CLIENT, {})
    with pytest.raises(StreamConflict) as refused:
        await manager.create(CLIENT, {})
    assert (refused.value.status, refused.value.error) == (409, "conflict")
    await store.delete_stream((await store.streams_of(CLIENT))[0].id)
    assert (await manager.create(CLIENT, {}))["aud"] == MAIL  # room again


async def test_caep_3_1_a_task_past_its_deadline_is_session_revoked_initiated_by_policy(stores: tuple[Store, Store]
                                                                                         ) -> None:
    store, _ = stores
    await record_task(store, task("late"), event("open_task", "late"))
    await store.create_stream(stream())
    assert await store.expire_and_purge(now=NOW + 601, retention=10**6) == (1, 0)
    await Outbox(store, Signer(), issuer=ISSUER).fill(await store.stream("s1") or stream(), wanted=10)
    [claims] = await all_pending(store, "s1")
    assert claims["sub_id"]["session"] == {"format": "opaque", "id": "late"} and claims["txn"] == "late"
    payload = claims["events"]["https://schemas.openid.net/secevent/caep/event-type/session-revoked"]
    assert payload["initiating_entity"] == "policy" and payload["event_timestamp"] == NOW + 601


async def test_rfc8936_2_5_a_receiver_holds_a_bounded_number_of_polls_and_the_rest_answer_at_once(
        stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = stores
    monkeypatch.setattr(poll, "MAX_HELD_PER_CLIENT", 2)
    outbox = Outbox(store, Signer(), issuer=ISSUER)
    timings = StreamTimings(poll_timeout=30)
    poller = poll.Poller(StreamManager(store, outbox, RESOURCES, issuer=ISSUER, timings=timings), outbox, store,
                         timings=timings)
    for stream_id in ("s1", "s2", "s3"):
        await store.create_stream(stream(stream_id))
    held = [asyncio.create_task(poller.poll(CLIENT, s, PollRequest())) for s in ("s1", "s2")]
    await asyncio.sleep(0.3)
    assert not any(t.done() for t in held)  # long polls, held while nothing is queued
    third = await asyncio.wait_for(poller.poll(CLIENT, "s3", PollRequest()), 5)
    assert third == {"sets": {}, "moreAvailable": False}  # past the bound: answered at once, not held
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    again = asyncio.create_task(poller.poll(CLIENT, "s3", PollRequest()))
    await asyncio.sleep(0.3)
    assert not again.done()  # the cancelled polls gave their places back
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)
