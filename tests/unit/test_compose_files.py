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

from unistream_tools.compose import ComposeError, command, interpolate, interpolate_tree, load

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
APP_SERVICES = ("ingest", "aggregator", "features", "trainer", "dashboard")
PORTS = {"ingest": 8001, "aggregator": 8002, "features": 8003, "trainer": 8004, "dashboard": 8501}
# The ingest variants of the live and replay profiles: the ingest image and settings, another source.
INGEST_VARIANTS = {"ingest-live": "live", "ingest-replay": "replay"}
ALL_APP_SERVICES = (*APP_SERVICES, *INGEST_VARIANTS)


def tool(name: str) -> str:
    """A tool from requirements-dev.txt: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -r requirements-dev.txt"
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


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


def test_compose_schema_check_rejects_a_misspelt_healthcheck_key(tmp_path: Path) -> None:
    # start_interval is young; the vendored schema must know it, and so refuse a typo of it
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("start_interval: 1s", "start_intreval: 1s", 1))
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
    assert "ports" not in redis and "expose" not in redis


SECRETS = {f"UNISTREAM_REDIS_PASSWORD_{name.upper()}": f"pw-{name}" for name in (*APP_SERVICES, "admin")}


def acl_users(words: list[str]) -> dict[str, list[str]]:
    """The ``--user NAME RULE...`` groups of a redis-server argv, by user name."""
    users: dict[str, list[str]] = {}
    for i, word in enumerate(words):
        if word == "--user":
            rules = []
            for rule in words[i + 2 :]:
                if rule.startswith("--"):
                    break
                rules.append(rule)
            users[words[i + 1]] = rules
    return users


def redis_argv(compose: dict, env: dict[str, str]) -> list[str]:
    """The redis command as Compose runs it: interpolated with ``env`` (the env file's secrets)."""
    return command({"services": {"redis": interpolate_tree(compose["services"]["redis"], env)}}, "redis")


def test_redis_command_is_a_list_so_compose_keeps_every_word(compose: dict) -> None:
    # A string would be split by Compose's shell-word rules, which drop every word after the first
    # unquoted ">" (the prefix of each password): no ACL user would exist.
    assert isinstance(compose["services"]["redis"]["command"], list)
    assert all(isinstance(word, str) for word in compose["services"]["redis"]["command"])
    with pytest.raises(ComposeError, match="YAML list"):
        command({"services": {"redis": {"command": " ".join(redis_argv(compose, SECRETS))}}}, "redis")


def test_redis_has_one_acl_user_per_service_and_the_default_user_is_the_password_admin(compose: dict) -> None:
    users = acl_users(redis_argv(compose, SECRETS))
    assert set(users) == {"default", *APP_SERVICES}
    # Every right, behind a password: Redis replays its append-only file as the default user and
    # drops each MULTI/EXEC that user may not run (tests/integration/test_redis_credentials.py).
    assert users["default"] == ["on", ">pw-admin", "~*", "&*", "+@all"]
    redis = compose["services"]["redis"]
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${UNISTREAM_REDIS_PASSWORD_ADMIN:?")
    for name in APP_SERVICES:
        rules = users[name]
        assert rules[:2] == ["on", f">pw-{name}"]
        assert "nopass" not in rules and "allkeys" not in rules and "~*" not in rules
        assert rules.index("+@all") < rules.index("-@dangerous"), f"{name}: no FLUSHALL, CONFIG, KEYS..."
    # the one service with a published port reads everything but writes only its heartbeat
    assert [r for r in users["dashboard"] if "~" in r] == ["%R~*", "~svc:*"]
    # without deploy/.env, compose stops with the message instead of starting a Redis without passwords
    with pytest.raises(ComposeError, match="UNISTREAM_REDIS_PASSWORD_ADMIN is missing: set it in deploy/.env"):
        redis_argv(compose, {})


@pytest.mark.parametrize("name", ALL_APP_SERVICES)
def test_each_service_logs_in_as_its_own_acl_user_with_its_password_from_the_env_file(compose: dict, name: str) -> None:
    user = name.split("-")[0]
    url = compose["services"][name]["environment"]["UNISTREAM_REDIS_URL"]
    password = f"${{UNISTREAM_REDIS_PASSWORD_{user.upper()}:?set it in deploy/.env (make deploy/.env writes one)}}"
    assert url == f"redis://{user}:{password}@redis:6379/0"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_service_is_built_from_its_target_and_waits_for_a_healthy_redis(compose: dict, name: str) -> None:
    svc = compose["services"][name]
    assert {k: v for k, v in svc["build"].items() if k != "args"} == {
        "context": "..",
        "dockerfile": "deploy/Dockerfile",
        "target": name,
    }
    assert svc["command"] == [f"unistream-{name}"]
    assert svc["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert svc["restart"] == "unless-stopped"
    env = svc["environment"]
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


def test_only_the_dashboard_publishes_a_host_port_and_on_loopback_unless_told(compose: dict) -> None:
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert published == {"dashboard": ["${UNISTREAM_PUBLISH_ADDRESS:-127.0.0.1}:${UNISTREAM_PUBLISH_PORT:-8501}:8501"]}
    assert interpolate(published["dashboard"][0], {}) == "127.0.0.1:8501:8501"
    # another host port when something else holds 8501 (deploy/.env)
    assert interpolate(published["dashboard"][0], {"UNISTREAM_PUBLISH_PORT": "18501"}) == "127.0.0.1:18501:8501"
    assert not any("expose" in svc for svc in compose["services"].values())


@pytest.mark.parametrize("name", ["redis", *ALL_APP_SERVICES])
def test_every_healthcheck_starts_fast_and_every_log_is_rotated(compose: dict, name: str) -> None:
    svc = compose["services"][name]
    check = svc["healthcheck"]
    # every second while starting: healthy about a second after the probe first answers
    assert check["start_interval"] == "1s"
    assert check["start_period"] in ("5s", "20s", "30s", "60s")
    assert svc["logging"] == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "5"}}


@pytest.mark.parametrize("name", ALL_APP_SERVICES)
def test_service_containers_drop_every_capability_and_restart(compose: dict, name: str) -> None:
    svc = compose["services"][name]
    assert svc["cap_drop"] == ["ALL"]
    assert svc["security_opt"] == ["no-new-privileges:true"]
    assert svc["init"] is True
    assert svc["restart"] == ("on-failure" if name == "ingest-replay" else "unless-stopped")


def test_trainer_replicas_have_memory_and_cpu_limits(compose: dict) -> None:
    resources = compose["services"]["trainer"]["deploy"]["resources"]
    assert resources["limits"] == {"cpus": "2.0", "memory": "2G"}
    assert resources["reservations"] == {"memory": "1G"}


def test_profiles_give_exactly_one_ingest_each_the_same_image_and_settings(compose: dict) -> None:
    services = compose["services"]
    profiles = {name: svc.get("profiles") for name, svc in services.items()}
    assert profiles.pop("ingest") == ["auto"]
    for name, profile in INGEST_VARIANTS.items():
        assert profiles.pop(name) == [profile]
        variant, base = services[name], services["ingest"]
        assert {k: v for k, v in variant.items() if k not in ("profiles", "environment", "restart", "volumes")} == {
            k: v for k, v in base.items() if k not in ("profiles", "environment", "restart")
        }
        assert {k: v for k, v in variant["environment"].items() if k != "UNISTREAM_SOURCE"} == {
            k: v for k, v in base["environment"].items() if k != "UNISTREAM_SOURCE"
        }
    assert set(profiles.values()) == {None}, "every other service runs in every profile"
    assert services["ingest-live"]["environment"]["UNISTREAM_SOURCE"] == "binance"
    assert services["ingest-replay"]["environment"]["UNISTREAM_SOURCE"] == "replay"
    assert services["ingest-replay"]["volumes"] == ["${UNISTREAM_REPLAY_DIR:-./replay}:/replay:ro"]
    # whichever ingest runs, the aggregator's dependency on it is optional
    deps = services["aggregator"]["depends_on"]
    for name in ("ingest", *INGEST_VARIANTS):
        assert deps[name] == {"condition": "service_started", "required": False}


def test_the_default_profile_of_unistream_run_is_compose_s_default_in_the_env_example(compose: dict) -> None:
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert example["COMPOSE_PROFILES"].split(",") == compose["x-unistream-default-profiles"]


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
    return [
        word for args in pip_installs(stages, target) for word in args.split()
        if word.startswith("/app/") and word != CONSTRAINTS
    ]  # fmt: skip


def requirement_sources(stages: dict[str, Stage], target: str) -> list[str]:
    """The pyproject.toml files whose dependencies deploy/dependencies.py lists for ``target``'s pip installs."""
    runs = [args for stage in chain(stages, target) for instruction, args in stage.instructions if instruction == "RUN"]
    parts = [part.strip() for args in runs for part in args.split("&&") if "dependencies.py" in part]
    return [word for part in parts for word in part.split() if word.endswith("pyproject.toml")]


CONSTRAINTS = "/app/constraints.txt"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def pip_installs(stages: dict[str, Stage], target: str) -> list[str]:
    """Each ``pip install ...`` command line that building ``target`` runs (a RUN may chain several)."""
    runs = [args for stage in chain(stages, target) for instruction, args in stage.instructions if instruction == "RUN"]
    return [part.strip() for args in runs for part in args.split("&&") if "pip install" in part]


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
    assert ("CMD", f'["unistream-{name}"]') in instructions


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_image_installs_no_tools_and_runs_a_script_of_its_own_package(stages: dict[str, Stage], name: str) -> None:
    paths = installed_paths(stages, name)
    assert not any(path.startswith("/app/tools") for path in paths), f"{name}'s image installs the operator tools"
    scripts = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"unistream-{name}": f"unistream_{name}.__main__:main"}


