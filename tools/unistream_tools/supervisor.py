"""``unistream run``: the whole system on this machine, planned from deploy/docker-compose.yml.

Two halves:

- the plan (pure): :func:`build_plan` turns the compose dict, an environment and the options
  into one :class:`ProcessSpec` per process. Each service's ``command`` and ``environment`` come
  from the compose file, so a local run and the containers cannot drift; the only differences
  are :data:`LOCAL_OVERRIDES`;
- the processes: :class:`Supervisor` starts the plan, prefixes and logs every output line,
  announces the system once compose's healthchecks pass, restarts a process that exits as its
  compose ``restart`` policy says (with capped backoff; never one that exits with status 2, bad
  configuration, which a restart cannot fix), and on SIGINT/SIGTERM stops everything (SIGTERM
  to each process group, SIGKILL after a grace period), Redis last.

Profiles: a compose service with ``profiles`` runs only when one of them is active, as in compose
(``--profile``, else ``COMPOSE_PROFILES``, else the compose file's ``x-unistream-default-profiles``).

The supervisor is one thread: it multiplexes the children's pipes with ``selectors``. Two things
rely on that: ``preexec_fn`` (forking a process that runs other threads can deadlock the child)
and PR_SET_PDEATHSIG (it fires when the *thread* that forked exits, so every fork happens on the
main thread, which lives as long as the supervisor).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import http.client
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from unistream_common.redisio import access_problem, safe_url
from unistream_common.settings import EXIT_BAD_CONFIG
from unistream_tools import compose as composefile
from unistream_tools.redis_server import (
    RedisCluster,
    RedisNotFound,
    RedisServer,
    find_redis_server,
    free_port,
    port_is_free,
    redis_server_version,
    start_cluster,
    start_redis,
)

# Environment variables whose compose value does not fit a local run, and what replaces it.
# These are the ONLY differences between `unistream run` and `docker compose up`.
LOCAL_OVERRIDES: dict[str, str] = {
    "UNISTREAM_REDIS_URL": "compose's URL (the service's own ACL user and password) aimed at the redis-server started "
    "by run, which gets compose's redis command; $UNISTREAM_REDIS_URL when set, for every service",
    "UNISTREAM_HTTP_HOST": "127.0.0.1: probes stay on this machine",
    "UNISTREAM_HTTP_PORT": "compose's port + --port-offset + 100 x (replica - 1) (only where compose sets a port)",
    "UNISTREAM_MODEL_DIR": "<run dir>/models (only where compose sets a model dir)",
    "UNISTREAM_CONSUMER_NAME": "<service>-<replica>: stable per process slot, so restarts resume pending entries",
}

# Overrides whose compose value is never used, so it is not interpolated either: a variable that
# only feeds them need not exist for a local run. The Redis URL is among them only when the
# services do not log in as compose's ACL users (RunOptions.redis_secrets is None).
_REPLACED_VALUES = frozenset({"UNISTREAM_HTTP_HOST", "UNISTREAM_MODEL_DIR", "UNISTREAM_CONSUMER_NAME"})
_REDIS_URL = "UNISTREAM_REDIS_URL"

# Compose services that `run` starts itself instead of supervising them as services: Redis, with
# the arguments of compose's redis command (its ACL users) and run's own port, address and files.
INFRASTRUCTURE: tuple[str, ...] = ("redis",)
REDIS_SERVICE = "redis"
# redis-server options that run sets itself (start_redis): compose's redis command may not.
_RUN_OWNS = ("--port", "--bind", "--dir", "--daemonize", "--logfile", "--protected-mode")

# The Dockerfile's ENV that matters to a process's behaviour: unbuffered output, so log lines
# reach the supervisor (and compose's log driver) as they are written.
IMAGE_ENV: dict[str, str] = {"PYTHONUNBUFFERED": "1"}

DEFAULT_REDIS_PORT = 6390
ENV_PREFIX = "UNISTREAM_"


class PlanError(ValueError):
    """The options and the compose file do not make a runnable plan; the message says why."""


@dataclass(frozen=True)
class RunOptions:
    """What a local run changes with respect to compose (see :data:`LOCAL_OVERRIDES`)."""

    redis_url: str
    run_dir: Path  # absolute; holds logs/, models/, redis/
    bin_dir: Path  # where our console scripts live (beside sys.executable)
    python: str  # interpreter for commands that start with python/python3
    scale: Mapping[str, int] = field(default_factory=dict)  # replicas per service (compose's default otherwise)
    port_offset: int = 0
    profiles: tuple[str, ...] | None = None  # active compose profiles; None: the compose file's default
    # The values of the variables in compose's redis command (its ACL users' passwords) when run's
    # own Redis has those users: each service then logs in as compose says, its compose URL aimed
    # at ``redis_url``. None: every service uses ``redis_url`` as it is.
    redis_secrets: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ProcessSpec:
    """One process slot: replica number ``replica`` (1, 2, ... as compose numbers them) of ``service``."""

    service: str
    replica: int
    argv: tuple[str, ...]
    environment: Mapping[str, str]  # compose's environment with the local overrides applied
    http_port: int | None
    log_path: Path
    health_url: str | None = None  # compose's healthcheck URL, moved to this replica's local port
    orphan_signal: int = signal.SIGTERM  # PR_SET_PDEATHSIG: sent if the supervisor dies first
    restart: str = "unless-stopped"  # compose's restart policy (composefile.restart_policy)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.replica}"


def parse_scale(items: list[str]) -> dict[str, int]:
    """``["trainer=3"]`` -> ``{"trainer": 3}``; raises PlanError on anything else."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not name or not count.isdigit():
            raise PlanError(f"--scale {item!r}: use SERVICE=N, e.g. --scale trainer=3")
        out[name] = int(count)
    return out


