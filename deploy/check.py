"""``make compose-check``: the Docker Compose stack built and run in a real engine, checked the way a user looks at it.

    .venv/bin/python deploy/check.py [--no-cache] [--keep] [--trainers 3] [--cluster]

Under its own project name (``unistream-check``), an env file of its own (fresh random passwords,
synthetic market data, a free host port for the dashboard), it:

1. builds the five images (``--no-cache``: from scratch) and reads their sizes;
2. starts the stack with N trainer replicas and two features replicas and waits until every
   container is healthy;
3. logs in to Redis as every ACL user of the compose file, and as nobody (refused);
4. sees ticks, 1s bars and training packets grow and a model merged from all N trainers,
   read with ``unistream status`` and ``tail`` inside the dashboard container (its read-only user;
   the check copies the tools in, no image carries them);
5. finds exactly N consumers in group ``trainer``, named trainer-1..N, and the two features
   replicas writing one symbol's training packets each (their leases);
6. opens the dashboard in Chromium through the published port: the Training Data Stream panel;
7. SIGKILLs the aggregator's and Redis's processes (a crash, not ``docker kill``, which Docker
   counts as a deliberate stop and never restarts): both come back healthy, and from the start on
   the 1s bars have no hole, the ticks no missing trade id, and the bars hold every tick;
8. ``down`` and ``up`` again with the volumes kept: every group holds only the live replicas
   (no stale consumers), and the stack is healthy again;
9. ``down -v``: no container, volume or network of the project is left.

``--cluster`` runs the same on the cluster overlay (deploy/docker-compose.cluster.yml: six Redis
nodes formed into three masters with a replica each): step 3 logs in on every node, a step checks
the cluster's shape and that its nodes announce their compose hostnames, the Redis crash of step 7
is a master's (restarted at once, within the node timeout: it stays the master), and a step kills
that master and keeps it down until its replica is promoted, then starts it again (a replica now).

One summary table at the end; exit status 1 if any check failed, 0 when all passed. Without a
Docker engine it prints one line saying so and exits 0. Needs Docker Engine >= 25 and Compose
>= 2.20 (the compose file's healthchecks use start_interval); an older one fails with that message.
On this project's development machines, ../shared/tools/docker-local/setup.sh starts an engine;
pass its wheel index as UNISTREAM_TORCH_INDEX_URL.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "deploy" / "docker-compose.yml"
CLUSTER_FILE = REPO / "deploy" / "docker-compose.cluster.yml"
CLUSTER_NODES = ("redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6")
CLUSTER_INIT = "redis-cluster-init"  # the overlay's one-shot service: exits 0 once the cluster is formed
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
PROJECT = "unistream-check"
SERVICES = ("ingest", "aggregator", "features", "trainer", "dashboard")
SYMBOLS = ("ETHUSDT", "BTCUSDT")
MIN_ENGINE = (25, 0)
MIN_COMPOSE = (2, 20)
UP_TIMEOUT_S = 240
FEATURES = 2  # features replicas: each writes one symbol's training packets (its lease)
TOOLS_IN_CONTAINER = "/tmp/unistream_tools"  # where Stack.cli copies the tools' package

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))


class CheckFailed(AssertionError):
    """A check that did not hold; the message says what was seen."""


@dataclass
class Row:
    check: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[dict[str, str]]:
        """Time a check; the body puts its measurement in ``out["detail"]``; a failure is recorded, not raised."""
        out = {"detail": ""}
        started = time.monotonic()
        print(f"[compose-check] {name} ...", flush=True)
        try:
            yield out
        except Exception as exc:  # noqa: BLE001 - whatever stops a check is its row's failure, not the run's
            if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
                detail = exc.stderr
            else:
                detail = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
            self.rows.append(Row(name, False, " ".join(str(detail).split())[:300], time.monotonic() - started))
            print(f"[compose-check] FAILED {name}: {detail}", flush=True)
            return
        self.rows.append(Row(name, True, out["detail"], time.monotonic() - started))

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def table(self) -> str:
        lines = ["| check | result | measured | s |", "|---|---|---|---:|"]
        for row in self.rows:
            lines.append(f"| {row.check} | {'ok' if row.ok else 'FAILED'} | {row.detail} | {row.seconds:.1f} |")
        return "\n".join(lines)


# --------------------------------------------------------------------------- docker


def version_tuple(text: str) -> tuple[int, int]:
    """(major, minor) of a version string such as ``26.1.5+dfsg1``, ``v2.26.1`` or ``2.26.1-4``."""
    m = re.search(r"(\d+)\.(\d+)", text)
    if not m:
        raise ValueError(f"no version in {text!r}")
    return int(m.group(1)), int(m.group(2))


def engine_problem() -> tuple[str, str] | None:
    """("skip" or "fail", why) when the engine cannot run the check; None when it can."""
    if shutil.which("docker") is None:
        return "skip", "no docker command on PATH"
    info = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if info.returncode != 0:
        return "skip", f"no Docker engine answers ({' '.join(info.stderr.split())[:200]})"
    engine = version_tuple(info.stdout)
    compose = subprocess.run(
        ["docker", "compose", "version", "--short"], capture_output=True, text=True, timeout=30, check=False
    )
    if compose.returncode != 0:
        return "fail", "the engine answers but `docker compose` is missing: install the Compose plugin (>= 2.20)"
    if engine < MIN_ENGINE:
        return "fail", f"Docker Engine {info.stdout.strip()} is older than {MIN_ENGINE[0]}: the healthchecks need it"
    if version_tuple(compose.stdout) < MIN_COMPOSE:
        return "fail", f"Docker Compose {compose.stdout.strip()} is older than {'.'.join(map(str, MIN_COMPOSE))}"
    return None


@dataclass
class Stack:
    """The compose project under test."""

    env_file: Path
    env: dict[str, str]
    port: int
    cluster: bool = False  # with the Redis Cluster overlay

    @property
    def redis_nodes(self) -> tuple[str, ...]:
        return CLUSTER_NODES if self.cluster else ("redis",)

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [COMPOSE_FILE, CLUSTER_FILE] if self.cluster else [COMPOSE_FILE]
        cmd = ["docker", "compose", *(f for path in files for f in ("-f", str(path))),
               "--env-file", str(self.env_file), "-p", PROJECT, *args]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, env=self.env)

    def cli(self, *args: str) -> str:
        """``unistream ARGS`` in the dashboard container (read-only Redis user): its stdout.

        No image carries the operator tools, and Redis has no host port: the tools' source is copied
        into the running container first (again each time: ``down``/``up`` replaces the container).
        ``tail`` and ``status`` need only the library, which the dashboard image has.
        """
        # SRC/. copies the directory's contents, creating the target the first time, overwriting after
        self.compose("cp", f"{REPO / 'tools' / 'unistream_tools'}/.", f"dashboard:{TOOLS_IN_CONTAINER}", timeout=60)
        pythonpath = f"PYTHONPATH={Path(TOOLS_IN_CONTAINER).parent}"
        command = ["python", "-m", "unistream_tools.cli", *args]
        return self.compose("exec", "-T", "-e", pythonpath, "dashboard", *command, timeout=60).stdout

    def containers(self) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [row for sub in rows for row in (sub if isinstance(sub, list) else [sub])]

    def container(self, service: str, number: int = 1) -> str:
        return f"{PROJECT}-{service}-{number}"

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json"))

    def tail(self, stream: str, count: int) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.cli("tail", stream, "--json", "--count", str(count)).splitlines()]


def docker_inspect(container: str, template: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", template, container], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def wait(predicate: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.5) -> float:
    """Seconds until ``predicate()`` held; CheckFailed naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError, KeyError):
            if predicate():
                return time.monotonic() - started
        time.sleep(step_s)
    raise CheckFailed(f"{what}: not within {timeout_s:.0f} s")


