"""What OPA v1's parser checks and regopy (rego-cpp 1.5) does not: v1 rule bodies; package and rule paths.

rego-cpp accepts v0 rule heads such as `allow { ... }` and evaluates them, where OPA v1 refuses the module
with `rego_parse_error: `if` keyword is required before rule body` (and, for `deny[msg] { ... }`, also
`contains` keyword is required for partial set rules). The test OPA server (`tests/opa_server.py`) reads
every module through `outline` first. A token stream is enough: the checks only look at the top level of
a module (outside every bracket), where Rego has nothing but package, import and rule statements.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\f]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*") | (?P<raw>`[^`]*`)
      | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>:=|==|!=|<=|>=|[{}\[\]().,;:=|&+\-*/%<>!])
      | (?P<other>.)""",
    re.VERBOSE,
)
_OPENING, _CLOSING = frozenset("([{"), frozenset(")]}")
# A top-level token that never starts a statement, and tokens after which a statement goes on.
_CONTINUES = frozenset({"else", "if", "contains", "{", "}", "]", ")", ":=", "=", ".", "[", "|", "&", "in"})
_OPEN_ENDED = frozenset({":=", "=", ",", ".", "|", "&", "+", "-", "*", "/", "%", "==", "!=", "<", ">", "<=", ">=",
                         "if", "else", "contains", "in", "as", "not"})
# After these a top-level `{` opens a term (object, set, comprehension), not a rule body.
_TERM_FOLLOWS = _OPEN_ENDED - {"else", ".", "as", "not"} | {"}"}
IF_REQUIRED = "`if` keyword is required before rule body"
CONTAINS_REQUIRED = "`contains` keyword is required for partial set rules"


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    row: int
    col: int
    depth: int  # brackets open before this token
    first_on_line: bool


@dataclass(frozen=True, slots=True)
class Problem:
    """One error in OPA's `errors` shape (REST item 13): code, message, row and column."""

    code: str
    message: str
    row: int
    col: int


@dataclass(frozen=True, slots=True)
class RulePath:
    """A rule's static path under `data` (package and head ref up to the first variable), with its place."""

    path: tuple[str, ...]
    row: int
    col: int


@dataclass(frozen=True, slots=True)
class Outline:
    """A module's package path, its rules' paths, and the v1 problems found."""

    package: tuple[str, ...]
    rules: tuple[RulePath, ...]
    problems: tuple[Problem, ...]
    empty: bool = False


def outline(text: str, *, rego_v1: bool = True) -> Outline:
    """Read a module's top level; `rego_v1=False` (a bundle's `rego_version: 0`) skips the v1 checks."""
    groups = statements(tokenize(text))
    if not groups:
        return Outline((), (), (), empty=True)
    head = groups[0]
    if head[0].text != "package":
        return Outline((), (), (Problem("rego_parse_error", "package expected", head[0].row, head[0].col),))
    package = static_ref(head[1:])
    rules, problems = [], []
    for group in groups[1:]:
        if group[0].text == "import":
            continue
        start = 1 if group[0].text == "default" and len(group) > 1 else 0
        rules.append(RulePath(package + static_ref(group[start:]), group[0].row, group[0].col))
        if rego_v1 and start == 0:
            problems.extend(v1_problems(group))
    return Outline(package, tuple(rules), tuple(problems))


def tokenize(text: str) -> list[Token]:
    """Rego's tokens with their row, column, bracket depth and whether each starts its line."""
    found: list[Token] = []
    row, line_start, depth, fresh = 1, 0, 0, True
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup or "other", match.group()
        if kind in ("space", "comment"):
            continue
        if kind == "newline":
            row, line_start, fresh = row + 1, match.end(), True
            continue
        if value in _CLOSING:
            depth = max(depth - 1, 0)
        found.append(Token(kind, value, row, match.start() - line_start + 1, depth, fresh))
        if value in _OPENING:
            depth += 1
        fresh = False
        if kind == "raw" and "\n" in value:
            row, line_start = row + value.count("\n"), match.start() + value.rindex("\n") + 1
    return found


def statements(tokens: list[Token]) -> list[list[Token]]:
    """Top-level statements: a new one starts on a fresh line outside brackets, unless the line goes on."""
    groups: list[list[Token]] = []
    for token in tokens:
        starts = (token.depth == 0 and token.first_on_line and token.text not in _CONTINUES
                  and (not groups or groups[-1][-1].text not in _OPEN_ENDED))
        if starts or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def static_ref(tokens: list[Token]) -> tuple[str, ...]:
    """The leading ref's static part: `a.b["c"]` is ("a", "b", "c"); it stops at a variable or operator."""
    if not tokens or tokens[0].kind != "name":
        return ()
    path, at = [tokens[0].text], 1
    while at + 1 < len(tokens):
        if tokens[at].text == "." and tokens[at + 1].kind == "name":
            path.append(tokens[at + 1].text)
            at += 2
        elif tokens[at].text == "[" and tokens[at + 1].kind == "string" and at + 2 < len(tokens) \
                and tokens[at + 2].text == "]":
            path.append(_unquote(tokens[at + 1].text))
            at += 3
        else:
            break
    return tuple(path)


def v1_problems(rule: list[Token]) -> list[Problem]:
    """OPA v1: a rule body needs `if`; `p[x] { ... }` also needs `contains`."""
    problems = []
    for at in range(1, len(rule)):
        token = rule[at]
        if token.depth == 0 and token.text == "{" and rule[at - 1].text not in _TERM_FOLLOWS:
            problems.append(Problem("rego_parse_error", IF_REQUIRED, token.row, token.col))
            if at == 4 and rule[0].kind == "name" and rule[1].text == "[" and rule[3].text == "]":
                problems.append(Problem("rego_parse_error", CONTAINS_REQUIRED, rule[0].row, rule[0].col))
    return problems


def _unquote(literal: str) -> str:
    text: str = json.loads(literal)  # Rego string escapes are JSON's
    return text