def is_our_script(argv0: str) -> bool:
    """``unistream`` or a service's own ``unistream-<service>``: a console script of our packages."""
    return argv0 == "unistream" or argv0.startswith("unistream-")


def resolve_argv0(argv0: str, options: RunOptions) -> str:
    """The program to run for a compose command's first word.

    ``unistream-<service>`` (what each image runs) and ``unistream`` are the scripts installed
    beside this interpreter (an image has its service's on PATH); ``python``/``python3`` is this
    interpreter, which has the same packages the images have.
    """
    if is_our_script(argv0):
        return str(options.bin_dir / argv0)
    if argv0 in ("python", "python3"):
        return options.python
    return argv0


REPLICA_PORT_STRIDE = 100  # compose's ports are consecutive (8001, 8002, ...): replicas step past them


def replica_port(base_port: int, port_offset: int, replica: int) -> int:
    """Local port of replica ``replica`` (1, 2, ...): the first keeps compose's port (plus the
    offset), each further one :data:`REPLICA_PORT_STRIDE` above the one before (8002, 8102, ...)."""
    return base_port + port_offset + REPLICA_PORT_STRIDE * (replica - 1)


def active_profiles(flags: list[str], environ: Mapping[str, str]) -> tuple[str, ...] | None:
    """The profiles a run enables: ``--profile`` flags, else ``COMPOSE_PROFILES``; None: the compose file's default."""
    if flags:
        return tuple(flags)
    from_env = [name.strip() for name in environ.get("COMPOSE_PROFILES", "").split(",") if name.strip()]
    return tuple(from_env) or None


def _without_replaced_values(svc: Mapping[str, Any], replaced: frozenset[str]) -> dict[str, Any]:
    """``svc`` with the values of ``replaced`` blanked (the keys stay: their presence counts)."""
    out = dict(svc)
    env = svc.get("environment")
    if isinstance(env, Mapping):
        out["environment"] = {k: ("" if k in replaced and v is not None else v) for k, v in env.items()}
    elif isinstance(env, list):
        out["environment"] = [
            f"{item.partition('=')[0]}="
            if isinstance(item, str) and "=" in item and item.partition("=")[0] in replaced
            else item
            for item in env
        ]
    return out


