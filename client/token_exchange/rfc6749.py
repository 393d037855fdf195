"""RFC 6749 §3.2: a request to the token endpoint as received, and its form parameters.

Parameters follow §3.2: empty values count as absent (§3.1), unknown ones are ignored, and only the
parameters a grant declares repeatable may repeat (`resource`, RFC 8707 §2; `audience`, RFC 8693 §2.1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import InvalidRequest, shown

REPEATABLE = frozenset({"resource", "audience"})


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A POST to the token endpoint: its form pairs, header fields (lowercased names, in order), method and
    URL, so a handler can read a proof header (DPoP, attestation) as well as the form."""

    pairs: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "POST"
    url: str = ""

    def header(self, name: str) -> list[str]:
        """Every value of the header field `name` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for field, value in self.headers if field == wanted]


@dataclass(frozen=True, slots=True)
class FormParams:
    """Single-valued parameters by name, and the repeatable ones as tuples."""

    single: Mapping[str, str]
    repeated: Mapping[str, tuple[str, ...]]

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]]) -> FormParams:
        """A repeated single-valued parameter is `invalid_request` (§3.2)."""
        single: dict[str, str] = {}
        repeated: dict[str, list[str]] = {}
        for name, value in pairs:
            if not value:
                continue  # §3.1: sent without a value = omitted
            if name in REPEATABLE:
                repeated.setdefault(name, []).append(value)
            elif name in single:
                raise InvalidRequest(f"{shown(name, 40, otherwise='a parameter')} is repeated")
            else:
                single[name] = value
        return cls(MappingProxyType(single), MappingProxyType({k: tuple(v) for k, v in repeated.items()}))

    def get(self, name: str) -> str | None:
        return self.single.get(name)

    def all(self, name: str) -> tuple[str, ...]:
        return self.repeated.get(name, ())
