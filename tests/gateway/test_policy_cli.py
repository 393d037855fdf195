"""`deputy policy test|eval|bundle`: the authoring commands, run as a user would, on the embedded engine.

(`push`, and `test` against an OPA server, are in tests/gateway/test_opa_engine.py.)
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from delegation.policy import PolicySource
from gateway.cli import main
from policies import PACKAGED_POLICIES

CASES = Path(__file__).resolve().parent.parent / "policy" / "cases"


def first_case() -> dict[str, object]:
    return dict(json.loads((CASES / "exchange.json").read_text())[0])


def test_policy_test_passes_the_decision_table_and_prints_one_line_per_case(capsys: pytest.CaptureFixture[str]
                                                                            ) -> None:
    assert main(["policy", "test", str(CASES)]) == 0
    out = capsys.readouterr().out
    count = sum(len(json.loads(f.read_text())) for f in CASES.glob("*.json"))
    assert out.count("PASS  ") == count and "FAIL" not in out
    revision = PolicySource.read(PACKAGED_POLICIES).revision
    assert f"{count} passed, 0 failed (embedded engine, revision {revision})" in out


def test_policy_test_exits_1_and_says_what_differs_when_a_case_fails(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    wrong = {**first_case(), "name": "expects the wrong thing", "expect": {"allow": False, "ttl": 60}}
    (tmp_path / "wrong.json").write_text(json.dumps([first_case(), wrong]))
    assert main(["policy", "test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  wrong.json: expects the wrong thing" in out
    assert "allow is true, expected false" in out and "ttl is 300, expected 60" in out
    assert "1 passed, 1 failed" in out


@pytest.mark.parametrize(("content", "message"), [
    ("[{\"name\": \"x\"}]", "a case is an object with exactly name, input and expect"),
    ("{}", "must be a JSON list of cases"),
    ("not json", "bad.json:"),
    ("[{\"name\": \"x\", \"input\": {}, \"expect\": {\"allow\": \"yes\"}}]", "expect needs a boolean allow"),
])
def test_policy_test_refuses_a_malformed_case_file_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             content: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    assert main(["policy", "test", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_policy_eval_prints_the_decision_with_its_reasons_engine_and_revision(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "input.json").write_text(json.dumps(first_case()["input"]))
    assert main(["policy", "eval", "--input", str(tmp_path / "input.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["allow"] is True and printed["scope"] == ["mail.read", "mail.send"] and printed["ttl"] == 300
    assert printed["reasons"] == ["agent acts for the user; scopes from data.access.grants"]
    assert printed["engine"] == "embedded" and printed["revision"] == PolicySource.read(PACKAGED_POLICIES).revision


def test_policy_eval_refuses_an_input_that_is_not_a_json_object(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "input.json").write_text("[1, 2]")
    assert main(["policy", "eval", "--input", str(tmp_path / "input.json")]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_opa_bundles_file_format_manifest_revision_roots_modules_and_data(tmp_path: Path) -> None:
    """OPA Bundles › Bundle File Format: `.manifest` with revision and roots, modules, a root data.json."""
    out = tmp_path / "bundle.tar.gz"
    assert main(["policy", "bundle", str(out)]) == 0
    source = PolicySource.read(PACKAGED_POLICIES)
    with tarfile.open(out, "r:gz") as bundle:
        files = {member.name.lstrip("/"): bundle.extractfile(member).read().decode()  # type: ignore[union-attr]
                 for member in bundle.getmembers()}
    assert set(files) == {".manifest", "data.json", *source.modules}
    assert json.loads(files[".manifest"]) == {"revision": source.revision, "roots": ["access", "deputy"]}
    assert json.loads(files["data.json"]) == source.data
    assert files["deputy/exchange.rego"] == source.modules["deputy/exchange.rego"]


def test_policy_bundle_of_a_configured_directory_has_that_directorys_revision(tmp_path: Path) -> None:
    shutil.copytree(PACKAGED_POLICIES, tmp_path / "mine", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = json.loads((tmp_path / "mine" / "data.json").read_text())
    data["access"]["ttl"] = 120
    (tmp_path / "mine" / "data.json").write_text(json.dumps(data))
    (tmp_path / "deputy.toml").write_text('[policy]\ndir = "mine"\n')
    assert main(["policy", "bundle", str(tmp_path / "b.tar.gz"), "--config", str(tmp_path / "deputy.toml")]) == 0
    with tarfile.open(tmp_path / "b.tar.gz", "r:gz") as bundle:
        manifest = json.loads(bundle.extractfile("/.manifest").read())  # type: ignore[union-attr]
    assert manifest["revision"] == PolicySource.read(tmp_path / "mine").revision
    assert manifest["revision"] != PolicySource.read(PACKAGED_POLICIES).revision


def test_opa_bundles_roots_do_not_overlap_when_a_policy_has_sub_packages(tmp_path: Path) -> None:
    """OPA Bundles › Multiple Sources: a manifest's roots must not overlap, so `deputy/lib` folds into `deputy`."""
    shutil.copytree(PACKAGED_POLICIES, tmp_path / "mine", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (tmp_path / "mine" / "deputy" / "lib.rego").write_text("package deputy.lib\n\nimport rego.v1\n\nx := 1\n")
    (tmp_path / "deputy.toml").write_text('[policy]\ndir = "mine"\n')
    assert main(["policy", "bundle", str(tmp_path / "b.tar.gz"), "--config", str(tmp_path / "deputy.toml")]) == 0
    with tarfile.open(tmp_path / "b.tar.gz", "r:gz") as bundle:
        manifest = json.loads(bundle.extractfile("/.manifest").read())  # type: ignore[union-attr]
    assert manifest["roots"] == ["access", "deputy"]


@pytest.mark.parametrize(("url", "message"), [
    ("http://[::1", "--opa: not a URL"),
    ("http://127.0.0.1:8181/v1/policies", "--opa: must be the OPA server's address, without a path"),
    ("https://user:pw@opa.example.com", "--opa: must not hold a user name or password"),
])
def test_policy_push_checks_the_opa_url_as_the_config_does(url: str, message: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "push", "--opa", url]) == 2
    assert message in capsys.readouterr().err


DEEP = "[" * 100_000 + "]" * 100_000


def test_policy_test_and_eval_refuse_json_nested_too_deeply_in_one_line(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "deep.json").write_text(DEEP)
    assert main(["policy", "test", str(tmp_path)]) == 2
    assert main(["policy", "eval", "--input", str(tmp_path / "deep.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("JSON nested too deeply to read") == 2 and "Traceback" not in err
