"""The shape of the tree: libraries are shared, services are independent, tools compose them.

A service that imports another service drags that service's code and dependencies into its image
and ties their releases together; what two services must agree on (the state layout, the CNN)
lives in a library instead. Operator tooling (the `unistream` command, the local supervisor,
compose parsing) lives in tools/, which no image installs: a library carries none of it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = {"unistream_common", "unistream_model"}
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "pyproject.toml").exists())


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module a source imports (standard library and third party too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def imported_packages(source: str) -> set[str]:
    """Top-level ``unistream_*`` packages a module imports (anywhere in it, lazily or not)."""
    return {name for name in imported_modules(source) if name.startswith("unistream_")}


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
    for service in SERVICES:
        deps = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())["project"]["dependencies"]
        ours = {d for d in deps if d.startswith("unistream-")}
        assert ours <= {"unistream-common", "unistream-model"}, (service, ours)


def library_modules() -> list[Path]:
    return sorted((REPO / "libs").glob("*/unistream_*/**/*.py"))


def test_libraries_are_imported_never_run() -> None:
    # a command, a process manager or a compose parser in a library ends up in every image
    scripts = {
        str(path.relative_to(REPO)): sorted(data["project"]["scripts"])
        for path in sorted((REPO / "libs").glob("*/pyproject.toml"))
        if "scripts" in (data := tomllib.loads(path.read_text()))["project"]
    }
    assert scripts == {}, "console scripts belong to a service (its own) or to tools/"
    runnable = [str(p.relative_to(REPO)) for p in library_modules() if '__name__ == "__main__"' in p.read_text()]
    assert runnable == []
    tooling = {
        str(path.relative_to(REPO)): sorted(names)
        for path in library_modules()
        if (names := imported_modules(path.read_text()) & {"yaml", "subprocess", "selectors", "argparse"})
    }
    assert tooling == {}, "command lines, compose parsing and process supervision belong to a service or tools/"


def test_importing_the_library_loads_no_yaml() -> None:
    modules = sorted(
        "unistream_common." + p.stem
        for p in (REPO / "libs/common/unistream_common").glob("*.py")
        if p.stem != "__init__"
    )
    code = f"import sys\nimport {', '.join(modules)}\nprint('yaml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False", modules


def test_a_service_script_passes_its_command_line_to_the_service() -> None:
    # the images run `unistream-<service>`, which calls main() with no arguments
    script = Path(sys.executable).with_name("unistream-aggregator")
    out = subprocess.run([str(script), "--bogus"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "takes no arguments (got --bogus)" in out.stderr
