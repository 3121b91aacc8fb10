"""Services against a Redis that wants a login, the way deploy/docker-compose.yml sets it up.

- one password (``--requirepass``): ingest, a real process, writes through its door with the
  password in ``UNISTREAM_REDIS_URL``, refuses producers without the door's token, and listens
  on 127.0.0.1 only (read from /proc/net/tcp);
- the compose file's ACL users, one per service, taken from its redis command: the pipeline
  ingest -> aggregator -> features -> trainer runs end to end, each process logged in as its
  own user, and Redis's ACL log shows not one refused command;
- wrong or missing credentials stop a service at start-up with one line and exit status 2,
  not a restart loop of tracebacks; the password never appears in any output.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import REDIS_PASSWORD
from helpers import wait_ready

from unistream_common import codec, keys
from unistream_common.settings import EXIT_BAD_CONFIG
from unistream_tools.compose import interpolate, load
from unistream_tools.redis_server import RedisNotFound, RedisServer, find_redis_server, free_port, start_redis
from unistream_tools.supervisor import redis_arguments, retarget_url

pytestmark = [pytest.mark.heavy, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
COMPOSE = load(REPO / "deploy" / "docker-compose.yml")
PASSWORD = REDIS_PASSWORD  # the conftest password_redis fixture's
USERS = ("ingest", "aggregator", "features", "trainer", "dashboard")
SECRETS = {
    **{f"UNISTREAM_REDIS_PASSWORD_{user.upper()}": f"{PASSWORD}{i}" for i, user in enumerate(USERS)},
    "UNISTREAM_REDIS_PASSWORD_ADMIN": "admin-pw-for-the-acl-log",  # compose's default user: reads ACL LOG
}


def redis_major() -> int:
    """Major version of the redis-server the fixtures start (0 when there is none: the fixtures say so)."""
    try:
        binary = find_redis_server()
    except RedisNotFound:
        return 0
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split("v=", 1)[1].split(".", 1)[0])


needs_redis_7 = pytest.mark.skipif(redis_major() < 7, reason="the compose ACL's read-only keys (%R~) need Redis 7")


def compose_acl_args() -> list[str]:
    """The ``--user`` arguments of the compose file's redis command, as ``unistream run`` passes
    them (interpolated with the env file's secrets; tests/integration/test_compose_config.py shows
    Compose reads the same words)."""
    words = redis_arguments(COMPOSE, SECRETS)
    return words[words.index("--user") :]


def compose_url(service: str, port: int) -> str:
    """The service's UNISTREAM_REDIS_URL from the compose file, aimed at our Redis instead of ``redis:6379``."""
    url = interpolate(COMPOSE["services"][service]["environment"]["UNISTREAM_REDIS_URL"], SECRETS)
    assert "@redis:6379/" in url
    return retarget_url(url, f"redis://127.0.0.1:{port}/0")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on TCP ``port`` (IPv4 and IPv6), from /proc/net."""
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            assert len(address) == width
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            if width == 8:
                found.add(".".join(str(b) for b in words))
            else:
                found.add(":".join(words[i : i + 2].hex() for i in range(0, 16, 2)))
    return found


@contextlib.contextmanager
def processes(specs: dict[str, tuple[list[str], dict[str, str]]], log_dir: Path) -> Iterator[dict]:
    """Start ``name -> (argv, env)`` processes, outputs in ``log_dir/<name>.log``; killed on the way out."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (argv, env) in specs.items():
            with (log_dir / f"{name}.log").open("wb") as out:
                procs[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def service_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    return {**base, "PYTHONUNBUFFERED": "1", "UNISTREAM_SYMBOLS": "ETHUSDT", **extra}


def unistream(service: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "unistream_tools.cli", service, *args]


def assert_no_secret(text: str) -> None:
    for secret in (PASSWORD, *SECRETS.values()):
        assert secret not in text, "a password reached the output"


# --------------------------------------------------------------------------- one password


def post(url: str, body: dict, token: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def test_ingest_with_a_password_writes_through_its_token_door_and_listens_on_loopback_only(
    password_redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{password_redis.port}/0"
    env = service_env(
        UNISTREAM_REDIS_URL=url, UNISTREAM_HTTP_PORT=str(port), UNISTREAM_INGEST_TOKEN="door-token",
        UNISTREAM_CONSUMER_NAME="ingest-auth",
    )  # fmt: skip
    log = tmp_path / "ingest.log"
    with processes({"ingest": (unistream("ingest", "--source", "external"), env)}, tmp_path) as procs:
        proc = procs["ingest"]
        wait_ready(port, proc, log)  # /readyz pings Redis: the password was accepted
        assert listening_addresses(port) == {"127.0.0.1"}, "the probes and the door bind loopback only"
        assert listening_addresses(password_redis.port) == {"127.0.0.1"}

        door = f"http://127.0.0.1:{port}/v1/ticks"
        tick = {
            "trade_id": 1,
            "price": "3000.5",
            "size": "0.1",
            "side": "BUY",
            "ts_event_ms": int(time.time() * 1000) - 5,
        }
        body = {"symbol": "ETHUSDT", "source": "REAL", "ticks": [tick]}
        assert post(door, body) == 401
        assert post(door, body, token="wrong-token") == 401
        assert post(door, body, token="door-token") == 200

        client = redis.Redis.from_url(url)
        entries = client.xrange(keys.ticks("ETHUSDT"))
        client.close()
        assert [codec.decode(fields).ticks[0].trade_id for _, fields in entries] == [1]

        status = subprocess.run(
            [*unistream("status"), "--redis-url", url], capture_output=True, text=True, timeout=30, env=env, check=False
        )
        assert status.returncode == 0, status.stderr
        assert f"at redis://:***@127.0.0.1:{password_redis.port}/0" in status.stdout
        assert_no_secret(status.stdout + status.stderr)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    text = log.read_text()
    assert f"redis redis://:***@127.0.0.1:{password_redis.port}/0" in text
    assert "Traceback" not in text
    assert_no_secret(text)


@pytest.mark.parametrize(
    ("service", "credentials", "message"),
    [
        ("ingest", ":wrong-password@", "refused the user or password in the URL"),
        ("aggregator", "", "requires a user and password and the URL has none"),
        ("dashboard", "nobody:wrong-password@", "refused the user or password in the URL"),
    ],
)
def test_wrong_or_missing_credentials_stop_start_up_with_one_line_and_status_2(
    password_redis: RedisServer, tmp_path: Path, service: str, credentials: str, message: str
) -> None:
    url = f"redis://{credentials}127.0.0.1:{password_redis.port}/0"
    env = service_env(UNISTREAM_REDIS_URL=url, UNISTREAM_HTTP_PORT=str(free_port()))
    result = subprocess.run(unistream(service), env=env, capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_BAD_CONFIG, output
    assert message in output and "fix UNISTREAM_REDIS_URL" in output
    assert f"127.0.0.1:{password_redis.port}/0" in output, "it says which Redis"
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if message in line]) == 1
    assert "wrong-password" not in output


# --------------------------------------------------------------------------- the compose file's ACL users


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", extra_args=compose_acl_args())
    try:
        yield server
    finally:
        server.stop()


def admin_client(server: RedisServer) -> redis.Redis:
    """The default user with its password: compose's administrator login."""
    return redis.Redis(host="127.0.0.1", port=server.port, password=SECRETS["UNISTREAM_REDIS_PASSWORD_ADMIN"])


@needs_redis_7
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_what_services_commit_in_transactions_survives_a_redis_restart(tmp_path: Path, stop: str) -> None:
    # Redis replays its append-only file as the default user, and re-checks each MULTI/EXEC's
    # commands against that user's rules (redis/redis#14541): with a default user that may only
    # PING, every transaction was dropped at a restart while plain writes came back, so the
    # aggregator's bars, checkpoints and acknowledgements vanished and the ticks stayed.
    # Compose's `everysec` may postpone a write(2) while the last fsync runs (a busy disk), so a
    # SIGKILL can lose the last second of either kind of write: documented durability, not the
    # question here. `always` (the last argument wins) writes every reply's commands first.
    arguments = [*redis_arguments(COMPOSE, SECRETS), "--appendfsync", "always"]
    server = start_redis(tmp_path / "redis", appendonly=True, extra_args=arguments)
    aggregator = redis.Redis.from_url(compose_url("aggregator", server.port))
    aggregator.xadd(keys.ticks("ETHUSDT"), {"tick": "1"})
    with aggregator.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.bars("ETHUSDT", "1s"), {"bar": "1"}, id="1000-0")
        pipe.set(keys.agg_state("ETHUSDT"), b"checkpoint")
        pipe.execute()
    aggregator.close()
    if stop == "SIGKILL":
        server.kill()
    else:
        server.stop()
    server = start_redis(tmp_path / "redis", port=server.port, appendonly=True, extra_args=arguments)
    try:
        admin = admin_client(server)
        assert admin.xlen(keys.ticks("ETHUSDT")) == 1
        assert admin.xlen(keys.bars("ETHUSDT", "1s")) == 1, "the transaction's stream entry was lost"
        assert admin.get(keys.agg_state("ETHUSDT")) == b"checkpoint", "the transaction's key was lost"
        assert "AOF-loading-client" not in (tmp_path / "redis" / "redis.log").read_text()
        admin.close()
    finally:
        server.stop()


@needs_redis_7
def test_without_a_login_redis_answers_nothing_and_the_admin_login_may_do_everything(acl_redis: RedisServer) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=acl_redis.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    admin = admin_client(acl_redis)
    assert admin.acl_whoami() == "default"
    assert admin.config_get("appendonly")  # a @dangerous command: operators' maintenance
    admin.close()
    anonymous.close()


@needs_redis_7
def test_the_pipeline_runs_end_to_end_with_each_service_as_its_compose_acl_user(
    acl_redis: RedisServer, tmp_path: Path
) -> None:
    admin = admin_client(acl_redis)
    admin.acl_log_reset()
    ports = {name: free_port() for name in ("ingest", "aggregator", "features", "trainer")}
    specs = {
        name: (
            unistream(name, *(["--source", "synthetic"] if name == "ingest" else [])),
            service_env(
                UNISTREAM_REDIS_URL=compose_url(name, acl_redis.port),
                UNISTREAM_HTTP_PORT=str(port),
                UNISTREAM_CONSUMER_NAME=f"{name}-acl",
                UNISTREAM_MODEL_DIR=str(tmp_path / "models"),
                UNISTREAM_MERGE_EVERY_S="2",
                UNISTREAM_METRICS_EVERY_S="1",
            ),
        )
        for name, port in ports.items()
    }
    with processes(specs, tmp_path) as procs:
        deadline = time.monotonic() + 90
        # bars (aggregator), training packets (features), metrics and a merged model published to
        # the registry (trainer), which features then loads (it reads the registry)
        while True:
            lengths = {
                stream: admin.xlen(stream)
                for stream in (keys.bars("ETHUSDT", "1s"), keys.training("ETHUSDT"), keys.METRICS, keys.MODELS)
            }
            loaded = "loaded CNN" in (tmp_path / "features.log").read_text()
            if all(lengths.values()) and loaded:
                break
            denied = admin.acl_log()
            assert denied == [], f"Redis refused commands: {denied}"
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"pipeline incomplete after 90 s: {lengths}, CNN loaded: {loaded}"
            time.sleep(0.5)
        members = {m.decode() for m in admin.zrange(keys.SERVICES, 0, -1)}
        assert {f"{name}/{name}-acl" for name in ports} <= members, "every heartbeat was written"
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            assert proc.wait(timeout=20) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    assert admin.acl_log() == []
    admin.close()
    for name in ports:
        text = (tmp_path / f"{name}.log").read_text()
        assert f"redis://{name}:***@127.0.0.1:{acl_redis.port}/0" in text
        assert "Traceback" not in text, text[-3000:]
        assert_no_secret(text)


@needs_redis_7
def test_the_dashboard_user_reads_everything_writes_only_its_heartbeat_and_may_run_status(
    acl_redis: RedisServer,
) -> None:
    from unistream_dashboard import data  # Streamlit: imported here, not for the whole module

    admin = admin_client(acl_redis)
    admin.xadd(keys.ticks("ETHUSDT"), {"x": "1"})
    url = compose_url("dashboard", acl_redis.port)
    client = redis.Redis.from_url(url)
    assert client.xlen(keys.ticks("ETHUSDT")) == 1
    assert client.xrange(keys.ticks("ETHUSDT"))
    # the dashboard's own heartbeat, the one thing it writes
    data.beat_once(client, "acl", {"service": "dashboard"})
    assert admin.hget(keys.heartbeat("dashboard", "acl"), "service") == b"dashboard"
    for write in (
        lambda: client.xadd(keys.ticks("ETHUSDT"), {"x": "2"}),
        lambda: client.delete(keys.ticks("ETHUSDT")),
        lambda: client.flushall(),
        lambda: client.config_get("*"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()
    assert admin.xlen(keys.ticks("ETHUSDT")) == 1
    # `unistream status` from the dashboard's container (INFO, XINFO)
    result = subprocess.run(
        [*unistream("status"), "--redis-url", url, "--json"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["redis_version"].startswith("7")
    assert_no_secret(result.stdout + result.stderr)
    client.close()
    admin.close()


@needs_redis_7
def test_a_service_user_cannot_touch_another_service_s_keys_or_run_dangerous_commands(
    acl_redis: RedisServer,
) -> None:
    ingest = redis.Redis.from_url(compose_url("ingest", acl_redis.port))
    trainer = redis.Redis.from_url(compose_url("trainer", acl_redis.port))
    assert ingest.xadd(keys.ticks("ETHUSDT"), {"x": "1"})
    for refused in (
        lambda: ingest.xadd(keys.bars("ETHUSDT", "1s"), {"x": "1"}),  # the aggregator's
        lambda: ingest.get(keys.registry("dqn", "v1")),  # model weights
        lambda: trainer.xadd(keys.ticks("ETHUSDT"), {"x": "1"}),
        lambda: trainer.keys("*"),
        lambda: ingest.flushdb(),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
    ingest.close()
    trainer.close()