def make_env_file(directory: Path, port: int, environ: dict[str, str]) -> Path:
    """deploy/.env.example rendered with fresh secrets (scripts/make-env.py), plus the check's settings."""
    spec = importlib.util.spec_from_file_location("make_env", REPO / "scripts" / "make-env.py")
    assert spec and spec.loader
    make_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_env)
    text = make_env.render(ENV_EXAMPLE.read_text())
    settings = {
        "COMPOSE_PROFILES": "auto",
        "UNISTREAM_SOURCE": "synthetic",  # no venue from here; also the same ticks every run
        "UNISTREAM_PUBLISH_PORT": str(port),
        "UNISTREAM_TORCH_INDEX_URL": environ.get("UNISTREAM_TORCH_INDEX_URL", ""),
    }
    lines = [line for line in text.splitlines() if line.split("=", 1)[0] not in settings]
    lines += [f"{key}={value}" for key, value in settings.items() if value]
    path = directory / "check.env"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def env_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


# --------------------------------------------------------------------------- checks


def build(stack: Stack, no_cache: bool, out: dict[str, str]) -> None:
    stack.compose("build", *(["--no-cache"] if no_cache else []), timeout=1800)
    sizes = []
    for service in SERVICES:
        size = int(docker_inspect(f"{PROJECT}-{service}", "{{.Size}}"))
        sizes.append(f"{service} {size / 1e6:.0f} MB")
    out["detail"] = ("cold: " if no_cache else "") + ", ".join(sizes)


