"""Every command and snippet of README.md and docs/*.md runs as written (issue 7, item 13).

The fenced blocks are read from the Markdown, so a doc that changes and stops working fails here. What
happens to a block depends on its language:

- `sh`: run in order, one bash session per Markdown file (`set -euo pipefail`), so a block sees the
  variables of the blocks before it, as a reader's shell does. Every file runs in one working directory
  that looks like a clone (copies of `examples/` and `policies/`), where a `deputy serve --dev` runs for
  the whole module. The documented ports are rewritten to free ones, and nothing else: 8600 (the dev
  gateway), 8601 (the README's configured gateway), 8700 and 8701 (the resource-server examples), so that
  parallel runs on one machine do not collide. Background processes a block starts are stopped when its
  file is done. A block's output must hold no OAuth error (`"error": "..."`) unless it `expect`s one.
- `toml`: written where its `file` directive says, and then a later `sh` block of the doc must run
  `deputy check --config` on that file; without `file`, written to a fresh directory and checked.
- `python`: written where its `file` directive says (the reader saves it there; a later `sh` block runs
  it), else run with `python -`.
- `json`: must parse. `same as PATH`: equal to that file's JSON. `output of the block above`: the same
  top-level members as the last JSON line the block above printed.
- `text`: pictures, request sketches and synopses: never run. A fence without a language is an error.

Directives sit in an HTML comment on the line right before the fence, `;`-separated:
`<!-- doc-test: skip (REASON) -->`, `file PATH`, `expect TEXT` (the block's output contains TEXT),
`same as PATH`, `output of the block above`. A skipped block needs a reason; every block that is neither
skipped nor `json`/`text` must have run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.process import serving

ROOT = Path(__file__).resolve().parent.parent
DOCS = [Path("README.md"), *sorted(p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md"))]
DOCUMENTED_PORTS = (8600, 8601, 8700, 8701)  # dev gateway, README's configured gateway, resource-server examples
RUN = {"sh", "toml", "python"}
LANGUAGES = RUN | {"json", "text"}
FENCE = re.compile(r"^(\s*)```(.*)$")
DIRECTIVE = re.compile(r"^<!-- doc-test: (.+) -->$")
SKIP = re.compile(r"^skip \((.+)\)$")
OAUTH_ERROR = re.compile(r'"error":\s*"')
SCRIPT_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block of a Markdown file, with the directives of the comment right before it."""

    doc: Path
    line: int
    lang: str
    code: str
    directives: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line} ({self.lang})"

    def argument(self, name: str) -> str | None:
        return next((d.removeprefix(name + " ") for d in self.directives if d.startswith(name + " ")), None)

    @property
    def skipped(self) -> bool:
        return any(SKIP.match(d) for d in self.directives)

    @property
    def runs(self) -> bool:
        return self.lang in RUN and not self.skipped

    @property
    def expected(self) -> list[str]:
        return [d.removeprefix("expect ") for d in self.directives if d.startswith("expect ")]


