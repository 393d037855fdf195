"""Style §1: three layers, imports point one way (token_exchange < delegation < gateway)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where each package's sources are: the protocol core and the client ship in client/ (deputy-client).
SOURCES = {"token_exchange": ROOT / "client" / "token_exchange", "deputy_client": ROOT / "client" / "deputy_client",
           "delegation": ROOT / "delegation", "gateway": ROOT / "gateway"}
BANNED = {
    "token_exchange": {"fastapi", "starlette", "sqlite3", "aiosqlite", "delegation", "gateway", "deputy_client",
                       "deputy_examples", "prometheus_client"},
    # The domain reports through `delegation.observe.Observer`; the gateway counts it in Prometheus metrics.
    "delegation": {"fastapi", "starlette", "gateway", "deputy_examples", "prometheus_client"},
    "gateway": {"deputy_examples", "examples"},
    # Ships to agents and resource servers without the gateway: the protocol core only (FastAPI, mcp and spiffe
    # in the modules of their extras).
    "deputy_client": {"delegation", "gateway", "regopy", "uvicorn", "sqlite3", "deputy_examples",
                      "prometheus_client", "opa_client"},
}


def top_level_imports(source: str, depth: int) -> set[str]:
    """First components of every module imported anywhere in the source (inside functions too).

    `depth` is how deep the file sits in its package (1 for `package/x.py`); a relative import that
    climbs above the package counts as an import of what it reaches."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.level == 0 or node.level > depth):
            names.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return names


@pytest.mark.parametrize("package", BANNED)
def test_style_1_package_imports_point_down(package: str) -> None:
    modules = sorted(SOURCES[package].rglob("*.py"))
    assert modules
    for module in modules:
        depth = len(module.relative_to(SOURCES[package]).parts)
        assert not top_level_imports(module.read_text(), depth) & BANNED[package], module


@pytest.mark.parametrize(("source", "depth", "found"), [
    ("def f():\n    import fastapi.responses\n", 1, "fastapi"),
    ("from starlette.requests import Request\n", 1, "starlette"),
    ("from .. import gateway\n", 1, "gateway"),
    ("from ..delegation.audit import AuditEvent\n", 1, "delegation"),
    ("if True:\n    import sqlite3 as db\n", 2, "sqlite3"),
])
def test_style_1_the_checker_sees_each_kind_of_import(source: str, depth: int, found: str) -> None:
    assert found in top_level_imports(source, depth)


def test_style_1_relative_imports_within_the_package_are_allowed() -> None:
    assert top_level_imports("from .jws import TokenError\nfrom ..audit import AuditEvent\n", 2) == set()


MAX_FUNCTION_LINES = 40


def long_functions(source: str) -> list[tuple[str, int]]:
    """Functions (methods and nested ones too) longer than MAX_FUNCTION_LINES, from `def` to their end."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


@pytest.mark.parametrize("package", SOURCES)
def test_issue6_no_function_is_longer_than_40_lines(package: str) -> None:
    found = {f"{module.relative_to(ROOT)}:{name}": lines for module in sorted(SOURCES[package].rglob("*.py"))
             for name, lines in long_functions(module.read_text())}
    assert not found, found


def test_issue6_the_length_check_sees_a_long_method() -> None:
    body = "\n".join(f"        x = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"class A:\n    async def f(self):\n{body}\n") == [("f", MAX_FUNCTION_LINES + 1)]
