"""`unistream run` and deploy/docker-compose.yml cannot drift.

For every service in the compose file, the supervisor's plan runs compose's command with
compose's environment; the only differences are the documented local overrides, and each of
those has the documented value.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from unistream_common import compose as composefile
from unistream_common.supervisor import INFRASTRUCTURE, LOCAL_OVERRIDES, RunOptions, build_plan

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
RUN_DIR = Path("/work/run")
OPTIONS = RunOptions(
    redis_url="redis://127.0.0.1:6390/0",
    run_dir=RUN_DIR,
    bin_dir=Path("/venv/bin"),
    python="/venv/bin/python",
    scale={"trainer": 3},
    port_offset=100,
)
SHELL_ENV = {"UNISTREAM_SYMBOLS": "SOLUSDT", "HOME": "/root"}


def compose_view(name: str) -> tuple[list[str], dict[str, str]]:
    """What `docker compose up` gives service ``name``: command and interpolated environment."""
    service = composefile.interpolate_tree(COMPOSE["services"][name], SHELL_ENV)
    return list(service["command"]), {key: str(value) for key, value in service["environment"].items()}


PLAN = build_plan(COMPOSE, SHELL_ENV, OPTIONS)
APP_SERVICES = [name for name in COMPOSE["services"] if name not in INFRASTRUCTURE]


def test_every_compose_service_is_planned_and_only_redis_is_replaced() -> None:
    assert INFRASTRUCTURE == ("redis",)
    assert sorted({spec.service for spec in PLAN}) == sorted(APP_SERVICES)
    assert len(APP_SERVICES) == 5


@pytest.mark.parametrize("spec", PLAN, ids=lambda spec: spec.name)
def test_plan_runs_compose_command_with_compose_environment_except_the_overrides(spec) -> None:
    command, environment = compose_view(spec.service)
    assert spec.argv[1:] == tuple(command[1:])
    assert command[0] == "unistream" and spec.argv[0] == "/venv/bin/unistream"
    kept = {k: v for k, v in spec.environment.items() if k not in LOCAL_OVERRIDES}
    assert kept == {k: v for k, v in environment.items() if k not in LOCAL_OVERRIDES}
    assert kept["UNISTREAM_SYMBOLS"] == "SOLUSDT", "compose defaults are interpolated from the shell"


@pytest.mark.parametrize("spec", PLAN, ids=lambda spec: spec.name)
def test_local_overrides_have_their_documented_values(spec) -> None:
    _, environment = compose_view(spec.service)
    env = spec.environment
    assert env["UNISTREAM_REDIS_URL"] == OPTIONS.redis_url
    assert env["UNISTREAM_HTTP_HOST"] == "127.0.0.1"
    compose_port = int(environment["UNISTREAM_HTTP_PORT"])
    assert env["UNISTREAM_HTTP_PORT"] == str(compose_port + OPTIONS.port_offset + 100 * (spec.replica - 1))
    assert spec.http_port == compose_port + OPTIONS.port_offset + 100 * (spec.replica - 1)
    assert env["UNISTREAM_CONSUMER_NAME"] == f"{spec.service}-{spec.replica}"
    if "UNISTREAM_MODEL_DIR" in environment:
        assert env["UNISTREAM_MODEL_DIR"] == str(RUN_DIR / "models")
    else:
        assert "UNISTREAM_MODEL_DIR" not in env
    assert set(env) - set(environment) == {"UNISTREAM_CONSUMER_NAME"}, "run adds nothing else"


def test_the_overrides_are_exactly_the_documented_five() -> None:
    assert set(LOCAL_OVERRIDES) == {
        "UNISTREAM_REDIS_URL",
        "UNISTREAM_HTTP_HOST",
        "UNISTREAM_HTTP_PORT",
        "UNISTREAM_MODEL_DIR",
        "UNISTREAM_CONSUMER_NAME",
    }
    changed = {
        key
        for spec in PLAN
        for key, value in spec.environment.items()
        if compose_view(spec.service)[1].get(key) != value
    }
    assert changed == set(LOCAL_OVERRIDES)


def test_scaled_trainer_gets_three_slots_numbered_from_1_on_ports_100_apart() -> None:
    trainers = [spec for spec in PLAN if spec.service == "trainer"]
    assert [spec.name for spec in trainers] == ["trainer-1", "trainer-2", "trainer-3"]
    assert [spec.http_port for spec in trainers] == [8104, 8204, 8304]


@pytest.mark.parametrize("spec", PLAN, ids=lambda spec: spec.name)
def test_readiness_uses_compose_healthcheck_on_the_local_port(spec) -> None:
    check = " ".join(COMPOSE["services"][spec.service]["healthcheck"]["test"])
    path = spec.health_url.split(str(spec.http_port), 1)[1]
    assert spec.health_url == f"http://127.0.0.1:{spec.http_port}{path}"
    assert f"http://127.0.0.1:{spec.http_port - OPTIONS.port_offset - 100 * (spec.replica - 1)}{path}'" in check


def test_only_the_dashboard_is_sigkilled_when_the_supervisor_dies() -> None:
    # Streamlit's SIGTERM shutdown writes to the dead supervisor's pipe and stalls: an orphan
    signals = {spec.service: spec.orphan_signal for spec in PLAN}
    assert signals.pop("dashboard") == signal.SIGKILL
    assert set(signals.values()) == {signal.SIGTERM}


def test_an_unknown_orphan_signal_is_refused_with_the_choices() -> None:
    bad = {"services": {"web": {"command": ["python"], composefile.ORPHAN_SIGNAL_KEY: "SIGHUP"}}}
    with pytest.raises(composefile.ComposeError, match="use one of SIGTERM, SIGKILL"):
        composefile.orphan_signal(bad, "web")