def up(stack: Stack, trainers: int, out: dict[str, str]) -> None:
    started = time.monotonic()
    stack.compose(
        "up", "--detach", "--scale", f"trainer={trainers}", "--scale", f"features={FEATURES}",
        "--wait", "--wait-timeout", str(UP_TIMEOUT_S),
        timeout=UP_TIMEOUT_S + 60,
    )  # fmt: skip
    healthy_s = time.monotonic() - started
    rows = stack.containers()
    formed = [r for r in rows if r["Service"] == CLUSTER_INIT]  # done: exited 0
    if any(r.get("State") != "exited" or r.get("ExitCode") != 0 for r in formed):
        raise CheckFailed(f"{CLUSTER_INIT} did not form the cluster: {formed}")
    rows = [r for r in rows if r["Service"] != CLUSTER_INIT]
    unhealthy = [f"{r['Name']}: {r.get('State')}/{r.get('Health') or 'no healthcheck'}" for r in rows
                 if r.get("State") != "running" or r.get("Health") != "healthy"]  # fmt: skip
    if unhealthy:
        raise CheckFailed("not healthy: " + "; ".join(unhealthy))
    count = sum(1 for r in rows if r["Service"] == "trainer")
    if count != trainers:
        raise CheckFailed(f"{count} trainer containers, expected {trainers}")
    out["detail"] = f"{len(rows)} containers healthy {healthy_s:.1f} s after `up`"


def acl_users(stack: Stack, out: dict[str, str]) -> None:
    """Every ACL user of the compose file logs in with its password; without a login, nothing answers
    (on every node of a cluster)."""
    secrets = env_values(stack.env_file)
    users = ("default", *SERVICES)
    for node in stack.redis_nodes:
        for user in users:
            password = secrets[f"UNISTREAM_REDIS_PASSWORD_{'ADMIN' if user == 'default' else user.upper()}"]
            who = stack.compose(
                "exec", "-T", node, "redis-cli", "--no-auth-warning", "--user", user, "--pass", password,
                "ACL", "WHOAMI",
            ).stdout.strip()  # fmt: skip
            if who != user:
                raise CheckFailed(f"{node}: logging in as {user} gave {who!r}")
        # the container's REDISCLI_AUTH (the healthcheck's login) left out: a client without one
        anonymous = stack.compose("exec", "-T", node, "env", "-u", "REDISCLI_AUTH", "redis-cli", "PING", check=False)
        if "NOAUTH" not in anonymous.stdout + anonymous.stderr:
            raise CheckFailed(f"{node}: a client without a login got {anonymous.stdout.strip()!r}")
    where = f" on each of {len(stack.redis_nodes)} nodes" if stack.cluster else ""
    out["detail"] = f"{len(users)} users log in ({', '.join(users)}){where}; without a login: NOAUTH"


