"""deploy/.env: the compose stack's secrets, never committed, made from deploy/.env.example."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

from unistream_tools.compose import interpolate_tree, load

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / ".env.example"
MAKE_ENV = REPO / "scripts" / "make-env.py"
COMPOSE_TEXT = (REPO / "deploy" / "docker-compose.yml").read_text()


def assignments(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def required_variables() -> set[str]:
    """Variables the compose file cannot do without (``${VAR:?...}``)."""
    return set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_TEXT))


def make_env(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    target = tmp_path / ".env"
    result = subprocess.run(
        [sys.executable, str(MAKE_ENV), str(EXAMPLE), str(target)], capture_output=True, text=True, check=False
    )
    return result, target


def test_the_example_names_every_required_variable_with_an_empty_value() -> None:
    example = assignments(EXAMPLE.read_text())
    required = required_variables()
    assert required == {
        f"UNISTREAM_REDIS_PASSWORD_{s}" for s in ("ADMIN", "INGEST", "AGGREGATOR", "FEATURES", "TRAINER", "DASHBOARD")
    }
    # empty: a copied example stops compose with its message instead of running on a known password
    assert {name: example[name] for name in required} == dict.fromkeys(required, "")
    assert example["UNISTREAM_INGEST_TOKEN"] == ""
    assert example["UNISTREAM_PUBLISH_ADDRESS"] == "127.0.0.1"


def test_make_env_fills_every_secret_with_its_own_random_value_in_a_private_file(tmp_path: Path) -> None:
    result, target = make_env(tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    values = assignments(target.read_text())
    secrets = {name: value for name, value in values.items() if "_PASSWORD" in name or name.endswith("_TOKEN")}
    assert set(secrets) == required_variables() | {"UNISTREAM_INGEST_TOKEN"}
    assert all(re.fullmatch(r"[0-9a-f]{48}", value) for value in secrets.values()), "URL-safe, 192 bits"
    assert len(set(secrets.values())) == len(secrets), "one password per user"
    assert values["COMPOSE_PROFILES"] == "auto" and values["UNISTREAM_PUBLISH_ADDRESS"] == "127.0.0.1"
    # with it, the compose file's secrets interpolate; a second run never replaces them
    redis_command = interpolate_tree(
        load(REPO / "deploy" / "docker-compose.yml")["services"]["redis"]["command"], values
    )
    assert all(f">{secrets[v]}" in redis_command for v in required_variables())
    again, _ = make_env(tmp_path)
    assert again.returncode == 1 and "not overwritten" in again.stderr
    assert assignments(target.read_text()) == values


def test_secrets_stay_out_of_git_and_out_of_the_images() -> None:
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "deploy/.env" in ignored
    assert "deploy/.env.example" not in ignored
    result = subprocess.run(
        ["git", "check-ignore", "--quiet", "deploy/.env"], cwd=REPO, capture_output=True, check=False
    )
    assert result.returncode in (0, 128), "git says deploy/.env would be committed"  # 128: not a git checkout
    docker_ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert docker_ignore[docker_ignore.index("*") + 1 :][:1] == ["!libs/"], "the build context starts empty"
    # of deploy/ only the script that lists dependencies: never deploy/.env
    assert [line for line in docker_ignore if line.startswith("!deploy")] == ["!deploy/dependencies.py"]