def blocks_of(doc: Path) -> list[Block]:
    lines = (ROOT / doc).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        assert not fence.group(1), f"{doc}:{i + 1}: indented fence (the doc test reads fences at column 0 only)"
        start, lang = i, fence.group(2).strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{doc}:{start + 1}: unclosed fence"
        comment = DIRECTIVE.match(lines[start - 1].strip()) if start else None
        directives = tuple(d.strip() for d in comment.group(1).split(";")) if comment else ()
        found.append(Block(doc, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n", directives))
        i = end + 1
    return found


ALL_BLOCKS = {doc: blocks_of(doc) for doc in DOCS}
RUNNABLE_DOCS = [doc for doc, blocks in ALL_BLOCKS.items() if any(b.runs for b in blocks)]


def known_directive(block: Block, directive: str) -> bool:
    if SKIP.match(directive) or directive.startswith("expect "):
        return True
    if directive.startswith("file "):
        return block.lang in ("toml", "python")
    if directive.startswith("same as "):
        return block.lang == "json" and (ROOT / directive.removeprefix("same as ")).is_file()
    return directive == "output of the block above" and block.lang == "json"


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_every_block_is_run_checked_or_marked(doc: Path) -> None:
    """No fence without a language, no unknown language or directive, no skip without its reason, and no
    directive that stands anywhere but right before a fence (where it would be ignored)."""
    lines = (ROOT / doc).read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if "doc-test" in line:
            assert DIRECTIVE.match(line.strip()) and number < len(lines) and lines[number].startswith("```"), (
                f"{doc}:{number}: a doc-test directive goes on the line right before a fence")
    for block in ALL_BLOCKS[doc]:
        assert block.lang in LANGUAGES, f"{block}: give the fence one of {sorted(LANGUAGES)}"
        for directive in block.directives:
            assert known_directive(block, directive), f"{block}: unknown or misplaced directive {directive!r}"
        assert not (block.skipped and len(block.directives) > 1), f"{block}: a skipped block takes no other directive"


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_a_saved_config_is_checked_by_the_doc(doc: Path) -> None:
    """A TOML sample the reader saves is followed by the `deputy check` of that file, which the run tests."""
    blocks = ALL_BLOCKS[doc]
    for index, block in enumerate(blocks):
        if block.lang == "toml" and block.runs and (path := block.argument("file")) is not None:
            check = f"deputy check --config {path}"
            assert any(b.runs and b.lang == "sh" and check in b.code for b in blocks[index + 1:]), (
                f"{block}: no later block runs `{check}`")


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_json_blocks_parse(doc: Path) -> None:
    for block in ALL_BLOCKS[doc]:
        if block.lang != "json" or block.skipped:
            continue
        try:
            document = json.loads(block.code)
        except ValueError as exc:
            pytest.fail(f"{block}: not JSON: {exc}")
        if (same := block.argument("same as")) is not None:
            assert document == json.loads((ROOT / same).read_text()), f"{block}: differs from {same}"


def test_the_quickstart_stays_two_commands() -> None:
    """The README's quickstart: one command runs the gateway in dev mode, one passes the tests."""
    quickstart = ALL_BLOCKS[Path("README.md")][0]
    commands = [line for line in quickstart.code.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert commands[0].endswith("deputy serve --dev") and commands[1].endswith("python -m pytest -q")


# Running the blocks


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


@dataclass(frozen=True, slots=True)
class Workspace:
    directory: Path
    env: dict[str, str]
    ports: dict[int, int]

    def rewrite(self, code: str) -> str:
        """The documented ports, where they stand as ports (`127.0.0.1:8600`, `--port 8700`), to free ones."""
        documented = "|".join(map(str, self.ports))
        return re.sub(rf"(127\.0\.0\.1:|--port )({documented})\b", lambda m: m[1] + str(self.ports[int(m[2])]), code)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A directory like a clone with `deputy serve --dev` running in it, on a free port."""
    assert shutil.which("bash") and shutil.which("curl"), "the docs' commands need bash and curl"
    directory = tmp_path_factory.mktemp("clone")
    for name in ("examples", "policies"):
        shutil.copytree(ROOT / name, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "DEPUTY_CONFIG"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               XDG_STATE_HOME=str(tmp_path_factory.mktemp("xdg-state")))  # `deputy dev`'s pointer, not the user's
    ports = dict(zip(DOCUMENTED_PORTS, free_ports(len(DOCUMENTED_PORTS)), strict=True))
    log = directory / "serve-dev.log"
    with serving(["--dev", "--listen", f"127.0.0.1:{ports[8600]}"], f"http://127.0.0.1:{ports[8600]}", log=log,
                 cwd=directory, env=env):
        yield Workspace(directory, env, ports)


def _write(path: str, code: str) -> str:
    quoted = shlex.quote(path)
    return f"mkdir -p \"$(dirname {quoted})\"\ncat > {quoted} <<'DOCTEST_EOF'\n{code}DOCTEST_EOF"


def script_for(blocks: list[Block], ws: Workspace, out: Path) -> str:
    """One bash script: each runnable block in braces (same shell, so variables carry), its output kept."""
    parts = ["set -euo pipefail"]
    for index, block in enumerate(blocks):
        if not block.runs:
            continue
        code = ws.rewrite(block.code)
        if block.lang == "sh":
            body = code
        elif (path := block.argument("file")) is not None:
            body = _write(path, code)  # a saved config is checked by the doc's own `deputy check` (asserted above)
        elif block.lang == "toml":
            path = str(out / f"toml-{index}" / "deputy.toml")
            body = f"{_write(path, code)}\ndeputy check --config {shlex.quote(path)}"
        else:
            body = f"python - <<'DOCTEST_EOF'\n{code}DOCTEST_EOF"
        parts.append(f"# {block}\n{{\n{body}\n}} > {out}/{index}.out 2>&1\necho {index} >> {out}/ran")
    return "\n".join(parts) + "\n"


def run_script(script: Path, ws: Workspace, log: Path) -> int:
    """Run it in its own process group; stop whatever its blocks left in the background."""
    with open(log, "wb") as output:
        process = subprocess.Popen(["bash", str(script)], cwd=ws.directory, env=ws.env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return process.wait(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait()


def last_json_object(output: str) -> dict[str, object] | None:
    for line in reversed(output.splitlines()):
        with suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return None


@pytest.mark.parametrize("doc", RUNNABLE_DOCS, ids=str)
def test_doc_runs_as_written(doc: Path, workspace: Workspace, tmp_path: Path) -> None:
    blocks = ALL_BLOCKS[doc]
    script = tmp_path / "doc.sh"
    script.write_text(script_for(blocks, workspace, tmp_path))
    status = run_script(script, workspace, tmp_path / "script.log")
    ran_file = tmp_path / "ran"
    ran = [int(n) for n in ran_file.read_text().split()] if ran_file.exists() else []
    expected = [i for i, b in enumerate(blocks) if b.runs]

    def output(index: int) -> str:
        path = tmp_path / f"{index}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    if ran != expected:
        failed = next(i for i in expected if i not in ran)
        pytest.fail(f"{blocks[failed]} failed (script status {status}):\n{blocks[failed].code}\n--- output:\n"
                    f"{output(failed)}\n--- script:\n{(tmp_path / 'script.log').read_text(errors='replace')}")
    assert status == 0, (tmp_path / "script.log").read_text()
    for index in ran:
        block, text = blocks[index], output(index)
        for wanted in block.expected:
            assert wanted in text, f"{block}: expected {wanted!r} in its output:\n{text}"
        if not block.expected:
            assert not OAUTH_ERROR.search(text), f"{block}: answered an error:\n{text}"
    above = None  # the nearest block above that is not itself an output
    for index, block in enumerate(blocks):
        if block.lang == "json" and "output of the block above" in block.directives:
            assert above is not None and above in ran, f"{block}: the block above did not run"
            got = last_json_object(output(above))
            assert got is not None, f"{block}: {blocks[above]} printed no JSON object:\n{output(above)}"
            assert set(got) == set(json.loads(block.code)), f"{block}: the block above printed {got}"
        elif block.lang != "json":
            above = index