def cluster_shape(stack: Stack, out: dict[str, str]) -> None:
    """Three masters serving all 16,384 slots, a replica each, every node announcing its hostname."""
    nodes = stack.compose("exec", "-T", "redis", "redis-cli", "cluster", "nodes").stdout
    masters = [line for line in nodes.splitlines() if " master " in f" {line.split()[2].replace(',', ' ')} "]
    replicas = [line for line in nodes.splitlines() if "slave" in line.split()[2]]
    slots = 0
    for line in masters:
        for part in line.split()[8:]:
            lo, _, hi = part.partition("-")
            slots += int(hi or lo) - int(lo) + 1
    # CLUSTER NODES: <id> <ip:port@bus,hostname> <flags> ...
    hostnames = sorted(line.split()[1].partition(",")[2] for line in nodes.splitlines())
    if len(masters) != 3 or len(replicas) != 3 or slots != 16_384 or hostnames != sorted(CLUSTER_NODES):
        raise CheckFailed(f"{len(masters)} masters, {len(replicas)} replicas, {slots} slots, hostnames {hostnames}")
    endpoints = stack.compose("exec", "-T", "redis", "redis-cli", "cluster", "slots").stdout.split()
    announced = sorted({e for e in endpoints if e in CLUSTER_NODES})
    if announced != sorted(CLUSTER_NODES):
        raise CheckFailed(f"CLUSTER SLOTS names {announced}, not every node's hostname")
    out["detail"] = (
        f"3 masters with a replica each, {slots:,} slots; CLUSTER SLOTS answers hostnames {', '.join(announced)}"
    )


def last_ids(status: dict[str, Any]) -> dict[str, str]:
    """Each stream's newest entry id ("" for an empty or missing stream)."""
    return {s["name"]: (s.get("last_id") or "") if s.get("exists") else "" for s in status["streams"]}


def entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0]) if entry_id else 0


def flowing(stack: Stack, trainers: int, out: dict[str, str]) -> None:
    watched = [
        *(f"md:ticks:{{{s}}}" for s in SYMBOLS),
        *(f"md:bars:{{{s}}}:1s" for s in SYMBOLS),
        *(f"ml:training:{{{s}}}" for s in SYMBOLS),
    ]
    first = {name: entry_ms(last) for name, last in last_ids(stack.status()).items()}
    latest: dict[str, int] = {}

    def all_moved() -> bool:
        latest.update({name: entry_ms(last) for name, last in last_ids(stack.status()).items()})
        return all(latest.get(name, 0) > first.get(name, 0) for name in watched)

    wait(all_moved, 60, f"new entries on every one of {', '.join(watched)}")
    merged: list[dict[str, Any]] = []

    def merged_model() -> bool:
        anns = stack.tail("ml:models", 50)
        merged[:] = [a for a in anns if a.get("name") == "dqn" and a["metrics"].get("merge/members") == trainers]
        return bool(merged)

    waited = wait(merged_model, 150, f"a DQN merged from {trainers} trainers on ml:models", step_s=2)
    out["detail"] = (
        "new entries on " + ", ".join(watched) + f"; {merged[-1]['version']} merged from {trainers} ({waited:.0f} s)"
    )


def features_writers(stack: Stack, out: dict[str, str]) -> None:
    """Each features replica holds one symbol's lease (writes its training packets)."""
    held: dict[str, str] = {}

    def split() -> bool:
        for symbol in SYMBOLS:  # -c: redis-cli follows the cluster's redirections
            value = stack.compose("exec", "-T", "redis", "redis-cli", "-c", "get", f"ml:training:{{{symbol}}}:owner")
            held[symbol] = value.stdout.strip().rpartition(":")[0]
        return sorted(held.values()) == [f"features-{i}" for i in range(1, FEATURES + 1)]

    with contextlib.suppress(CheckFailed):
        wait(split, 60, "one symbol per features replica")
    if not split():
        raise CheckFailed(f"the training packets' writers are {held}, expected one symbol per features replica")
    out["detail"] = ", ".join(f"{symbol} by {who}" for symbol, who in held.items())


def consumers_of(status: dict[str, Any], stream: str, group: str) -> list[str]:
    return sorted(c["name"] for c in status["consumers"] if c["stream"] == stream and c["group"] == group)


