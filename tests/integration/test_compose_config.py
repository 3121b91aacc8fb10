"""Our reading of deploy/docker-compose.yml against Docker Compose's own (``docker compose config``).

``unistream run`` takes every service's command and environment from the compose file through
unistream_tools.compose, a model of how Compose reads it. Once that model differed from the tool
(Compose dropped every word of the redis command after the first ``>``, our reader kept them) and
every test passed while the real stack had no Redis user. Here the tool itself is asked, when it
is installed (it needs no engine; ../shared/tools/docker-local/setup.sh or Docker's compose plugin
provides it): the redis command must carry every ACL user, and each service's command and
environment must be what ``unistream run`` would start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from unistream_tools.compose import command, environment, interpolate_tree, load

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
USERS = ("ingest", "aggregator", "features", "trainer", "dashboard")
PROFILES = ("auto", "live", "replay")
SECRETS = {f"UNISTREAM_REDIS_PASSWORD_{user.upper()}": f"{user}-secret-{i}" for i, user in enumerate((*USERS, "admin"))}
ENV_FILE = {**SECRETS, "UNISTREAM_INGEST_TOKEN": "door-token", "UNISTREAM_PUBLISH_PORT": "18501"}


def compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    return result.returncode == 0


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not compose_available(),
        reason="docker compose is not installed here: Compose's own reading of the compose file is not checked "
        "(../shared/tools/docker-local/setup.sh installs it; no engine is needed)",
    ),
]


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``docker compose config`` of the real file with an env file of known secrets, every profile on."""
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in ENV_FILE.items()))
    # only what docker needs: a variable of the test's own environment must not interpolate the file
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME") or key.startswith("DOCKER_")}
    profiles = [arg for profile in PROFILES for arg in ("--profile", profile)]
    out = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(env_file), *profiles, "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def ours() -> dict:
    return interpolate_tree(load(COMPOSE), ENV_FILE)


def test_compose_s_redis_command_carries_every_acl_user_with_its_password(compose_config: dict) -> None:
    words = compose_config["services"]["redis"]["command"]
    users = {words[i + 1]: words[i + 2 : i + 4] for i, word in enumerate(words) if word == "--user"}
    assert set(users) == {"default", *USERS}
    for user in (*USERS, "default"):
        password = SECRETS[f"UNISTREAM_REDIS_PASSWORD_{'ADMIN' if user == 'default' else user.upper()}"]
        assert users[user] == ["on", f">{password}"]
    assert len(words) == 61


def test_unistream_run_reads_the_redis_command_word_for_word_as_compose_does(compose_config: dict, ours: dict) -> None:
    assert command(ours, "redis") == compose_config["services"]["redis"]["command"]


@pytest.mark.parametrize("name", [*USERS, "ingest-live", "ingest-replay"])
def test_unistream_run_reads_each_service_s_command_and_environment_as_compose_does(
    compose_config: dict, ours: dict, name: str
) -> None:
    theirs = compose_config["services"][name]
    assert command(ours, name) == theirs["command"]
    assert environment(ours, name, {}) == theirs["environment"]


def test_compose_publishes_the_dashboard_on_the_configured_port_on_loopback(compose_config: dict) -> None:
    (port,) = compose_config["services"]["dashboard"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "18501", 8501)
