"""`pip install .` (not only editable) ships the Rego policies and their data (issue 2, What to build).

The wheel is built from a copy of the sources, so the build leaves nothing in the working tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".deputy", ".pytest_cache",
               ".ruff_cache")


def _built_wheel(project: Path, name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("checkout") / project.name
    shutil.copytree(project, source, ignore=shutil.ignore_patterns(*NOT_SOURCES, "client"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = out.glob(f"{name}-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _built_wheel(ROOT, "deputy_gateway", tmp_path_factory)


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _built_wheel(ROOT / "client", "deputy_client", tmp_path_factory)


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        dist_info = next(n.split("/")[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(f"{dist_info}/METADATA").decode()


def names_in(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_issue2_wheel_ships_every_packaged_policy_and_its_data(wheel: Path) -> None:
    packaged = {p.relative_to(ROOT).as_posix() for p in (ROOT / "policies").rglob("*")
                if p.suffix in (".rego", ".json")}
    assert {"policies/deputy/exchange.rego", "policies/data.json"} <= packaged
    assert packaged <= names_in(wheel)


def test_issue2_wheel_ships_the_packages_and_their_type_markers(wheel: Path) -> None:
    names = names_in(wheel)
    for package in ("delegation", "delegation/stores", "gateway", "policies"):
        assert f"{package}/__init__.py" in names, package
    for package in ("delegation", "gateway"):
        assert f"{package}/py.typed" in names, package
    assert not any(name.startswith(("tests/", "token_exchange/", "deputy_client/", "client/")) for name in names)


def test_every_module_of_the_product_is_in_the_wheel(wheel: Path) -> None:
    """A subpackage left out of pyproject's package list would install a gateway that cannot start."""
    sources = {p.relative_to(ROOT).as_posix() for package in ("delegation", "gateway", "policies")
               for p in (ROOT / package).rglob("*.py")}
    assert sources <= names_in(wheel), sorted(sources - names_in(wheel))


def test_issue11_4_wheel_ships_the_console_static_assets(wheel: Path) -> None:
    assets = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway" / "console" / "static").iterdir()}
    assert {"gateway/console/static/index.html", "gateway/console/static/console.js"} <= assets
    assert assets <= names_in(wheel), sorted(assets - names_in(wheel))


def test_issue10_1_the_client_wheel_ships_the_protocol_core_and_the_client_and_nothing_of_the_server(
        client_wheel: Path) -> None:
    client = ROOT / "client"
    sources = {p.relative_to(client).as_posix() for package in ("token_exchange", "deputy_client")
               for p in (client / package).rglob("*.py")}
    names = names_in(client_wheel)
    assert sources <= names, sorted(sources - names)
    assert {"token_exchange/py.typed", "deputy_client/py.typed"} <= names
    assert not any(name.startswith(("delegation/", "gateway/", "policies/", "tests/")) for name in names)
    required = {line.split(":", 1)[1].split(";")[0].strip() for line in _metadata(client_wheel).splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    names_required = {r.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower() for r in required}
    assert names_required == {"pyjwt", "cryptography", "httpx2"}, required


def test_issue10_1_the_gateway_depends_on_the_client_for_its_protocol_core(wheel: Path) -> None:
    assert "Requires-Dist: deputy-client==0.1.0" in _metadata(wheel)


def test_issue2_wheel_declares_the_deputy_command_and_python_3_11(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        dist_info = next(n.split("/")[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "Name: deputy-gateway" in metadata
    assert "Requires-Python: >=3.11" in metadata
    assert "deputy = gateway.cli:main" in entry_points


def test_issue2_installed_policies_package_finds_its_rego_files(wheel: Path, tmp_path: Path) -> None:
    """Unpacked as pip installs it, `policies.PACKAGED_POLICIES` points at files that are there."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    script = ("import policies, pathlib; p = pathlib.Path(policies.PACKAGED_POLICIES); "
              "print(p); print(sorted(x.relative_to(p).as_posix() for x in p.rglob('*.rego')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    location, regos = result.stdout.splitlines()
    assert Path(location) == tmp_path / "policies"  # the unpacked copy, not the source tree
    assert "deputy/exchange.rego" in regos


def test_issue3_wheel_ships_the_demo_for_serve_dev_and_deputy_demo(wheel: Path) -> None:
    # Issue 6 moved the demo identities, the demo story and the process runner into the gateway.
    demo = {f"gateway/{name}.py" for name in ("demo", "dev", "process")}
    assert demo <= names_in(wheel)