def trainer_consumers(stack: Stack, trainers: int, out: dict[str, str]) -> None:
    expected = [f"trainer-{i}" for i in range(1, trainers + 1)]
    found: dict[str, list[str]] = {}

    def exact() -> bool:
        status = stack.status()
        found.update({s: consumers_of(status, f"ml:training:{{{s}}}", "trainer") for s in SYMBOLS})
        return all(names == expected for names in found.values())

    with contextlib.suppress(CheckFailed):
        wait(exact, 30, "trainer consumers")
    if not all(names == expected for names in found.values()):
        raise CheckFailed(f"group trainer on the training streams has {found}, expected {expected} on each")
    out["detail"] = ", ".join(expected) + " on each symbol's training stream"


def no_stale_consumers(stack: Stack, trainers: int, out: dict[str, str]) -> None:
    status = stack.status()
    stale = []
    groups = 0
    for g in status["groups"]:
        groups += 1
        count = trainers if g["name"] == "trainer" else 1
        expected = [f"{g['name']}-{i}" for i in range(1, count + 1)]
        if g["name"].startswith("features:"):  # a features replica's own group: that replica alone
            expected = [g["name"].partition(":")[2]]
        names = consumers_of(status, g["stream"], g["name"])
        if names != expected:
            stale.append(f"{g['stream']}/{g['name']}: {names}")
    if stale:
        raise CheckFailed("groups with consumers other than the live replicas: " + "; ".join(stale))
    out["detail"] = f"{groups} groups, each with only its live replicas (trainer-1..{trainers})"


def dashboard(stack: Stack, out: dict[str, str]) -> None:
    from browser import CHROMIUM, chromium, open_app, wait_for_text

    if not Path(CHROMIUM).exists():
        raise CheckFailed(f"{CHROMIUM} is not installed (make system installs it as root)")
    url = f"http://127.0.0.1:{stack.port}"
    with chromium() as browser, open_app(browser, url, timeout_s=60) as page:
        wait_for_text(page, '[data-testid="stApp"]', r"Training Data Stream", 60)
        seen = []
        for symbol in SYMBOLS:
            card = f".st-key-tds-{symbol}"
            ticks = wait_for_text(page, card, r"Tick cache: [\d,]+ / [\d,]+ \(total ([\d,]+)\)", 60,
                                  accept=lambda m: int(m.group(1).replace(",", "")) > 0)  # fmt: skip
            wait_for_text(page, card, r"Stream: LIVE", 30)
            seen.append(f"{symbol} {ticks.group(1)} ticks")
    out["detail"] = f"{url}: Training Data Stream, LIVE, " + ", ".join(seen)


def crash(container: str) -> int:
    """SIGKILL the container's first process from the host (as the OOM killer would); its restart count."""
    restarts = int(docker_inspect(container, "{{.RestartCount}}"))
    pid = int(docker_inspect(container, "{{.State.Pid}}"))
    if pid <= 0:
        raise CheckFailed(f"{container} has no process to kill")
    os.kill(pid, signal.SIGKILL)
    return restarts


def node_role(stack: Stack, node: str) -> str:
    """``master`` or ``slave``, as the cluster node ``node`` says of itself (ROLE)."""
    return stack.compose("exec", "-T", node, "redis-cli", "role").stdout.split()[0]


def crash_and_recover(stack: Stack, service: str, out: dict[str, str]) -> None:
    container = stack.container(service)
    role = node_role(stack, service) if stack.cluster and service == "redis" else None
    restarts = crash(container)
    back_s = wait(
        lambda: (
            int(docker_inspect(container, "{{.RestartCount}}")) > restarts
            and docker_inspect(container, "{{.State.Health.Status}}") == "healthy"
        ),
        120,
        f"{container} restarted and healthy",
    )
    bars = [f"md:bars:{{{symbol}}}:1s" for symbol in SYMBOLS]
    before = last_ids(stack.status())
    wait(lambda: all(entry_ms(last_ids(stack.status())[b]) > entry_ms(before[b]) for b in bars), 60, "1s bars again")
    out["detail"] = f"SIGKILLed; restarted and healthy in {back_s:.1f} s; bars flowing"
    if role is not None:  # a master back within the node timeout stays one; later, its replica took over
        out["detail"] += f"; the node was {role}, is {node_role(stack, service)} now"


