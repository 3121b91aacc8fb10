"""Every third-party dependency is pinned to one version, and .venv and the images install those.

constraints.txt (pip's constraints file) pins every package; `make venv` and every `pip install`
of deploy/Dockerfile pass it (test_compose_files.py checks the Dockerfile's lines).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints.txt"
PYPROJECTS = sorted(
    [
        *(REPO / "libs").glob("*/pyproject.toml"),
        *(REPO / "services").glob("*/pyproject.toml"),
        REPO / "tools" / "pyproject.toml",
    ]
)
LOCAL = re.compile(r"^unistream-")


def constraints() -> dict[str, str]:
    """Package (canonical name) -> pinned version, from constraints.txt."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and re.fullmatch(r"[A-Za-z0-9_.-]+", name), f"not NAME==VERSION: {line!r}"
        assert "+" not in version, f"{line}: a local label (+cpu) would not match PyPI's wheel"
        assert canonicalize_name(name) not in pins, f"{name} is pinned twice"
        pins[canonicalize_name(name)] = version
    return pins


def requirements() -> list[tuple[str, Requirement]]:
    """(where, requirement) for every third-party requirement of the packages and of requirements-dev.txt."""
    found = []
    for path in PYPROJECTS:
        for text in tomllib.loads(path.read_text())["project"]["dependencies"]:
            found.append((str(path.relative_to(REPO)), Requirement(text)))
    for line in (REPO / "requirements-dev.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            found.append(("requirements-dev.txt", Requirement(line)))
    return [(where, req) for where, req in found if not LOCAL.match(req.name)]


def test_constraints_pin_each_package_once_and_no_local_package() -> None:
    pins = constraints()
    assert len(pins) > 30
    assert not any(LOCAL.match(name) for name in pins), "the unistream packages are installed from the tree"
    assert pins["torch"] == "2.13.0"


@pytest.mark.parametrize(("where", "req"), requirements(), ids=lambda x: str(x))
def test_every_third_party_requirement_is_pinned_and_its_pin_allowed(where: str, req: Requirement) -> None:
    pins = constraints()
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} ({where}) is not in constraints.txt: add NAME==VERSION"
    assert Version(pins[name]) in req.specifier, f"{where} wants {req}, constraints.txt pins {pins[name]}"
    for extra in req.extras:  # redis[hiredis]: the extra's packages are pinned too
        for dep in metadata.requires(req.name) or []:
            extra_req = Requirement(dep)
            if extra_req.marker and extra_req.marker.evaluate({"extra": extra}):
                assert canonicalize_name(extra_req.name) in pins, f"{extra_req.name} ({req}) is not pinned"


def test_the_venv_has_the_pinned_versions() -> None:
    # .venv drifting from constraints.txt means the images (which install the file) differ from what was tested
    wrong = {}
    for name, version in constraints().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # pinned for the images or another machine's tools
        if Version(installed).public != Version(version).public:
            wrong[name] = f"installed {installed}, pinned {version}"
    assert wrong == {}, "run `make venv` (or `make constraints` after an intended upgrade)"


def test_make_venv_installs_with_the_constraints_file() -> None:
    makefile = (REPO / "Makefile").read_text()
    install = next(line for line in makefile.splitlines() if "$(VENV)/bin/pip install" in line)
    assert " -c constraints.txt " in install
    assert re.search(r"^\$\(STAMP\):.*\bconstraints\.txt\b", makefile, re.MULTILINE), "a new pin rebuilds the venv"
