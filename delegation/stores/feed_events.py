"""What both stores write for a revocation feed event: how a cascade ends its tasks, and what the event
tells each audience."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..records import Party
from ..tasks import EndedTask

Told = dict[str, tuple[list[str], list[str]]]
"""Per audience: the ids of the ended tasks that include it, and the jtis of its revoked tokens."""


@dataclass(frozen=True, slots=True)
class Ending:
    """How a cascade ends its tasks: their new state, the feed event's reason, when, by whom, for which party."""

    state: str
    reason: str
    now: int
    initiator: str
    party: Party | None = None


def told_per_audience(tasks: Sequence[tuple[Sequence[str], EndedTask]], tokens: Sequence[tuple[str, str]]) -> Told:
    """What an event tells each audience's resource servers: the tasks (with their audiences) that include
    it and the tokens (jti, audience) issued for it."""
    told: Told = {}
    for audiences, task in tasks:
        for audience in audiences:
            told.setdefault(audience, ([], []))[0].append(task.id)
    for jti, audience in tokens:
        told.setdefault(audience, ([], []))[1].append(jti)
    return told