def master_failover(stack: Stack, out: dict[str, str]) -> None:
    """The cluster's ``redis`` node, a master, killed and kept down (``docker kill``: not
    restarted) past the node timeout: its replica is promoted and the system goes on; started
    again, the node rejoins as a replica."""
    if node_role(stack, "redis") != "master":
        raise CheckFailed("the redis node is not a master: nothing to fail over")
    bars = [f"md:bars:{{{symbol}}}:1s" for symbol in SYMBOLS]
    before = last_ids(stack.status())
    node_id = stack.compose("exec", "-T", "redis", "redis-cli", "cluster", "myid").stdout.strip()

    def failed_over() -> bool:  # as redis-2 sees it: the node marked failed, every slot served again
        seen = stack.compose("exec", "-T", "redis-2", "redis-cli", "cluster", "nodes").stdout
        flags = next((line.split()[2] for line in seen.splitlines() if line.startswith(node_id)), "")
        info = stack.compose("exec", "-T", "redis-2", "redis-cli", "cluster", "info").stdout
        return "fail" in flags.split(",") and "cluster_state:ok" in info

    started = time.monotonic()
    stack.compose("kill", "-s", "SIGKILL", "redis")
    failover_s = wait(failed_over, 60, "the redis node's replica promoted", step_s=0.2)
    wait(lambda: all(entry_ms(last_ids(stack.status())[b]) > entry_ms(before[b]) for b in bars), 60, "1s bars again")
    flowing_s = time.monotonic() - started
    stack.compose("start", "redis")
    wait(lambda: docker_inspect(stack.container("redis"), "{{.State.Health.Status}}") == "healthy", 60, "redis back")
    role = node_role(stack, "redis")
    if role != "slave":
        raise CheckFailed(f"the redis node came back as {role}, not as its promoted replica's replica")
    out["detail"] = (
        f"killed and kept down: its replica promoted (cluster ok) after {failover_s:.1f} s, 1s bars on both symbols "
        f"after {flowing_s:.1f} s; started again, the node is a replica"
    )


