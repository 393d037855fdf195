"""A delegation handed to a sub-agent (docs/tasks.md, "Delegation to a sub-agent"): the parent's task token and
the narrowing asked for, as JSON. The sub-agent presents the task token with its own JWT-SVID; the token is
useless to anyone else (another agent presenting it for access tokens gets `invalid_request`) and ends with
the parent's task. Nothing long-lived is in it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

VERSION = 1


@dataclass(frozen=True, slots=True)
class Handoff:
    gateway: str  # the gateway's issuer
    task_token: str  # the parent's task token (a txn_token)
    task_id: str  # the parent task
    scope: tuple[str, ...]  # what the child task is asked for: only narrows
    audiences: tuple[str, ...]
    expires_at: int  # the parent's deadline (seconds since the epoch): the child cannot outlive it
    ttl: int | None = None  # the child task's own `task_ttl`, if shorter

    def to_json(self) -> str:
        return json.dumps({"v": VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        """Raises ValueError for anything that is not a handoff this version wrote."""
        data: Any = json.loads(text)
        if not isinstance(data, dict) or data.pop("v", None) != VERSION or set(data) != set(cls.__dataclass_fields__):
            raise ValueError("not a Deputy handoff")
        strings = all(isinstance(data[k], str) and data[k] for k in ("gateway", "task_token", "task_id"))
        lists = all(isinstance(data[k], list) and all(isinstance(v, str) for v in data[k])
                    for k in ("scope", "audiences"))
        ttl_ok = data["ttl"] is None or type(data["ttl"]) is int
        if not (strings and lists and ttl_ok and type(data["expires_at"]) is int):
            raise ValueError("a Deputy handoff with a malformed member")
        return cls(**{**data, "scope": tuple(data["scope"]), "audiences": tuple(data["audiences"])})
