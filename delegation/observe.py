"""The seam for operational metrics: the domain says what happened, the gateway counts it (Prometheus).

Observers are called on the request path and must not block or raise; they see outcomes, error codes,
engines and kinds, never identities or tokens.
"""

from __future__ import annotations

from typing import Protocol

from .audit import AuditEvent


class Observer(Protocol):
    def decided(self, event: AuditEvent) -> None:
        """A token request ended, granted or refused (after its audit event was written, or tried)."""

    def policy_decided(self, engine: str, seconds: float) -> None:
        """The policy engine answered (allow or deny) in `seconds`."""

    def policy_failed(self, engine: str, cause: str) -> None:
        """The policy engine gave no usable answer: `cause` is a short fixed word (timeout, unreachable, ...)."""

    def revoked(self, kind: str, count: int) -> None:
        """`count` tasks ended by a revocation of `kind` (`complete`, `revoke`, `admin_revoke`, `admin_complete`,
        `agent`, `domain`, `user`, `expired`), or access tokens revoked on their own (`token`)."""

    def store_failed(self, operation: str) -> None:
        """A store call failed; `operation` is a fixed name, not a query."""

    def tasks_open(self, count: int) -> None:
        """How many tasks are open now (reported by the sweeper)."""


class NoObserver:
    """What runs when nobody counts."""

    def decided(self, event: AuditEvent) -> None:
        pass

    def policy_decided(self, engine: str, seconds: float) -> None:
        pass

    def policy_failed(self, engine: str, cause: str) -> None:
        pass

    def revoked(self, kind: str, count: int) -> None:
        pass

    def store_failed(self, operation: str) -> None:
        pass

    def tasks_open(self, count: int) -> None:
        pass


class Observers:
    """Several observers as one, each told in turn."""

    def __init__(self, *observers: Observer) -> None:
        self._all = observers

    def decided(self, event: AuditEvent) -> None:
        for observer in self._all:
            observer.decided(event)

    def policy_decided(self, engine: str, seconds: float) -> None:
        for observer in self._all:
            observer.policy_decided(engine, seconds)

    def policy_failed(self, engine: str, cause: str) -> None:
        for observer in self._all:
            observer.policy_failed(engine, cause)

    def revoked(self, kind: str, count: int) -> None:
        for observer in self._all:
            observer.revoked(kind, count)

    def store_failed(self, operation: str) -> None:
        for observer in self._all:
            observer.store_failed(operation)

    def tasks_open(self, count: int) -> None:
        for observer in self._all:
            observer.tasks_open(count)