def nothing_lost(stack: Stack, since_ms: int, out: dict[str, str]) -> None:
    """From ``since_ms`` on, per symbol: 1s bars without a hole, ticks without a missing trade id,
    and every tick counted in exactly one bar (the bars' trade counts add up to the ticks)."""
    start_ms = -(-since_ms // 1000) * 1000  # the first whole second
    details = []
    for symbol in SYMBOLS:
        bars = [b for b in stack.tail(f"md:bars:{{{symbol}}}:1s", 5_000) if b["open_time_ms"] >= start_ms]
        opens = [b["open_time_ms"] for b in bars]
        holes = [(a, b) for a, b in itertools.pairwise(opens) if b - a != 1000]
        if len(bars) < 10 or holes:
            raise CheckFailed(f"{symbol}: {len(bars)} 1s bars since the start, holes between {holes[:5]}")
        end_ms = opens[-1] + 1000
        ticks = [
            t["trade_id"]
            for t in stack.tail(f"md:ticks:{{{symbol}}}", 100_000)
            if start_ms <= t.get("ts_event_ms", 0) < end_ms
        ]
        missing = [(a, b) for a, b in itertools.pairwise(ticks) if b != a + 1]
        if not ticks or missing:
            raise CheckFailed(f"{symbol}: {len(ticks)} ticks, trade ids missing between {missing[:5]}")
        in_bars = sum(b["trade_count"] for b in bars)
        incomplete = sum(1 for b in bars if b.get("incomplete"))
        if in_bars != len(ticks) or incomplete:
            raise CheckFailed(f"{symbol}: {len(ticks)} ticks but {in_bars} in the bars ({incomplete} incomplete)")
        details.append(f"{symbol}: {len(bars)} bars in a row holding all {len(ticks)} ticks")
    out["detail"] = "; ".join(details)


def down_up(stack: Stack, trainers: int, out: dict[str, str]) -> None:
    stack.compose("down", timeout=180)
    up(stack, trainers, out)
    out["detail"] = "down (volumes kept), then " + out["detail"]


def down_leaves_nothing(stack: Stack, out: dict[str, str]) -> None:
    stack.compose("down", "--volumes", "--remove-orphans", timeout=180)
    label = f"label=com.docker.compose.project={PROJECT}"
    left = []
    for kind in (["ps", "--all"], ["volume", "ls"], ["network", "ls"]):
        ids = subprocess.run(
            ["docker", *kind, "--quiet", "--filter", label], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
        if ids:
            left.append(f"{kind[0]}: {len(ids)}")
    if left:
        raise CheckFailed("left behind: " + ", ".join(left))
    out["detail"] = "no container, volume or network of the project left"


# --------------------------------------------------------------------------- main


def free_port() -> int:
    from unistream_tools.redis_server import free_port as pick

    return pick()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compose-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-cache", action="store_true", help="build the images from scratch (a cold build)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running at the end (no down -v)")
    parser.add_argument("--trainers", type=int, default=3, help="trainer replicas (default 3)")
    parser.add_argument("--cluster", action="store_true", help="on the Redis Cluster overlay (six nodes)")
    parser.add_argument(
        "--engine-only", action="store_true",
        help=f"only check that an engine answers and is new enough (Engine >= {MIN_ENGINE[0]}, "
        f"Compose >= {MIN_COMPOSE[0]}.{MIN_COMPOSE[1]}); `make up` runs this first",
    )  # fmt: skip
    args = parser.parse_args(argv)

    problem = engine_problem()
    if args.engine_only:
        if problem is not None:
            print(f"unistream needs Docker Engine >= {MIN_ENGINE[0]} with Compose >= {MIN_COMPOSE[0]}.{MIN_COMPOSE[1]}: "
                  f"{problem[1]}", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if problem is not None:
        kind, why = problem
        print(f"compose-check: {'skipped' if kind == 'skip' else 'FAILED'}: {why}", flush=True)
        return 0 if kind == "skip" else 1

    report = Report()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compose-check-") as tmp:
        port = free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("UNISTREAM_", "COMPOSE_"))}
        stack = Stack(make_env_file(Path(tmp), port, dict(os.environ)), environ, port, cluster=args.cluster)
        stack.compose("down", "--volumes", "--remove-orphans", timeout=180)  # whatever an aborted run left
        try:
            with report.check("build images") as out:
                build(stack, args.no_cache, out)
            with report.check(f"up, trainer x{args.trainers}, all healthy") as out:
                up(stack, args.trainers, out)
            if report.ok:
                since_ms = int(time.time() * 1000) + 2_000
                with report.check("Redis ACL users") as out:
                    acl_users(stack, out)
                if stack.cluster:
                    with report.check("Redis Cluster: shape, hostnames announced") as out:
                        cluster_shape(stack, out)
                with report.check("ticks, 1s bars, training packets, merged models") as out:
                    flowing(stack, args.trainers, out)
                with report.check(f"group trainer: {args.trainers} consumers") as out:
                    trainer_consumers(stack, args.trainers, out)
                with report.check(f"features x{FEATURES}: a symbol's packets each") as out:
                    features_writers(stack, out)
                with report.check("dashboard in Chromium") as out:
                    dashboard(stack, out)
                with report.check("aggregator crash (SIGKILL)") as out:
                    crash_and_recover(stack, "aggregator", out)
                with report.check("Redis master crash (SIGKILL)" if stack.cluster else "Redis crash (SIGKILL)") as out:
                    crash_and_recover(stack, "redis", out)
                if stack.cluster:
                    with report.check("Redis master failover (killed, kept down)") as out:
                        master_failover(stack, out)
                with report.check("no bar or tick lost") as out:
                    nothing_lost(stack, since_ms, out)
                with report.check("down, up (volumes kept), all healthy") as out:
                    down_up(stack, args.trainers, out)
                with report.check("no stale consumers after down/up") as out:
                    no_stale_consumers(stack, args.trainers, out)
        finally:
            if args.keep:
                print(f"[compose-check] left running: docker compose -p {PROJECT} ... (port {port})", flush=True)
            else:
                with report.check("down -v leaves nothing") as out:
                    down_leaves_nothing(stack, out)
    print()
    print(report.table())
    verdict = "passed" if report.ok else "FAILED"
    print(f"\ncompose-check {verdict} in {time.monotonic() - started:.0f} s", flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
