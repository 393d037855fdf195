"""`deputy demo` runs the whole story from a fresh install (issue 3: a test runs the demo)."""

import subprocess
import sys


def test_deputy_demo_runs_the_whole_story() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "demo"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "DEMO ONLY" in out
    assert "GET /inbox     200" in out  # the sub-agent reads within its task
    assert "400 invalid_scope" in out  # widening refused
    assert "POST /send     403" in out  # a mail.read token cannot send
    assert "GET /inbox     401" in out  # rejected after the task completed
    assert "the task has ended" in out
    assert out.rstrip().splitlines()[-1].startswith("Done in")
