"""OAuth scope values (RFC 6749 §3.3): space-delimited, case-sensitive, order irrelevant."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidScope

MAX_SCOPE_TOKENS = 64
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True, slots=True)
class Scope:
    values: frozenset[str]

    @classmethod
    def parse(cls, text: str | None) -> Scope:
        """The `scope` request parameter; missing or malformed is `invalid_scope` (RFC 6749 §3.3)."""
        if not text:
            raise InvalidScope("scope is required")
        tokens = text.split(" ")
        if len(tokens) > MAX_SCOPE_TOKENS:
            raise InvalidScope(f"scope has more than {MAX_SCOPE_TOKENS} values")
        if not all(_SCOPE_TOKEN.fullmatch(t) for t in tokens):
            raise InvalidScope("scope must be scope-tokens separated by single spaces (RFC 6749 section 3.3)")
        return cls(frozenset(tokens))

    @classmethod
    def from_claim(cls, text: str) -> Scope:
        """A `scope` claim of a verified token: well-formed values kept, anything else dropped."""
        return cls(frozenset(t for t in text.split() if _SCOPE_TOKEN.fullmatch(t)))

    @classmethod
    def of(cls, values: object) -> Scope:
        """Scope from a list of strings (policy output or configuration); other items are dropped."""
        if not isinstance(values, list | tuple | set | frozenset):
            return cls(frozenset())
        return cls(frozenset(v for v in values if isinstance(v, str) and _SCOPE_TOKEN.fullmatch(v)))

    def __and__(self, other: Scope) -> Scope:
        return Scope(self.values & other.values)

    def __le__(self, other: Scope) -> bool:
        return self.values <= other.values

    def __bool__(self) -> bool:
        return bool(self.values)

    def sorted(self) -> list[str]:
        return sorted(self.values)

    def __str__(self) -> str:
        return " ".join(self.sorted())