def resolve(
    compose: Mapping[str, Any],
    environ: Mapping[str, str],
    profiles: tuple[str, ...] | None = None,
    redis_secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The services a local run starts, interpolated with ``environ`` as Compose would.

    Left out: :data:`INFRASTRUCTURE` and services whose profiles are not active (``profiles``;
    None: the compose file's default). Values that the local overrides replace are not
    interpolated (see :data:`_REPLACED_VALUES`); with ``redis_secrets`` the Redis URLs are,
    with those values added to ``environ``.
    """
    active = composefile.default_profiles(compose) if profiles is None else list(profiles)
    if redis_secrets is None:
        replaced = _REPLACED_VALUES | {_REDIS_URL}
    else:
        replaced, environ = _REPLACED_VALUES, {**environ, **redis_secrets}
    services: dict[str, Any] = {}
    for name, raw in (compose.get("services") or {}).items():
        if name in INFRASTRUCTURE:
            continue
        svc = composefile.interpolate_tree(_without_replaced_values(raw or {}, replaced), environ)
        if composefile.enabled({"services": {name: svc}}, name, active):
            services[name] = svc
    return {"services": services}


def build_plan(compose: Mapping[str, Any], environ: Mapping[str, str], options: RunOptions) -> list[ProcessSpec]:
    """Every process to start, in dependency order, with its argv and environment.

    ``environ`` interpolates ``${VAR:-default}`` in the compose file, as Compose does with the
    shell environment. Raises PlanError (or ComposeError) when the plan cannot run.
    """
    known = {p for name in compose.get("services") or {} for p in composefile.profiles(compose, name)}
    unknown_profiles = sorted(set(options.profiles or ()) - known - {"*"})
    if unknown_profiles:
        raise PlanError(
            f"no service has profile(s) {', '.join(unknown_profiles)}; profiles: {', '.join(sorted(known)) or '(none)'}"
        )
    resolved = resolve(compose, environ, options.profiles, options.redis_secrets)
    names = list(resolved["services"])
    if not names:
        raise PlanError(f"no service to run with profile(s) {', '.join(options.profiles or ()) or '(none)'}")
    unknown = sorted(set(options.scale) - set(names))
    if unknown:
        raise PlanError(
            f"--scale names unknown service(s) {', '.join(unknown)}; services: {', '.join(names)}"
            " (a service of an inactive profile needs --profile)"
        )
    if options.port_offset < 0:
        raise PlanError("--port-offset must be >= 0")
    plan: list[ProcessSpec] = []
    for name in composefile.start_order(resolved, names):
        argv = composefile.command(resolved, name)
        argv[0] = resolve_argv0(argv[0], options)
        declared = composefile.environment(resolved, name, environ)
        base_port = _port(declared, name)
        health = composefile.healthcheck_url(resolved, name)
        count = options.scale.get(name, composefile.replicas(resolved, name))
        orphan_signal = composefile.orphan_signal(resolved, name)
        restart = composefile.restart_policy(resolved, name)
        for replica in range(1, count + 1):
            env = dict(declared)
            if options.redis_secrets is not None and declared.get(_REDIS_URL):
                env[_REDIS_URL] = retarget_url(declared[_REDIS_URL], options.redis_url)
            else:
                env[_REDIS_URL] = options.redis_url
            env["UNISTREAM_HTTP_HOST"] = "127.0.0.1"
            port = None
            if base_port is not None:
                port = replica_port(base_port, options.port_offset, replica)
                env["UNISTREAM_HTTP_PORT"] = str(port)
            if "UNISTREAM_MODEL_DIR" in declared:
                env["UNISTREAM_MODEL_DIR"] = str(options.run_dir / "models")
            env["UNISTREAM_CONSUMER_NAME"] = f"{name}-{replica}"
            plan.append(
                ProcessSpec(
                    service=name,
                    replica=replica,
                    argv=tuple(argv),
                    environment=env,
                    http_port=port,
                    log_path=options.run_dir / "logs" / f"{name}-{replica}.log",
                    orphan_signal=orphan_signal,
                    restart=restart,
                    health_url=(
                        f"http://127.0.0.1:{replica_port(health[0], options.port_offset, replica)}{health[1]}"
                        if health
                        else None
                    ),
                )
            )
    _check_ports(plan)
    return plan


def retarget_url(url: str, target: str) -> str:
    """Redis ``url`` with the scheme, host and port of ``target``, keeping its user, password and database.

    ``redis://ingest:pw@redis:6379/0`` aimed at ``redis://127.0.0.1:6390/0`` is
    ``redis://ingest:pw@127.0.0.1:6390/0``: compose's login, run's server.
    """
    source, dest = urlsplit(url), urlsplit(target)
    userinfo = source.netloc.rpartition("@")[0] if "@" in source.netloc else ""
    hostinfo = dest.netloc.rpartition("@")[2]
    netloc = f"{userinfo}@{hostinfo}" if userinfo else hostinfo
    return urlunsplit((dest.scheme, netloc, source.path or dest.path, source.query, ""))


def redis_arguments(compose: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    """The arguments of compose's redis command after the program, interpolated with ``environ``.

    ``unistream run`` starts its Redis with them, so its ACL users are compose's. [] when the
    compose file has no redis service or it has no command. Options that run sets itself
    (:data:`_RUN_OWNS`) are refused.
    """
    if REDIS_SERVICE not in (compose.get("services") or {}):
        return []
    svc = composefile.interpolate_tree(composefile.service(compose, REDIS_SERVICE), environ)
    if svc.get("command") is None:
        return []  # the image's own command: a plain server
    args = composefile.command({"services": {REDIS_SERVICE: svc}}, REDIS_SERVICE)[1:]
    owned = sorted({arg for arg in args if arg in _RUN_OWNS})
    if owned:
        raise PlanError(
            f"compose's redis command sets {', '.join(owned)}: unistream run sets those itself; remove them"
        )
    return args


def redis_secrets(compose: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """A value for every variable of compose's redis command: the environment's, else a random one.

    Compose takes them from deploy/.env; a local run needs no such file: passwords it makes up
    live as long as its Redis (the ACL users are arguments, never written to its data).
    """
    names = composefile.variables(((compose.get("services") or {}).get(REDIS_SERVICE) or {}).get("command"))
    return {name: environ.get(name) or secrets.token_hex(24) for name in sorted(names)}


def _port(env: Mapping[str, str], service: str) -> int | None:
    value = env.get("UNISTREAM_HTTP_PORT")
    if value is None:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise PlanError(f"service {service!r}: UNISTREAM_HTTP_PORT={value!r} is not a port number")
    return int(value)


def _check_ports(plan: list[ProcessSpec]) -> None:
    owner: dict[int, str] = {}
    for spec in plan:
        if spec.http_port is None:
            continue
        if spec.http_port > 65535:
            raise PlanError(f"{spec.name} would listen on port {spec.http_port}: lower --port-offset")
        if spec.http_port in owner:
            raise PlanError(
                f"{spec.name} and {owner[spec.http_port]} would both listen on port {spec.http_port}: "
                "replicas of a service take ports 100 apart (8002, 8102, ...); scale less or change the ports in compose"
            )
        owner[spec.http_port] = spec.name


def child_environment(spec: ProcessSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """The full environment of ``spec``'s process.

    The inherited environment (PATH, HOME, ...) plus :data:`IMAGE_ENV` plus the plan's. Inherited
    ``UNISTREAM_*`` variables that the compose service does not declare are dropped: a container
    would not see them either. To pass one, declare it in compose's ``environment``.
    """
    env = {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(IMAGE_ENV)
    env.update(spec.environment)
    return env


# --------------------------------------------------------------------------- processes

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up before any fork (a preexec_fn must do as little as possible)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def make_preexec(parent_pid: int, death_signal: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child its own process group and ties it to ``parent_pid``.

    Own group: a terminal's Ctrl-C reaches only the supervisor, which then stops the children in
    order, and killpg reaches whatever the child starts itself. PR_SET_PDEATHSIG=``death_signal``
    (SIGTERM unless the compose file says otherwise): a SIGKILLed supervisor leaves no children
    behind. If the parent already died between fork and
    prctl, the signal would never come, so the child exits at once.
    """
    prctl = _load_prctl()

    def preexec() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
            if os.getppid() != parent_pid:
                os._exit(1)

    return preexec


@dataclass
class Backoff:
    """Delay before restarting a process that exited, like Docker's restart policy.

    ``initial_s`` doubles with every exit in a row, up to ``max_s``; a process that stayed up for
    ``reset_after_s`` starts the series again.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    reset_after_s: float = 10.0

    def delay(self, exits_in_row: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, exits_in_row - 1))


@dataclass
class _Slot:
    spec: ProcessSpec
    log: IO[bytes]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    exits_in_row: int = 0
    restart_at: float | None = None
    healthy: bool = False
    given_up: bool = False  # exited with EXIT_BAD_CONFIG: not restarted


@dataclass
class _Pipe:
    slot: _Slot
    buffer: bytearray = field(default_factory=bytearray)


class Supervisor:
    """Runs a plan until :meth:`request_stop`, restarting processes that exit."""

    MAX_LINE = 64 * 1024  # a longer run without a newline is emitted as its own line

    def __init__(
        self,
        plan: list[ProcessSpec],
        environ: Mapping[str, str],
        out: IO[bytes],
        state_path: Path | None = None,
        stop_timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        extra_state: Mapping[str, Any] | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.plan = plan
        self.environ = dict(environ)
        self.out = out
        self.state_path = state_path
        self.stop_timeout_s = stop_timeout_s
        self.backoff = backoff or Backoff()
        self.extra_state = dict(extra_state or {})
        self.ready_timeout_s = ready_timeout_s
        self.stop_requests = 0
        self._selector = selectors.DefaultSelector()
        self._preexec = {sig: make_preexec(os.getpid(), sig) for sig in {spec.orphan_signal for spec in plan}}
        self._slots: list[_Slot] = []
        self._out_broken = False

    # -- life cycle

    def request_stop(self) -> None:
        """Ask the loop to stop (signal-handler safe: it only counts)."""
        self.stop_requests += 1

    def run(self, on_started: Callable[[], None] = lambda: None) -> None:
        """Start every process, supervise until a stop is requested, then stop them all.

        ``on_started`` is called once every process with a healthcheck passed it (or after
        ``ready_timeout_s``, naming the ones that did not), so a printed URL already answers.
        """
        try:
            for spec in self.plan:
                spec.log_path.parent.mkdir(parents=True, exist_ok=True)
                slot = _Slot(spec=spec, log=spec.log_path.open("ab"))
                self._slots.append(slot)
                self._spawn(slot)
            self._write_state()
            started_at = time.monotonic()
            announced = False
            next_probe = started_at
            while not self.stop_requests:
                self._pump(0.2)
                self._supervise()
                if not announced and time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + 0.5
                    announced = self._check_ready(time.monotonic() - started_at)
                    if announced:
                        on_started()
        finally:
            self._shutdown()

    def _check_ready(self, elapsed_s: float) -> bool:
        """Probe processes not yet healthy; True once all are, or when out of patience."""
        waiting = []
        for slot in self._slots:
            spec = slot.spec
            if slot.healthy or slot.given_up or spec.health_url is None:
                continue
            if slot.proc is not None and probe(spec.health_url):
                slot.healthy = True
                self.say(f"{spec.name} is healthy ({spec.health_url}, {elapsed_s:.1f} s after start)")
            else:
                waiting.append(spec.name)
        if waiting and elapsed_s < self.ready_timeout_s:
            return False
        if waiting:
            self.say(f"not healthy after {self.ready_timeout_s:.0f} s: {', '.join(waiting)}; see their logs")
        return True

    def restarts(self) -> dict[str, int]:
        """Restarts so far per process name."""
        return {slot.spec.name: slot.restarts for slot in self._slots}

    # -- output

    def say(self, text: str) -> None:
        """A line of the supervisor's own."""
        self._emit(b"supervisor", text.encode())

    def _emit(self, name: bytes, line: bytes) -> None:
        if self._out_broken:
            return
        try:
            self.out.write(b"[" + name + b"] " + line + b"\n")
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):
            # the reader went away (e.g. `| head`): keep supervising and logging to files
            self._out_broken = True

    def _line(self, slot: _Slot, line: bytes) -> None:
        self._emit(slot.spec.name.encode(), line)
        with contextlib.suppress(OSError):
            slot.log.write(line + b"\n")
            slot.log.flush()

    def _pump(self, timeout: float) -> None:
        """Move whatever the children wrote to stdout and the log files."""
        if not self._selector.get_map():
            time.sleep(timeout)
            return
        for key, _ in self._selector.select(timeout):
            pipe: _Pipe = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                if pipe.buffer:
                    self._line(pipe.slot, bytes(pipe.buffer))
                self._selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                continue
            pipe.buffer += chunk
            while True:
                cut = pipe.buffer.find(b"\n")
                if cut < 0:
                    if len(pipe.buffer) >= self.MAX_LINE:
                        self._line(pipe.slot, bytes(pipe.buffer))
                        pipe.buffer.clear()
                    break
                self._line(pipe.slot, bytes(pipe.buffer[:cut]).rstrip(b"\r"))
                del pipe.buffer[: cut + 1]

    # -- processes

    def _spawn(self, slot: _Slot) -> None:
        spec = slot.spec
        try:
            proc = subprocess.Popen(
                list(spec.argv),
                env=child_environment(spec, self.environ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one stream keeps a traceback's lines in order with the log lines
                preexec_fn=self._preexec[slot.spec.orphan_signal],  # noqa: PLW1509 - this process has one thread (module docstring)
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            # e.g. the program is missing: treat like an immediate exit, so backoff applies
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.say(f"{spec.name}: cannot start {spec.argv[0]}: {reason}")
            slot.proc = None
            slot.started_at = time.monotonic()
            self._schedule_restart(slot, ran_s=0.0)
            return
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self._selector.register(proc.stdout, selectors.EVENT_READ, _Pipe(slot))
        slot.proc = proc
        slot.started_at = time.monotonic()
        slot.restart_at = None
        port = f", probes on 127.0.0.1:{spec.http_port}" if spec.http_port else ""
        self.say(f"started {spec.name} (pid {proc.pid}{port}, log {spec.log_path})")

    def _supervise(self) -> None:
        now = time.monotonic()
        changed = False
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                proc, slot.proc = slot.proc, None
                ran_s = now - slot.started_at
                _kill_group(proc.pid, signal.SIGKILL)  # whatever it started must not hold its port
                self.say(f"{slot.spec.name} {_describe_exit(proc.returncode)} after {ran_s:.1f} s")
                reason = no_restart_reason(slot.spec.restart, proc.returncode)
                if reason:
                    slot.given_up = True
                    self.say(f"{slot.spec.name}: not restarted ({reason})")
                else:
                    self._schedule_restart(slot, ran_s)
                changed = True
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                slot.restarts += 1
                with contextlib.suppress(OSError):
                    slot.log.write(f"--- restart {slot.restarts} ---\n".encode())
                self._spawn(slot)
                changed = True
        if changed:
            self._write_state()

    def _schedule_restart(self, slot: _Slot, ran_s: float) -> None:
        slot.exits_in_row = 1 if ran_s >= self.backoff.reset_after_s else slot.exits_in_row + 1
        delay = self.backoff.delay(slot.exits_in_row)
        slot.restart_at = time.monotonic() + delay
        self.say(f"restarting {slot.spec.name} in {delay:.1f} s (restart #{slot.restarts + 1})")

    def _shutdown(self) -> None:
        running = [slot for slot in self._slots if slot.proc is not None]
        if running:
            self.say(f"stopping {len(running)} processes (SIGTERM, SIGKILL after {self.stop_timeout_s:.0f} s)")
        for slot in running:
            _kill_group(slot.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.stop_timeout_s
        count_at_start = self.stop_requests
        while any(slot.proc.poll() is None for slot in running):  # type: ignore[union-attr]
            if time.monotonic() >= deadline or self.stop_requests > max(count_at_start, 1):
                break  # out of patience, or a second Ctrl-C: kill now
            self._pump(0.1)
        for slot in running:
            proc = slot.proc
            assert proc is not None
            if proc.poll() is None:
                self.say(f"{slot.spec.name} did not stop in time: SIGKILL")
            # the whole group, also when the leader exited: a grandchild must not outlive us
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            slot.proc = None
        drain_until = time.monotonic() + 1.0
        while self._selector.get_map() and time.monotonic() < drain_until:
            self._pump(0.05)
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        for slot in self._slots:
            slot.log.close()
        if self.state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()

    def _write_state(self) -> None:
        """``<run dir>/run.json``: pids, ports and restarts, for operators and tests."""
        if self.state_path is None:
            return
        state = {
            "supervisor_pid": os.getpid(),
            "supervisor_start_ticks": start_ticks(os.getpid()),
            **self.extra_state,
            "processes": [
                {
                    "name": slot.spec.name,
                    "pid": slot.proc.pid if slot.proc else None,
                    # with the pid, what tells a later run that a process is still this one
                    "start_ticks": start_ticks(slot.proc.pid) if slot.proc else None,
                    "restarts": slot.restarts,
                    "http_port": slot.spec.http_port,
                    "log": str(slot.spec.log_path),
                }
                for slot in self._slots
            ],
        }
        tmp = self.state_path.with_suffix(".tmp")
        # mode 600: it may hold the tools' Redis login (tools_redis_url)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)


# Probes go straight to 127.0.0.1: an http_proxy in the environment must not intercept them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def probe(url: str, timeout_s: float = 0.5) -> bool:
    """True when ``url`` answers with a status below 400 (what compose's urlopen healthchecks test)."""
    try:
        with _DIRECT.open(url, timeout=timeout_s) as response:
            return response.status < 400
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def no_restart_reason(policy: str, returncode: int) -> str:
    """Why a process that exited with ``returncode`` stays stopped ("" when it is restarted).

    Compose's policies, except that a process that exits with EXIT_BAD_CONFIG is never restarted:
    its configuration is wrong, a restart would fail the same way, and its log says what to change.
    """
    if returncode == EXIT_BAD_CONFIG:
        return f"exit status {EXIT_BAD_CONFIG} means bad configuration: fix what its log says and start again"
    if policy == "no":
        return "restart: no"
    if policy == "on-failure" and returncode == 0:
        return "it finished; restart: on-failure"
    return ""


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


# --------------------------------------------------------------------------- command line


def default_compose_path() -> Path:
    """deploy/docker-compose.yml under the working directory, else of the source checkout."""
    here = Path.cwd() / composefile.DEFAULT_COMPOSE
    if here.exists():
        return here
    checkout = Path(__file__).resolve().parents[2] / composefile.DEFAULT_COMPOSE
    return checkout if checkout.exists() else here


def build_parser() -> argparse.ArgumentParser:
    overrides = "\n".join(f"  {name}: {text}" for name, text in LOCAL_OVERRIDES.items())
    parser = argparse.ArgumentParser(
        prog="unistream run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run Redis and every service on this machine, as deploy/docker-compose.yml defines them: "
            "each service's command and environment come from the compose file (with ${VAR:-default} "
            "taken from this shell). Ctrl-C stops everything."
        ),
        epilog=(
            "Local overrides (the only differences from `docker compose up`):\n"
            f"{overrides}\n"
            "Inherited UNISTREAM_* variables that compose does not declare for a service are not passed\n"
            "to it (a container would not see them); PYTHONUNBUFFERED=1 mirrors the image.\n"
            "Replicas are numbered from 1, as compose numbers them. Logs: <run dir>/logs/<service>-<replica>.log;\n"
            "pids and restarts: <run dir>/run.json (the Redis URL there has its password masked).\n"
            "A process that exits is restarted as its compose `restart` policy says, except after exit\n"
            "status 2 (bad configuration, e.g. Redis refused the credentials): a restart cannot fix that."
        ),
    )
    parser.add_argument(
        "--scale", action="append", default=[], metavar="SERVICE=N",
        help="run N replicas of SERVICE (repeatable), e.g. --scale trainer=3",
    )  # fmt: skip
    parser.add_argument("--port-offset", type=int, default=0, metavar="K", help="add K to every HTTP probe port")
    parser.add_argument(
        "--profile", action="append", default=[], metavar="NAME",
        help="enable a compose profile (repeatable), e.g. --profile live; default: $COMPOSE_PROFILES, "
        "else the compose file's x-unistream-default-profiles",
    )  # fmt: skip
    parser.add_argument(
        "--redis-port", type=int, default=None, metavar="P",
        help=f"port of the Redis that run starts (default {DEFAULT_REDIS_PORT}; 0 or a busy port: a free one); "
        "ignored when UNISTREAM_REDIS_URL is set",
    )  # fmt: skip
    parser.add_argument(
        "--redis-cluster", type=int, default=None, metavar="N",
        help="start a Redis Cluster instead: N masters (3 or more) with a replica each, on free ports, with "
        "compose's redis options on every node (1: one node serving every slot); ignored when "
        "UNISTREAM_REDIS_URL is set",
    )  # fmt: skip
    parser.add_argument("--compose", type=Path, default=None, help="compose file (default deploy/docker-compose.yml)")
    parser.add_argument("--run-dir", type=Path, default=Path(".run"), help="logs, models and Redis data (default .run)")
    parser.add_argument(
        "--stop-timeout", type=float, default=10.0, metavar="S",
        help="seconds a process gets to exit after SIGTERM before SIGKILL (default 10, as compose)",
    )  # fmt: skip
    return parser


def _unistream_script() -> Path:
    beside = Path(sys.executable).parent
    if (beside / "unistream").exists():
        return beside
    found = shutil.which("unistream")
    return Path(found).parent if found else beside


def _start_redis(
    requested_port: int | None, run_dir: Path, parent_pid: int, binary: str, args: list[str]
) -> RedisServer:
    """Our own redis-server (``args``: compose's redis command) with its files under ``<run dir>/redis``,
    tied to this process."""
    port = DEFAULT_REDIS_PORT if requested_port is None else requested_port
    if port == 0:
        port = free_port()
    elif not port_is_free(port):
        chosen = free_port()
        print(f"[supervisor] port {port} is busy: Redis goes on port {chosen}", flush=True)
        port = chosen
    server = start_redis(
        run_dir / "redis", port=port, appendonly=True, binary=binary, extra_args=args,
        preexec_fn=make_preexec(parent_pid),
    )  # fmt: skip
    users = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--user"]
    print(
        f"[supervisor] redis-server pid {server.process.pid} on {server.url} "
        f"(data in {server.data_dir}, binary {server.binary}"
        + (f", ACL users {', '.join(users)} as in compose" if users else "")
        + ")",
        flush=True,
    )
    return server


def _start_cluster(
    masters: int, run_dir: Path, parent_pid: int, binary: str, args: list[str], avoid: list[int]
) -> RedisCluster:
    """Our own Redis Cluster (``args``: compose's redis command, on every node) under
    ``<run dir>/redis-cluster``, tied to this process; replicas log in with the default user's
    password; no node or cluster bus takes a port in ``avoid`` (the services' probes)."""
    admin = _default_password(args)
    cluster = start_cluster(
        run_dir / "redis-cluster", masters=masters, replicas=1 if masters > 1 else 0, appendonly=True,
        binary=binary, extra_args=args, password=admin, node_timeout_ms=5_000, preexec_fn=make_preexec(parent_pid),
        avoid=avoid,
    )  # fmt: skip
    shape = f"{masters} masters with a replica each" if masters > 1 else "one node serving every slot"
    print(
        f"[supervisor] Redis Cluster of {shape}: {safe_url(cluster.url)} (pids "
        f"{', '.join(str(n.process.pid) for n in cluster.nodes)}, data in {run_dir / 'redis-cluster'})",
        flush=True,
    )
    return cluster


def _default_password(args: list[str]) -> str | None:
    """The password the default user gets in redis-server ``args`` (``--user default ... >PASSWORD``)."""
    for i, arg in enumerate(args[:-1]):
        if arg == "--user" and args[i + 1] == "default":
            for rule in args[i + 2 :]:
                if rule.startswith("--"):
                    break
                if rule.startswith(">"):
                    return rule[1:]
    return None


MIN_ACL_REDIS = (7, 0)  # compose's dashboard user reads every key through a read-only selector (%R~)


def _local_redis(
    compose: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[str, list[str], dict[str, str] | None]:
    """(binary, arguments, secrets) of the Redis that run starts: compose's redis command and the
    values of its variables; an older server than :data:`MIN_ACL_REDIS` runs without its ACL users."""
    binary = find_redis_server()
    values = redis_secrets(compose, environ)
    args = redis_arguments(compose, {**environ, **values})
    if "--user" not in args:
        return binary, args, None
    version = redis_server_version(binary)
    if version < MIN_ACL_REDIS:
        print(
            f"[supervisor] {binary} is Redis {version[0]}.{version[1]}: compose's ACL users need "
            f"{MIN_ACL_REDIS[0]}.{MIN_ACL_REDIS[1]}; running without them (every service logs in as the default user)",
            flush=True,
        )
        return binary, without_users(args), None
    return binary, args, values


def without_users(args: list[str]) -> list[str]:
    """redis-server ``args`` without the ``--user NAME RULE...`` groups."""
    out: list[str] = []
    in_user = False
    for arg in args:
        if arg.startswith("--"):
            in_user = arg == "--user"
        if not in_user:
            out.append(arg)
    return out


# --------------------------------------------------------------------------- the run before


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc); None when it does not run.

    A pid with the recorded start time is the same process, not a later one given the same pid.
    """
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _recorded(entries: list[tuple[str, Any, Any]]) -> list[tuple[str, int]]:
    """(name, pid) of the recorded processes that still run as the same process."""
    alive = []
    for name, pid, ticks in entries:
        if isinstance(pid, int) and ticks is not None and start_ticks(pid) == ticks:
            alive.append((name, pid))
    return alive


def previous_run(state_path: Path) -> tuple[int | None, list[tuple[str, int]]]:
    """(pid of a supervisor still running, processes still running) of the run that wrote ``state_path``.

    A run that stopped normally leaves no state file; one that was killed leaves it behind, and
    its children, which got their death signal, may still be stopping.
    """
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None, []
    if not isinstance(state, dict):
        return None, []
    supervisor = _recorded([("supervisor", state.get("supervisor_pid"), state.get("supervisor_start_ticks"))])
    children = [(p.get("name"), p.get("pid"), p.get("start_ticks")) for p in state.get("processes") or []]
    children.append(("redis-server", state.get("redis_pid"), state.get("redis_start_ticks")))
    children.extend(("redis-server", n.get("pid"), n.get("start_ticks")) for n in state.get("redis_nodes") or [])
    return (supervisor[0][1] if supervisor else None), _recorded(children)


def wait_for_previous_run(left: list[tuple[str, int]], timeout_s: float, say: Callable[[str], None]) -> None:
    """Wait up to ``timeout_s`` for the processes a killed run left to exit; SIGKILL what remains.

    They hold the ports and the Redis data directory that this run is about to take.
    """
    names = ", ".join(f"{name} (pid {pid})" for name, pid in left)
    say(f"waiting up to {timeout_s:.0f} s for {len(left)} process(es) of the previous run to exit: {names}")
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline and (left := _recorded([(n, p, start_ticks(p)) for n, p in left])):
        time.sleep(0.1)
    if left:
        say(f"still running after {timeout_s:.0f} s: SIGKILL {', '.join(name for name, _ in left)}")
        for _, pid in left:
            _kill_group(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while _recorded([(n, p, start_ticks(p)) for n, p in left]) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    say(f"the previous run's processes are gone ({time.monotonic() - started:.1f} s)")


TOOLS_SERVICE = "dashboard"  # its ACL user reads every key and may run INFO: what status and tail need


def tools_url(compose: Mapping[str, Any], environ: Mapping[str, str], options: RunOptions) -> str | None:
    """The Redis URL of the :data:`TOOLS_SERVICE` user aimed at run's Redis (None without one)."""
    raw = composefile.service(compose, TOOLS_SERVICE) if TOOLS_SERVICE in (compose.get("services") or {}) else {}
    env = raw.get("environment") or {}
    url = env.get(_REDIS_URL) if isinstance(env, Mapping) else None
    if not url or options.redis_secrets is None:
        return None
    return retarget_url(composefile.interpolate(str(url), {**environ, **options.redis_secrets}), options.redis_url)


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    """Entry point of ``unistream run``: plan, Redis, supervise until a signal, clean up."""
    args = build_parser().parse_args(argv)
    run_dir = args.run_dir.resolve()
    state_path = run_dir / "run.json"
    environ = dict(os.environ)
    given_redis_url = environ.get("UNISTREAM_REDIS_URL", "")
    redis_binary, redis_args, secrets_ = "", [], None
    try:
        if args.redis_port is not None and not 0 <= args.redis_port < 65536:
            raise PlanError(f"--redis-port {args.redis_port} is not a port number")
        if args.redis_cluster is not None and not (args.redis_cluster == 1 or 3 <= args.redis_cluster <= 64):
            raise PlanError(f"--redis-cluster {args.redis_cluster}: a cluster has 3 to 64 masters (or 1 node alone)")
        compose = composefile.load(args.compose or default_compose_path())
        if not given_redis_url:
            redis_binary, redis_args, secrets_ = _local_redis(compose, environ)
        options = RunOptions(
            # until our Redis is up its URL is unknown; nothing else in the plan depends on it
            redis_url=given_redis_url or "redis://127.0.0.1:0/0",
            run_dir=run_dir,
            bin_dir=_unistream_script(),
            python=sys.executable,
            scale=parse_scale(args.scale),
            port_offset=args.port_offset,
            profiles=active_profiles(args.profile, environ),
            redis_secrets=secrets_,
        )
        plan = build_plan(compose, environ, options)
    except (composefile.ComposeError, PlanError) as exc:
        print(f"unistream run: {exc}", file=sys.stderr)
        return 2
    except RedisNotFound as exc:
        print(f"unistream run: cannot start Redis: {exc}", file=sys.stderr)
        return 1
    if given_redis_url and (problem := access_problem(given_redis_url)) is not None:
        print(f"unistream run: {problem}; fix UNISTREAM_REDIS_URL", file=sys.stderr)
        return EXIT_BAD_CONFIG
    running, left = previous_run(state_path)
    if running is not None:
        print(
            f"unistream run: another unistream run (pid {running}) uses {run_dir}; stop it (Ctrl-C) "
            "or give this one its own --run-dir",
            file=sys.stderr,
        )
        return 1
    if left:
        wait_for_previous_run(left, args.stop_timeout, lambda text: print(f"[supervisor] {text}", flush=True))
    busy = [spec for spec in plan if spec.http_port and not port_is_free(spec.http_port)]
    if busy:
        names = ", ".join(f"{spec.name} ({spec.http_port})" for spec in busy)
        print(f"unistream run: port(s) in use: {names}; stop what holds them or pass --port-offset", file=sys.stderr)
        return 1

    server: RedisServer | RedisCluster | None = None
    supervisor: Supervisor | None = None

    def on_signal(signum: int, frame: object) -> None:
        if supervisor is None:
            raise KeyboardInterrupt  # still starting: nothing to stop in order yet
        supervisor.request_stop()

    # SIGHUP too: a closed terminal should stop the services as cleanly as Ctrl-C does
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        if given_redis_url:
            print(
                f"[supervisor] using Redis at {safe_url(given_redis_url)} (UNISTREAM_REDIS_URL; not started by run)",
                flush=True,
            )
        else:
            try:
                if args.redis_cluster:
                    probes = [spec.http_port for spec in plan if spec.http_port]
                    server = _start_cluster(args.redis_cluster, run_dir, os.getpid(), redis_binary, redis_args, probes)
                else:
                    server = _start_redis(args.redis_port, run_dir, os.getpid(), redis_binary, redis_args)
            except (RedisNotFound, RuntimeError, ValueError) as exc:
                print(f"unistream run: cannot start Redis: {exc}", file=sys.stderr)
                return 1
            options = dataclasses.replace(options, redis_url=server.url)
            plan = build_plan(compose, environ, options)
        redis_url = server.url if server else given_redis_url
        dashboard = next((spec for spec in plan if spec.service == "dashboard" and spec.http_port), None)

        def announce() -> None:
            if dashboard is not None:
                print(f"unistream is running: dashboard at http://127.0.0.1:{dashboard.http_port}", flush=True)
            else:
                print(f"unistream is running: {len(plan)} processes", flush=True)

        run_dir.mkdir(parents=True, exist_ok=True)
        if any("UNISTREAM_MODEL_DIR" in spec.environment for spec in plan):
            (run_dir / "models").mkdir(exist_ok=True)  # compose's named volume exists before the services too
        extra_state: dict[str, Any] = {
            # masked: run.json is for reading; `unistream status` logs in with tools_redis_url
            "redis_url": safe_url(redis_url),
            "redis_pid": server.process.pid if isinstance(server, RedisServer) else None,
            "redis_start_ticks": start_ticks(server.process.pid) if isinstance(server, RedisServer) else None,
            # a cluster's nodes, all stopped with the run
            "redis_nodes": [
                {"pid": n.process.pid, "start_ticks": start_ticks(n.process.pid)}
                for n in (server.nodes if isinstance(server, RedisCluster) else [])
            ],
        }
        if server is not None and secrets_ is not None:
            # The operator tools (status, tail) log in as the read-only dashboard user; run.json is
            # mode 600 and its passwords die with this run's Redis.
            extra_state["tools_redis_url"] = tools_url(compose, environ, options)
        supervisor = Supervisor(
            plan,
            environ,
            sys.stdout.buffer,
            state_path=state_path,
            stop_timeout_s=args.stop_timeout,
            extra_state=extra_state,
        )
        supervisor.run(on_started=announce)
        restarts = {name: n for name, n in supervisor.restarts().items() if n}
        if restarts:
            print(f"[supervisor] restarts: {', '.join(f'{k}={v}' for k, v in restarts.items())}", flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()
            print("[supervisor] redis-server stopped", flush=True)
