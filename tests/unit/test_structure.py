"""The shape of the tree: libraries are shared, services are independent, tools compose them.

A service that imports another service drags that service's code and dependencies into its image
and ties their releases together; what two services must agree on (the state layout, the CNN)
lives in a library instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = {"unistream_common", "unistream_model"}
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "pyproject.toml").exists())


def imported_packages(source: str) -> set[str]:
    """Top-level ``unistream_*`` packages a module imports (anywhere in it, lazily or not)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return {name for name in found if name.startswith("unistream_")}


def test_the_import_scan_sees_lazy_imports() -> None:
    source = (
        "import os\ndef f():\n    from unistream_ingest.replay import ReplaySource\n    import unistream_trainer.core\n"
    )
    assert imported_packages(source) == {"unistream_ingest", "unistream_trainer"}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_the_libraries_and_itself(service: str) -> None:
    own = f"unistream_{service}"
    foreign = {
        str(path.relative_to(REPO)): sorted(names)
        for path in (REPO / "services" / service).rglob("*.py")
        if (names := imported_packages(path.read_text()) - LIBRARIES - {own})
    }
    assert foreign == {}, f"{service} imports other services: {foreign}"


def test_libraries_import_no_service_nor_tool() -> None:
    bad = {
        str(path.relative_to(REPO)): sorted(names)
        for path in (REPO / "libs").rglob("*.py")
        if (names := imported_packages(path.read_text()) - LIBRARIES)
    }
    assert bad == {}


def test_service_packages_declare_only_libraries() -> None:
    import tomllib

    for service in SERVICES:
        deps = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())["project"]["dependencies"]
        ours = {d for d in deps if d.startswith("unistream-")}
        assert ours <= {"unistream-common", "unistream-model"}, (service, ours)