@pytest.mark.parametrize("name", ["ingest", "aggregator"])
def test_light_targets_install_neither_torch_nor_streamlit(stages: dict[str, Stage], name: str) -> None:
    text = " ".join(args for stage in chain(stages, name) for _, args in stage.instructions).lower()
    assert "torch" not in text and "streamlit" not in text
    paths = installed_paths(stages, name)
    assert paths == ["/app/libs/common", f"/app/services/{name}"]
    deps = " ".join(dep for path in paths for dep in package_dependencies(path)).lower()
    assert "torch" not in deps and "streamlit" not in deps
    # every third-party dependency of what it installs is installed first, from the pyproject files
    sources = {str(Path("/app") / path).removesuffix("/pyproject.toml") for path in requirement_sources(stages, name)}
    assert {path for path in paths if package_dependencies(path) != ["unistream-common"]} <= sources


@pytest.mark.parametrize("name", ["features", "trainer"])
def test_model_targets_take_cpu_torch_from_the_pytorch_index_only_for_torch(
    stages: dict[str, Stage], name: str
) -> None:
    installs = pip_installs(stages, name)
    from_index = [args for args in installs if "--index-url" in args]
    # torch alone, without its dependencies: those come from PyPI, pinned, like everything else
    assert from_index == ['pip install --no-cache-dir --no-deps --index-url "$index" torch==2.13.0']
    # the index is a build argument whose default is the public CPU index; compose passes deploy/.env's
    torch_stage = stages["torch-cpu"].instructions
    assert ("ARG", f"UNISTREAM_TORCH_INDEX_URL={TORCH_INDEX}") in torch_stage
    assert any(i == "RUN" and args.startswith('index="${UNISTREAM_TORCH_INDEX_URL}"') for i, args in torch_stage)
    assert f"pip install --no-cache-dir -c {CONSTRAINTS} torch==2.13.0" in installs
    assert installed_paths(stages, name)[-1] == f"/app/services/{name}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_pip_install_of_every_target_uses_the_constraints_file(stages: dict[str, Stage], name: str) -> None:
    base = stages["base"].instructions
    assert ("COPY", "constraints.txt deploy/dependencies.py /app/") in base
    for args in pip_installs(stages, name):
        assert f" -c {CONSTRAINTS} " in f"{args} " or "--no-deps" in args, args
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "!constraints.txt" in ignored and "!deploy/dependencies.py" in ignored, "they must reach the build"


