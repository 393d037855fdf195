"""An OpenID SSF 1.0 receiver by poll (RFC 8936) that keeps a `RevocationState` current from Deputy's
transmitter, for the verifier's fail-closed rule.

Each receiver creates its own poll stream at start (a new stream's backlog is every revocation still in
force, so a fresh instance starts complete), proves it with the verification handshake (SSF §8.1.4), and
deletes it on close. Two loops then share the stream:

- **Delivery**: a long poll (`returnImmediately: false`), which the transmitter answers as soon as a SET is
  committed. SETs are applied the moment they validate (an idempotent set insert in memory: RFC 8936 §2's
  "acknowledge before acting" would only add a round trip before a revocation takes effect) and their
  jtis acknowledged in the next request.
- **Confirmation**: every `heartbeat` seconds, a `returnImmediately: true` poll sent at T, then a status
  read. The state is confirmed as of T when that poll's SETs were all applied, `moreAvailable` was false,
  the handshake is complete, and the status read after the answer says `enabled`. The long poll never
  confirms: held for up to the transmitter's `poll_timeout` (15 s, beyond any sensible staleness bound),
  the time it was sent says nothing recent, and the time it was answered is not a bound either (a SET
  committed just before the transmitter wrote its empty answer may not have woken it yet). A request's
  send time is a sound bound because the transmitter reads a stream's queue, made from every revocation
  committed anywhere, after it receives the request, and every unacknowledged SET is in every answer
  (Deputy's poll makes the stream's SETs from the feed, then answers with the oldest unacknowledged).
  The status is read after the poll because a paused stream answers polls with nothing.

Anything that leaves the state in doubt makes it stale at once (`RevocationState.unconfirm`), so the
verifier refuses every token, never "nothing revoked": the stream paused or disabled (by status or a
`stream-updated` SET), gone (404), or a SET refused (a revocation may have been lost). The stream is then
replaced by a new one, whose backlog restores what a paused or disabled stream may have dropped; a paused
or disabled stream is kept, and refused on, until it is enabled again, unless the transmitter announced
disabling it itself (it will carry nothing more). A SET that cannot be checked now (the key set
unreachable) is left unacknowledged, so it comes again, and blocks confirmation meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

from .revocations import RevocationState
from .sets import SetKeys, SetRejected, SetUnverifiable, SetValidator
from .ssf_client import (
    MAX_EVENTS,
    PollAnswer,
    SsfClient,
    StreamConfig,
    StreamGone,
    TooSoon,
    TransmitterError,
    discover,
)
from .ssf_events import Effect, Ignored, Revoke, StatusChanged, Verified, effect_of

log = logging.getLogger(__name__)

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 5.0
VERIFY_RETRY_S = 5.0  # ask again when the verification event has not come by then (or after the minimum)
START_SYNC_S = 5.0  # how long `start` waits for the first confirmation while the stream makes progress
CLOSE_TIMEOUT_S = 2.0
MAX_SEEN = 100_000


class StreamLost(Exception):
    """The stream can no longer vouch for the state and must be replaced."""


@dataclass(eq=False)
class _Stream:
    """One poll stream and what the receiver knows of it."""

    config: StreamConfig
    validator: SetValidator
    expected_state: str | None = None  # of the latest verification request
    verify_asked_at: float = float("-inf")
    verified: bool = False
    status: str = "enabled"
    epoch: int = 0  # moves whenever the stream stops vouching, so a round that spans it does not confirm
    replace: str | None = None  # why the stream must be replaced
    acks: set[str] = field(default_factory=set)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    verified_now: asyncio.Event = field(default_factory=asyncio.Event)  # confirm at once, not a heartbeat later


class SsfReceiver:
    """Follows Deputy's SSF transmitter for one resource; see the module docstring.

    Args:
        issuer: the transmitter's issuer (Deputy's); the SSF configuration must name it exactly.
        audience: the resource's indicator; the stream's `aud` must name it.
        client: the HTTP client, owned by the caller.
        svid: returns a current JWT-SVID listed in the resource's `clients`, called for every request.
        heartbeat: seconds between confirmation rounds (well within the verifier's staleness bound).
    """

    def __init__(self, issuer: str, *, audience: str, client: httpx2.AsyncClient, svid: Callable[[], str],
                 heartbeat: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self.audience = audience
        self._state = RevocationState()
        self._client = client
        self._svid = svid
        self._heartbeat_s = heartbeat
        self._clock = clock
        self._ssf: SsfClient | None = None
        self._keys: SetKeys | None = None
        self._stream: _Stream | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()  # SETs applied: acknowledged again, never reapplied
        self._lock = asyncio.Lock()  # one confirmation round at a time
        self._runner: asyncio.Task[None] | None = None

    @property
    def state(self) -> RevocationState:
        return self._state

    @property
    def stream_id(self) -> str | None:
        return self._stream.config.stream_id if self._stream is not None else None

    async def start(self) -> None:
        """Discover the transmitter (raises `DiscoveryFailed`), open a stream and wait up to START_SYNC_S
        for it to be in sync, then follow it in the background. An unreachable transmitter does not raise:
        tokens are refused until the stream is in sync."""
        metadata = await discover(self._client, self.issuer)
        self._ssf = SsfClient(metadata, client=self._client, svid=self._svid)
        self._keys = SetKeys(metadata.jwks_uri, client=self._client, clock=self._clock)
        deadline = self._clock() + START_SYNC_S
        try:
            stream = await self._open()
            while self._state.confirmed_at == float("-inf") and self._clock() < deadline:
                await self._round(stream)
                await self._report_and_check(stream)
                await asyncio.sleep(0.01)
        except Exception as exc:  # the svid callable is the caller's: whatever it raises, follow in the background
            await self._lost(exc)
        self._runner = asyncio.create_task(self._run(), name="deputy-ssf-receiver")

    async def close(self) -> None:
        """Stop following and delete the stream (SSF §8.1.1.5), waiting at most CLOSE_TIMEOUT_S."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if self._stream is not None and self._ssf is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._ssf.delete(self._stream.config.stream_id)
            self._stream = None

    async def poll(self) -> None:
        """One confirmation round now; raises TransmitterError without a stream."""
        if self._stream is None:
            raise TransmitterError("no SSF stream yet")
        await self._round(self._stream)

    def _client_api(self) -> SsfClient:
        if self._ssf is None:
            raise RuntimeError("SsfReceiver.start() has not been awaited")
        return self._ssf

    async def _open(self) -> _Stream:
        """Create a poll stream (SSF §8.1.1.1) and ask for its verification event."""
        assert self._keys is not None
        config = await self._client_api().create(self.audience)
        validator = SetValidator(issuer=self.issuer, audience=config.audience, keys=self._keys)
        self._stream = stream = _Stream(config, validator)
        log.info("ssf.stream_created", extra={"stream_id": config.stream_id})
        await self._ask_verification(stream)
        return stream

    async def _ask_verification(self, stream: _Stream) -> None:
        """SSF §8.1.4.2 with a fresh random `state`; a failure is retried after VERIFY_RETRY_S."""
        stream.expected_state = secrets.token_urlsafe(18)
        stream.verify_asked_at = self._clock()
        try:
            await self._client_api().verify(stream.config.stream_id, stream.expected_state)
        except TooSoon:
            log.info("ssf.verification_too_soon", extra={"stream_id": stream.config.stream_id})

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                stream = self._stream or await self._open()
                failures = 0
                await self._follow(stream)
            except Exception as exc:  # as in `start`: whatever fails, the state goes stale and the loop goes on
                failures += 1
                await self._lost(exc)
            await asyncio.sleep(min(BACKOFF_MIN_S * 2 ** failures, BACKOFF_MAX_S))

    async def _lost(self, exc: Exception) -> None:
        """Log why; when the stream itself is lost, drop it (deleting it if it still exists)."""
        log.warning("ssf.receiver_failed", extra={"issuer": self.issuer, "error": _why(exc)})
        if not isinstance(exc, StreamLost | StreamGone) or self._stream is None:
            return
        stream, self._stream = self._stream, None
        self._state.unconfirm()
        if isinstance(exc, StreamLost):  # it still exists: delete it, so its queue stops growing
            with contextlib.suppress(Exception):
                await self._client_api().delete(stream.config.stream_id)

    async def _follow(self, stream: _Stream) -> None:
        """Run delivery and confirmation on `stream` until one of them finds it lost (raises)."""
        tasks = [asyncio.create_task(self._deliver(stream)), asyncio.create_task(self._confirm(stream))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, stream: _Stream) -> None:
        """The long poll: apply SETs as they come; transient failures back off, a lost stream raises."""
        failures = 0
        while True:
            sent_at = self._clock()
            try:
                answer = await self._poll(stream, immediate=False)
                failures = 0
            except StreamGone:
                raise
            except Exception as exc:  # see `_run`
                failures += 1
                log.warning("ssf.poll_failed", extra={"stream_id": stream.config.stream_id, "error": _why(exc)})
                await asyncio.sleep(min(BACKOFF_MIN_S * 2 ** failures, BACKOFF_MAX_S))
                continue
            await self._receive(stream, answer)
            await self._report_and_check(stream)
            if not answer.sets and self._clock() - sent_at < self._heartbeat_s:  # not held: no busy loop
                await asyncio.sleep(self._heartbeat_s)

    async def _confirm(self, stream: _Stream) -> None:
        while True:
            try:
                await self._round(stream)
            except StreamGone:
                raise
            except Exception as exc:  # see `_run`
                log.warning("ssf.round_failed", extra={"stream_id": stream.config.stream_id, "error": _why(exc)})
            await self._report_and_check(stream)
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(self._heartbeat_s):
                    await stream.verified_now.wait()
            stream.verified_now.clear()

    async def _round(self, stream: _Stream) -> None:
        """One confirmation round (see the module docstring)."""
        async with self._lock:
            sent_at, epoch = self._clock(), stream.epoch
            answer = await self._poll(stream, immediate=True)
            complete = await self._receive(stream, answer)
            status, reason = await self._client_api().status(stream.config.stream_id)
            self._on_status(stream, status, reason)
            if not stream.verified:
                wait = max(VERIFY_RETRY_S, stream.config.min_verification_interval)
                if self._clock() - stream.verify_asked_at >= wait:
                    await self._ask_verification(stream)
                return
            in_sync = stream.status == "enabled" and stream.epoch == epoch and stream.replace is None
            if in_sync and complete and not answer.more_available:
                self._state.confirm(sent_at)

    async def _poll(self, stream: _Stream, *, immediate: bool, max_events: int | None = None) -> PollAnswer:
        """RFC 8936 §2.2, acknowledging and reporting what is pending; both are cleared once sent."""
        acks, errors = sorted(stream.acks)[:MAX_EVENTS], dict(stream.errors)
        answer = await self._client_api().poll(stream.config, ack=acks, errors=errors, immediate=immediate,
                                               max_events=max_events)
        stream.acks.difference_update(acks)
        for jti in errors:
            stream.errors.pop(jti, None)
        return answer

    async def _receive(self, stream: _Stream, answer: PollAnswer) -> bool:
        """Validate and apply each SET; True when every one was applied or refused, none left for later."""
        complete = True
        for jti, token in answer.sets.items():
            if jti in self._seen:
                stream.acks.add(jti)
                continue
            try:
                received = await stream.validator.validate(token, jti=jti)
                effect = effect_of(received, issuer=self.issuer, stream_id=stream.config.stream_id,
                                   critical=self._client_api().metadata.critical_subject_members)
            except SetUnverifiable as exc:
                log.warning("ssf.set_unverifiable", extra={"jti": jti[:64], "error": str(exc)})
                complete = False
                continue
            except SetRejected as exc:
                self._refuse(stream, jti, exc, replace="a SET was refused, so a revocation may be lost")
                continue
            self._apply(stream, jti, effect)
        return complete

    def _refuse(self, stream: _Stream, jti: str, exc: SetRejected, *, replace: str | None) -> None:
        """RFC 8936 §2.4.4: report it in the next request's `setErrs`."""
        log.warning("ssf.set_refused", extra={"jti": jti[:64], "err": exc.err, "description": exc.description})
        stream.errors[jti] = {"err": exc.err, "description": exc.description}
        if replace is not None:
            stream.replace = stream.replace or replace
            self._state.unconfirm()

    def _apply(self, stream: _Stream, jti: str, effect: Effect) -> None:
        if isinstance(effect, Verified) and (effect.state is None or effect.state != stream.expected_state):
            # SSF §8.1.4.1: the receiver checks state; a mismatch SHOULD be answered with invalid_state.
            self._refuse(stream, jti, SetRejected("invalid_state", "state is not the one last asked for"),
                         replace=None)
            return
        if isinstance(effect, Verified):
            stream.verified = True
            stream.verified_now.set()
            log.info("ssf.stream_verified", extra={"stream_id": stream.config.stream_id})
        elif isinstance(effect, Revoke):
            self._state.revoke(jtis=effect.jtis, task_ids=effect.task_ids, cutoffs=effect.cutoffs)
        elif isinstance(effect, StatusChanged):
            self._on_status(stream, effect.status, effect.reason, announced=True)
        elif isinstance(effect, Ignored):
            log.debug("ssf.set_ignored", extra={"jti": jti[:64], "why": effect.why})
        self._seen[jti] = None
        if len(self._seen) > MAX_SEEN:  # the oldest: long acknowledged, and applying a SET again changes nothing
            self._seen.popitem(last=False)
        stream.acks.add(jti)

    def _on_status(self, stream: _Stream, status: str, reason: str | None, *, announced: bool = False) -> None:
        """SSF §8.1.2.1: only `enabled` transmits. Anything else makes the state stale; enabled again, the
        stream is replaced, since what it held back meanwhile may be gone. A stream the transmitter itself
        disabled (`announced` by a stream-updated event, §8.1.5) will carry nothing more: replaced at once."""
        if status == "enabled":
            if stream.status != "enabled":
                stream.replace = stream.replace or f"the stream is enabled again after being {stream.status}"
            return
        if announced and status == "disabled":
            stream.replace = stream.replace or f"the transmitter disabled the stream: {(reason or '-')[:200]}"
        if stream.status != status:
            log.warning("ssf.stream_not_enabled", extra={"stream_id": stream.config.stream_id, "status": status[:32],
                                                         "reason": (reason or "")[:200]})
        stream.status = status
        stream.epoch += 1
        self._state.unconfirm()

    async def _report_and_check(self, stream: _Stream) -> None:
        """A stream to be replaced first reports its refusals (an acknowledge-only poll, RFC 8936 §2.4.2)."""
        if stream.replace is None:
            return
        if stream.errors or stream.acks:
            with contextlib.suppress(Exception):
                await self._poll(stream, immediate=True, max_events=0)
        raise StreamLost(stream.replace)


def _why(exc: Exception) -> str:
    """A log line's reason: the exception class and its message, never a token."""
    return f"{type(exc).__name__}: {exc}"[:300]
