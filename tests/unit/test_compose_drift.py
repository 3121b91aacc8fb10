"""`unistream run` and deploy/docker-compose.yml cannot drift.

For every service in the compose file, under every profile, the supervisor's plan runs
compose's command with compose's environment; the only differences are the documented local
overrides, and each of those has the documented value. With its own Redis, run gives every
service compose's login (its ACL user and password, which run makes up when deploy/.env's are not
in the environment); with the user's own Redis (UNISTREAM_REDIS_URL), the plan needs none of the
secrets that deploy/.env gives compose.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest

from unistream_tools import compose as composefile
from unistream_tools.supervisor import (
    INFRASTRUCTURE,
    LOCAL_OVERRIDES,
    PlanError,
    RunOptions,
    active_profiles,
    build_plan,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE = composefile.load(REPO / "deploy" / "docker-compose.yml")
RUN_DIR = Path("/work/run")
OPTIONS = RunOptions(
    redis_url="redis://127.0.0.1:6390/0",
    run_dir=RUN_DIR,
    bin_dir=Path("/venv/bin"),
    python="/venv/bin/python",
    scale={"trainer": 3},
    port_offset=100,
)
# The shell of a local run: no deploy/.env, so none of its passwords.
SHELL_ENV = {"UNISTREAM_SYMBOLS": "SOLUSDT", "HOME": "/root"}
SECRETS = {
    f"UNISTREAM_REDIS_PASSWORD_{user.upper()}": f"pw-{user}"
    for user in ("admin", "ingest", "aggregator", "features", "trainer", "dashboard")
}
OPTIONS = replace(OPTIONS, redis_secrets=SECRETS)  # run's own Redis, with compose's ACL users
PROFILES = ("auto", "live", "replay")
INGESTS = {"auto": "ingest", "live": "ingest-live", "replay": "ingest-replay"}


def compose_view(name: str) -> tuple[list[str], dict[str, str]]:
    """What `docker compose up` gives service ``name``: command and interpolated environment
    (compose has deploy/.env, so the secrets too)."""
    service = composefile.interpolate_tree(COMPOSE["services"][name], {**SHELL_ENV, **SECRETS})
    return list(service["command"]), {key: str(value) for key, value in service["environment"].items()}


PLANS = {profile: build_plan(COMPOSE, SHELL_ENV, replace(OPTIONS, profiles=(profile,))) for profile in PROFILES}
PLAN = build_plan(COMPOSE, SHELL_ENV, OPTIONS)  # the compose file's default profiles
# every process slot of every profile once (the services without a profile are in every plan)
ALL_SPECS = list({spec.name: spec for profile in PROFILES for spec in PLANS[profile]}.values())
APP_SERVICES = [name for name in COMPOSE["services"] if name not in INFRASTRUCTURE]


def test_every_compose_service_is_planned_under_its_profile_and_only_redis_is_replaced() -> None:
    assert INFRASTRUCTURE == ("redis",)
    assert sorted({spec.service for spec in ALL_SPECS}) == sorted(APP_SERVICES)
    for profile, plan in PLANS.items():
        services = {spec.service for spec in plan}
        assert services == {INGESTS[profile], "aggregator", "features", "trainer", "dashboard"}, profile


def test_each_profile_runs_exactly_one_ingest_and_the_default_is_auto() -> None:
    # two ingests would be two writers of one tick stream
    for name in APP_SERVICES:
        wanted = composefile.profiles(COMPOSE, name)
        assert (
            (wanted == [next(p for p, s in INGESTS.items() if s == name)]) if name.startswith("ingest") else not wanted
        )
    assert composefile.default_profiles(COMPOSE) == ["auto"]
    assert [spec.name for spec in PLAN] == [spec.name for spec in PLANS["auto"]]


def test_profiles_come_from_the_flags_else_compose_profiles_else_the_compose_default() -> None:
    assert active_profiles(["live"], {"COMPOSE_PROFILES": "replay"}) == ("live",)
    assert active_profiles([], {"COMPOSE_PROFILES": "replay, live"}) == ("replay", "live")
    assert active_profiles([], {"COMPOSE_PROFILES": ""}) is None  # the compose file's default


def test_an_unknown_profile_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(PlanError, match="no service has profile\\(s\\) nope; profiles: auto, live, replay"):
        build_plan(COMPOSE, SHELL_ENV, replace(OPTIONS, profiles=("nope",)))


def test_with_the_user_s_own_redis_no_secret_is_needed_and_none_is_passed_on() -> None:
    own = replace(OPTIONS, redis_secrets=None)
    build_plan(COMPOSE, SHELL_ENV, own)  # SHELL_ENV has no passwords
    for spec in build_plan(COMPOSE, {**SHELL_ENV, **SECRETS}, own):
        assert not any(secret in value for secret in SECRETS.values() for value in spec.environment.values())
        assert spec.environment["UNISTREAM_REDIS_URL"] == own.redis_url


def test_with_run_s_own_redis_each_service_logs_in_as_its_own_user_and_no_other() -> None:
    for spec in ALL_SPECS:
        user = spec.service.split("-")[0]
        assert spec.environment["UNISTREAM_REDIS_URL"] == f"redis://{user}:pw-{user}@127.0.0.1:6390/0"


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_plan_runs_compose_command_with_compose_environment_except_the_overrides(spec) -> None:
    command, environment = compose_view(spec.service)
    assert spec.argv[1:] == tuple(command[1:])
    assert command[0].startswith("unistream-") and spec.argv[0] == f"/venv/bin/{command[0]}"
    kept = {k: v for k, v in spec.environment.items() if k not in LOCAL_OVERRIDES}
    assert kept == {k: v for k, v in environment.items() if k not in LOCAL_OVERRIDES}
    assert kept["UNISTREAM_SYMBOLS"] == "SOLUSDT", "compose defaults are interpolated from the shell"


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_local_overrides_have_their_documented_values(spec) -> None:
    _, environment = compose_view(spec.service)
    env = spec.environment
    # compose's login (user, password, database) on run's Redis
    assert env["UNISTREAM_REDIS_URL"] == environment["UNISTREAM_REDIS_URL"].replace("@redis:6379/", "@127.0.0.1:6390/")
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
        for spec in ALL_SPECS
        for key, value in spec.environment.items()
        if compose_view(spec.service)[1].get(key) != value
    }
    assert changed == set(LOCAL_OVERRIDES)


def test_scaled_trainer_gets_three_slots_numbered_from_1_on_ports_100_apart() -> None:
    trainers = [spec for spec in PLAN if spec.service == "trainer"]
    assert [spec.name for spec in trainers] == ["trainer-1", "trainer-2", "trainer-3"]
    assert [spec.http_port for spec in trainers] == [8104, 8204, 8304]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_readiness_uses_compose_healthcheck_on_the_local_port(spec) -> None:
    check = " ".join(COMPOSE["services"][spec.service]["healthcheck"]["test"])
    path = spec.health_url.split(str(spec.http_port), 1)[1]
    assert spec.health_url == f"http://127.0.0.1:{spec.http_port}{path}"
    assert f"http://127.0.0.1:{spec.http_port - OPTIONS.port_offset - 100 * (spec.replica - 1)}{path}'" in check


def test_only_the_dashboard_is_sigkilled_when_the_supervisor_dies() -> None:
    # Streamlit's SIGTERM shutdown writes to the dead supervisor's pipe and stalls: an orphan
    signals = {spec.service: spec.orphan_signal for spec in ALL_SPECS}
    assert signals.pop("dashboard") == signal.SIGKILL
    assert set(signals.values()) == {signal.SIGTERM}


def test_restart_policies_are_compose_s_and_only_a_replay_may_finish() -> None:
    policies = {spec.service: spec.restart for spec in ALL_SPECS}
    assert policies.pop("ingest-replay") == "on-failure", "a finished replay stays finished"
    assert set(policies.values()) == {"unless-stopped"}
    for name in APP_SERVICES:
        assert "restart" in COMPOSE["services"][name], f"{name}: set the policy (run's default is not compose's)"


def test_an_unknown_restart_policy_is_refused_with_the_choices() -> None:
    bad = {"services": {"web": {"command": ["python"], "restart": "sometimes"}}}
    with pytest.raises(composefile.ComposeError, match="not one of no, always, on-failure, unless-stopped"):
        composefile.restart_policy(bad, "web")
    assert composefile.restart_policy({"services": {"web": {"restart": "on-failure:3"}}}, "web") == "on-failure"


def test_an_unknown_orphan_signal_is_refused_with_the_choices() -> None:
    bad = {"services": {"web": {"command": ["python"], composefile.ORPHAN_SIGNAL_KEY: "SIGHUP"}}}
    with pytest.raises(composefile.ComposeError, match="use one of SIGTERM, SIGKILL"):
        composefile.orphan_signal(bad, "web")
