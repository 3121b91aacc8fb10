"""deploy/docker-compose.yml and deploy/Dockerfile, checked statically (no Docker engine here).

The schema and lint checks run the real tools (check-jsonschema's vendored compose spec,
hadolint); the structural checks encode the deployment rules from the field notes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
APP_SERVICES = ("ingest", "aggregator", "features", "trainer", "dashboard")
PORTS = {"ingest": 8001, "aggregator": 8002, "features": 8003, "trainer": 8004, "dashboard": 8501}


def tool(name: str) -> str:
    """A tool from requirements-dev.txt: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -r requirements-dev.txt"
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# --------------------------------------------------------------------------- schema and lint


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,  # the tests judge the exit status
    )


def test_compose_file_passes_the_compose_spec_schema() -> None:
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("restart: unless-stopped", "restrat: unless-stopped", 1))
    assert check_compose_schema(broken).returncode != 0


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,  # the tests judge the exit status
    )


def test_dockerfile_passes_hadolint() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_an_unpinned_apt_install(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3008" in result.stdout


# --------------------------------------------------------------------------- compose structure


def test_redis_is_persistent_healthchecked_and_not_published(compose: dict) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7.4"
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert "redis-data:/data" in redis["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_service_is_built_from_its_target_and_waits_for_a_healthy_redis(compose: dict, name: str) -> None:
    svc = compose["services"][name]
    assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile", "target": name}
    assert svc["command"] == ["unistream", name]
    assert svc["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert svc["restart"] == "unless-stopped"
    env = svc["environment"]
    assert env["UNISTREAM_REDIS_URL"] == "redis://redis:6379/0"
    assert env["UNISTREAM_SYMBOLS"] == "${UNISTREAM_SYMBOLS:-ETHUSDT,BTCUSDT}"
    assert env["UNISTREAM_SOURCE"] == "${UNISTREAM_SOURCE:-auto}"
    assert env["UNISTREAM_HTTP_HOST"] == "0.0.0.0"
    assert env["UNISTREAM_HTTP_PORT"] == str(PORTS[name])
    assert ("UNISTREAM_MODEL_DIR" in env) == (name in ("features", "trainer"))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_healthcheck_probes_its_own_port_with_python(compose: dict, name: str) -> None:
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "slim images have no curl"
    path = "/_stcore/health" if name == "dashboard" else "/healthz"
    assert f"http://127.0.0.1:{PORTS[name]}{path}" in test[3]
    compile(test[3], f"{name} healthcheck", "exec")  # the probe is valid Python


def test_every_depends_on_names_an_existing_service_with_a_condition(compose: dict) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec["condition"] in ("service_healthy", "service_started")
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck for {name} to wait on"


@pytest.mark.parametrize("name", ["trainer", "aggregator"])
def test_replicated_services_can_be_scaled(compose: dict, name: str) -> None:
    service = compose["services"][name]
    assert "container_name" not in service
    assert "ports" not in service


def test_only_the_dashboard_publishes_a_host_port(compose: dict) -> None:
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert published == {"dashboard": ["8501:8501"]}


def test_models_and_redis_data_are_named_volumes(compose: dict) -> None:
    assert set(compose["volumes"]) == {"redis-data", "models"}
    for name in ("features", "trainer"):
        assert "models:/models" in compose["services"][name]["volumes"]
        assert compose["services"][name]["environment"]["UNISTREAM_MODEL_DIR"] == "/models"


# --------------------------------------------------------------------------- Dockerfile stages


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, each with its (INSTRUCTION, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.match(r"(\S+)\s+AS\s+(\S+)", args, re.IGNORECASE)
            assert m, f"every stage is named: {line}"
            current = stages[m.group(2)] = Stage(name=m.group(2), parent=m.group(1))
        else:
            assert current is not None, f"{line} before FROM"
            current.instructions.append((instruction, " ".join(args.split())))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The target and every stage it builds on, base first."""
    out = []
    name = target
    while name in stages:
        out.append(stages[name])
        name = stages[name].parent
    return list(reversed(out))


def installed_paths(stages: dict[str, Stage], target: str) -> list[str]:
    """Local package directories that `pip install` installs in ``target``."""
    paths = []
    for stage in chain(stages, target):
        for instruction, args in stage.instructions:
            if instruction == "RUN" and "pip install" in args:
                paths += [word for word in args.split() if word.startswith("/app/")]
    return paths


def package_dependencies(app_path: str) -> list[str]:
    pyproject = REPO / app_path.removeprefix("/app/") / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def test_every_compose_target_is_a_stage_on_the_slim_python_base(compose: dict, stages: dict[str, Stage]) -> None:
    for name in APP_SERVICES:
        assert name in stages
        assert chain(stages, name)[0].parent == "python:3.11-slim"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_target_runs_as_a_numeric_non_root_user_with_compose_command(stages: dict[str, Stage], name: str) -> None:
    instructions = stages[name].instructions
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users, f"{name} runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert ("CMD", f'["unistream", "{name}"]') in instructions


@pytest.mark.parametrize("name", ["ingest", "aggregator"])
def test_light_targets_install_neither_torch_nor_streamlit(stages: dict[str, Stage], name: str) -> None:
    text = " ".join(args for stage in chain(stages, name) for _, args in stage.instructions).lower()
    assert "torch" not in text and "streamlit" not in text
    paths = installed_paths(stages, name)
    assert paths == ["/app/libs/common", f"/app/services/{name}"]
    deps = " ".join(dep for path in paths for dep in package_dependencies(path)).lower()
    assert "torch" not in deps and "streamlit" not in deps


@pytest.mark.parametrize("name", ["features", "trainer"])
def test_model_targets_take_cpu_torch_from_the_pytorch_index_only_for_torch(
    stages: dict[str, Stage], name: str
) -> None:
    runs = [args for stage in chain(stages, name) for instruction, args in stage.instructions if instruction == "RUN"]
    torch_runs = [args for args in runs if "torch" in args]
    assert torch_runs == ["pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0"]
    others = [args for args in runs if "pip install" in args and "torch" not in args]
    assert all("--index-url" not in args for args in others), "other packages come from PyPI"
    assert installed_paths(stages, name)[-1] == f"/app/services/{name}"


def test_dashboard_target_installs_streamlit_but_not_torch(stages: dict[str, Stage]) -> None:
    paths = installed_paths(stages, "dashboard")
    deps = " ".join(dep for path in paths for dep in package_dependencies(path)).lower()
    assert "streamlit" in deps and "torch" not in deps