def test_no_syntax_directive_that_would_pull_a_frontend_image_from_docker_hub() -> None:
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.IGNORECASE | re.MULTILINE)


@pytest.mark.parametrize("name", ["features", "trainer"])
def test_compose_passes_the_torch_index_from_the_env_file_as_a_build_argument(compose: dict, name: str) -> None:
    args = compose["services"][name]["build"]["args"]
    assert args == {"UNISTREAM_TORCH_INDEX_URL": f"${{UNISTREAM_TORCH_INDEX_URL:-{TORCH_INDEX}}}"}
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert example["UNISTREAM_TORCH_INDEX_URL"] == TORCH_INDEX


def test_dashboard_target_installs_streamlit_but_not_torch(stages: dict[str, Stage]) -> None:
    paths = installed_paths(stages, "dashboard")
    deps = " ".join(dep for path in paths for dep in package_dependencies(path)).lower()
    assert "streamlit" in deps and "torch" not in deps


# --------------------------------------------------------------------------- make targets

COMPOSE_CMD = "docker compose -f deploy/docker-compose.yml --env-file deploy/.env"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["up"], f"{COMPOSE_CMD} --profile auto up -d --build --wait --wait-timeout 300"),
        (["up", "PROFILE=live"], f"{COMPOSE_CMD} --profile live up -d --build --wait --wait-timeout 300"),
        (["down"], f"{COMPOSE_CMD} --profile auto --profile live --profile replay down"),
        (["logs"], f"{COMPOSE_CMD} --profile auto --profile live --profile replay logs -f --tail=200"),
        (
            ["scale-trainer", "N=2"],
            f"{COMPOSE_CMD} --profile auto up -d --no-recreate --scale trainer=2 --wait --wait-timeout 300",
        ),
    ],
)
def test_make_targets_drive_compose_with_the_env_file_and_the_profiles(args: list[str], expected: str) -> None:
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert [line for line in out.splitlines() if line.startswith("docker compose")] == [expected]
    if args[0] == "up":  # the engine is checked first, and the dashboard's address said last
        assert out.splitlines()[-3].endswith("deploy/check.py --engine-only")
        assert f"{COMPOSE_CMD} port dashboard 8501" in out.splitlines()[-1]
    if not (REPO / "deploy" / ".env").exists():  # made first, with random secrets
        assert "scripts/make-env.py deploy/.env.example deploy/.env" in out
