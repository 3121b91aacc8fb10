"""Trainer rows of ``make bench`` (imported by ``bench/run.py``; see its docstring for the rows).

Two kinds of measurement:

- the learner in this process (``trainer_updates_per_s`` beside ``sb3_dqn_updates_per_s``): the
  trainer's :class:`~unistream_trainer.dqn.DQNAgent` with the default hyperparameters (dueling MLP
  256, 256 on obs 13,451 = the 13,448-value layout-v2 state of two symbols + the one-hot position;
  batch 64; the default replay capacity) and Stable-Baselines3's ``DQN`` with ``net_arch=[256, 256]`` on a
  gymnasium ``Box`` of the same size (batch 64, the same replay size, learning rate, tau, gamma and
  gradient clipping), each replay pre-filled with the same random transitions, torch on one thread.
  After :data:`WARMUP_UPDATES` untimed steps (Adam's state is allocated on the first), the clock
  covers one ``DQNAgent.learn(N)`` and one ``DQN.train(gradient_steps=N, batch_size=64)`` call of
  :data:`UPDATES` steps. What each step does is not the same: the trainer's is double DQN (the
  next states go through the online *and* the target network) with a Polyak target update after
  every step; SB3's is plain DQN (target network only) and updates its target outside ``train()``
  (in ``_on_step``, every ``target_update_interval`` environment steps), so that is not timed.
- ``unistream trainer`` as processes (``.venv/bin/unistream trainer``, what the supervisor starts,
  with ``UNISTREAM_*`` variables as the supervisor sets them: own ``UNISTREAM_CONSUMER_NAME`` and
  ``UNISTREAM_HTTP_PORT`` per replica, one shared model directory), default settings otherwise:
  full 13,448-value states, network 256, 256, 4 updates per packet (batches of 4 packets, 16 updates),
  the CNN's extrema heads trained at 0.5 steps per packet, paper trading on the leader, merge
  rounds every 30 s, claims after 20 s idle.

Training packets are SYNTHETIC and seeded: per second of :data:`T0` on, one packet per symbol
(random-normal states in the layout-v2 size and ``layout_version``, a random-walk price), written
as the features service writes them: explicit entry ids ``<T0 + 1000 t>-<seq>`` and each packet
naming its symbol's previous one (``prev_id``, ``prev_ts_event_ms``).

Replay (``trainer_packets_per_s_*``): a backlog of :data:`BACKLOG_SECONDS` seconds of both symbols
is written, the ``trainer`` group is created at its end, the replicas are started and waited for
(``/readyz``: imports, torch and the CNN are not timed), then ``XGROUP SETID trainer 0
ENTRIESREAD 0`` and one more packet (its XADD wakes the blocked reads) hand them the backlog at
the same moment. XINFO GROUPS is polled every 10 ms: the clock starts at the first poll that sees
an acknowledged entry (``entries-read - pending > 0``: the first batch is learned) and stops when
every entry was read and none is pending; packets/s = the entries acknowledged in between over
that time. Each replica's ``/stats`` (``trainer_packets``, ``trainer_updates``) and CPU seconds
(``/proc/<pid>/stat``) go into a note.

After the 2-replica replay, the same two processes continue with real-time packets (one second
of both symbols per wall second), for two more rows:

- ``trainer_claim_s``: a dead replica is simulated by a consumer ``trainer-dead`` that takes
  :data:`DEAD_SECONDS` seconds of packets (XADD and XREADGROUP in one MULTI, so the running replicas'
  blocked reads cannot take them first) and never acknowledges them: the time from that read until
  none of those entries is pending any more (claimed by a running replica with XAUTOCLAIM after
  ``UNISTREAM_CLAIM_IDLE_MS``, default 20 s, checked every 2 s, and learned from). XPENDING over
  their ids is polled every 50 ms; the note says when they changed owner.
- ``trainer_merge_round_ms``: ``info.last_merge`` of each replica's ``/stats`` (round, members,
  duration of the leader's gather + average + publish), polled every 0.5 s until a round with both
  replicas was seen (the first rounds come ~30 s and ~60 s after start: the first is often the
  leader's alone, when it runs before the other replica's first submission); the median of the
  2-member rounds of the run. The note gives the size of what is merged.

At most ``MAX_RUNS`` runs per row: one pass over the rows takes ~100 s of this 2-core machine (the
2-replica run alone ~65 s: start-up, replay, a 20 s claim, and the merge round at ~60 s), the whole
trainer part ~3.5 min. A failed check raises RuntimeError: the row is skipped and says why.

``python bench/trainer.py --profile`` prints where the time of both learners' steps goes (torch
profiler, one thread).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import clients
import httpx
import numpy as np
import redis.asyncio as aioredis
from aggregator import stop_process  # the shared helper (bench/ is on sys.path)

from unistream_common import codec, keys
from unistream_common.packets import TrainingDataPacket
from unistream_common.redisio import is_cluster, s
from unistream_common.timeframes import TIMEFRAMES
from unistream_tools.redis_server import free_port

SYMBOLS = ("ETHUSDT", "BTCUSDT")
BASE_PRICE = {"ETHUSDT": 3000.0, "BTCUSDT": 60_000.0}
DAY_MS = 86_400_000
T0 = 1_760_000_000_000 - 1_760_000_000_000 % DAY_MS + 5 * 3_600_000  # 05:00 UTC
STATE_DIM = 13_448  # layout v2, two symbols, default windows (checked against make_layout)
N_ACTIONS = 3
OBS_DIM = STATE_DIM + N_ACTIONS
UPDATES = 60  # timed gradient steps per learner run
WARMUP_UPDATES = 3
BACKLOG_SECONDS = 150  # replay backlog: 300 packets over the two symbols (learned at 4 updates each)
DEAD_SECONDS = 10  # packets the dead replica takes: 20
LIVE_SECONDS = 100  # real-time seconds available after the backlog (claim and merge phases)
CLAIM_TIMEOUT_S = 60.0
MERGE_WAIT_S = 75.0  # after the replicas' start: two rounds of 30 s and some
TRAINER_SCRIPT = str(Path(sys.executable).with_name("unistream-trainer"))  # what the supervisor and image run
DEAD_CONSUMER = "trainer-dead"
PREDICTION_NAMES = [f"{tf}.{p}" for tf in TIMEFRAMES for p in ("p_bottom", "p_none", "p_top", "p_down", "p_up")]
CNN_HIDDEN = 160

# Goals, by row: (comparison, value); "x>=" compares the ratio to the row's reference.
GOALS: dict[str, tuple[str, float]] = {
    "trainer_updates_per_s": ("x>=", 1.5),
    "trainer_packets_per_s_2_replicas": ("x>=", 1.7),
    "trainer_claim_s": ("<", 30.0),
}
# Runs per row at most, whatever --repeat says.
MAX_RUNS: dict[str, int] = {
    "sb3_dqn_updates_per_s": 3,
    "trainer_updates_per_s": 3,
    "trainer_updates_per_s_float32": 3,
    "trainer_packets_per_s_1_replica": 2,
    "trainer_packets_per_s_2_replicas": 2,
    "trainer_packets_per_s_3_replicas": 2,
    "trainer_updates_per_packet_live": 2,
    "trainer_updates_per_packet_1_replica": 2,
    "trainer_updates_per_packet_2_replicas": 2,
    "trainer_updates_per_packet_3_replicas": 2,
    "trainer_claim_s": 2,
    "trainer_merge_round_ms": 2,
}
# Notes a run leaves on a row, newest run last; bench/run.py prints them.
NOTES: dict[str, list[str]] = {}


def _note(row: str, text: str) -> None:
    NOTES.setdefault(row, []).append(text)


# --- the learners ---------------------------------------------------------------------------

_REPLAY: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []


def replay_data(capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs, actions, rewards, discounts) of ``capacity`` random transitions (seeded, built once);
    the next observation of transition i is the observation of i + 1."""
    if not _REPLAY:
        rng = np.random.default_rng(11)
        obs = rng.standard_normal((capacity, OBS_DIM), dtype=np.float32)
        actions = rng.integers(0, N_ACTIONS, capacity)
        rewards = rng.normal(0.0, 1.0, capacity).astype(np.float32)
        discounts = np.full(capacity, 0.99**3, np.float32)
        _REPLAY.append((obs, actions, rewards, discounts))
    return _REPLAY[0]


def _trainer_agent(precision: str = "auto") -> Any:
    """The service's default learner (its settings' defaults; ``precision`` as UNISTREAM_DQN_PRECISION)."""
    import torch

    from unistream_trainer.dqn import DQNAgent
    from unistream_trainer.settings import TrainerSettings

    torch.set_num_threads(1)  # as the service runs it
    hp = TrainerSettings(dqn_precision=precision).hyperparameters()
    if hp.hidden_sizes != (256, 256) or hp.batch_size != 64:
        raise RuntimeError(f"the trainer's defaults changed: hidden {hp.hidden_sizes}, batch {hp.batch_size}")
    obs, actions, rewards, discounts = replay_data(hp.buffer_size)
    agent = DQNAgent(OBS_DIM, hp)
    rb = agent.replay
    rb.obs[:] = obs
    rb.next_obs[:-1], rb.next_obs[-1] = obs[1:], obs[0]
    rb.actions[:], rb.rewards[:], rb.discounts[:] = actions, rewards, discounts
    rb.pos, rb.size = 0, hp.buffer_size
    return agent


def _sb3_model() -> Any:
    import torch

    try:
        import gymnasium as gym
        from stable_baselines3 import DQN
        from stable_baselines3.common.logger import Logger
    except ImportError as exc:  # the row is skipped, the others run
        raise RuntimeError(f"stable-baselines3 is not installed (requirements-dev.txt): {exc}") from None

    from unistream_trainer.dqn import Hyperparameters

    torch.set_num_threads(1)
    hp = Hyperparameters()

    class BoxEnv(gym.Env):  # type: ignore[type-arg]
        """Only its spaces matter: the replay is filled directly, ``train`` never steps it."""

        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        action_space = gym.spaces.Discrete(N_ACTIONS)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            return np.zeros(OBS_DIM, np.float32), {}

        def step(self, action: Any) -> Any:
            return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DQN(
            "MlpPolicy", BoxEnv(), learning_rate=hp.learning_rate, buffer_size=hp.buffer_size, learning_starts=0,
            batch_size=hp.batch_size, tau=hp.tau, gamma=hp.gamma, max_grad_norm=hp.max_grad_norm,
            policy_kwargs={"net_arch": list(hp.hidden_sizes)}, seed=hp.seed, device="cpu", verbose=0,
        )  # fmt: skip
    model.set_logger(Logger(folder=None, output_formats=[]))
    obs, actions, rewards, _ = replay_data(hp.buffer_size)
    rb = model.replay_buffer
    rb.observations[:, 0] = obs
    rb.next_observations[:-1, 0], rb.next_observations[-1, 0] = obs[1:], obs[0]
    rb.actions[:, 0, 0] = actions
    rb.rewards[:, 0] = rewards
    rb.dones[:] = 0.0
    rb.pos, rb.full = 0, True
    return model


def trainer_learn_rate(precision: str = "auto") -> float:
    agent = _trainer_agent(precision)
    agent.learn(WARMUP_UPDATES)
    start = time.perf_counter()
    done = agent.learn(UPDATES)
    elapsed = time.perf_counter() - start
    if len(done) != UPDATES or not all(np.isfinite(loss) for loss, _ in done):
        raise RuntimeError(f"DQNAgent.learn took {len(done)} steps of {UPDATES}, or a loss was not finite")
    del agent
    gc.collect()
    return UPDATES / elapsed


def sb3_train_rate() -> float:
    model = _sb3_model()
    model.train(gradient_steps=WARMUP_UPDATES, batch_size=64)
    start = time.perf_counter()
    model.train(gradient_steps=UPDATES, batch_size=64)
    elapsed = time.perf_counter() - start
    if model._n_updates != WARMUP_UPDATES + UPDATES:
        raise RuntimeError(f"SB3 counted {model._n_updates} updates")
    del model
    gc.collect()
    return UPDATES / elapsed


async def trainer_updates_per_s(url: str, n: int, batch: int) -> float:
    from unistream_trainer.dqn import native_bf16

    value = await asyncio.to_thread(trainer_learn_rate)
    mode = "bf16 matmuls (native on this CPU)" if native_bf16() else "float32 (no native bf16 on this CPU)"
    _note("trainer_updates_per_s", f"{1000 / value:.1f} ms per update ({UPDATES} timed), default precision: {mode}")
    return value


async def trainer_updates_per_s_float32(url: str, n: int, batch: int) -> float:
    value = await asyncio.to_thread(trainer_learn_rate, "float32")
    _note("trainer_updates_per_s_float32", f"{1000 / value:.1f} ms per update, UNISTREAM_DQN_PRECISION=float32")
    return value


async def sb3_dqn_updates_per_s(url: str, n: int, batch: int) -> float:
    value = await asyncio.to_thread(sb3_train_rate)
    _note("sb3_dqn_updates_per_s", f"{1000 / value:.1f} ms per update ({UPDATES} timed)")
    return value


# --- training packets -----------------------------------------------------------------------


@dataclass(frozen=True)
class Packets:
    """Encoded training packets, oldest first: (stream, entry id, fields) per second and symbol."""

    entries: list[tuple[str, str, dict[bytes, bytes]]]

    def seconds(self, first: int, last: int) -> list[tuple[str, str, dict[bytes, bytes]]]:
        return self.entries[len(SYMBOLS) * first : len(SYMBOLS) * last]


_PACKETS: list[Packets] = []


def packets() -> Packets:
    """:data:`BACKLOG_SECONDS` + :data:`DEAD_SECONDS` + :data:`LIVE_SECONDS` seconds of both symbols (built once)."""
    if _PACKETS:
        return _PACKETS[0]
    from unistream_model.layout import make_layout

    layout = make_layout(SYMBOLS)
    if layout.dim != STATE_DIM:
        raise RuntimeError(f"the default state has {layout.dim:,} values now, not {STATE_DIM:,}")
    layout_version = f"{layout.version}/{layout.fingerprint}"
    rng = np.random.default_rng(13)
    n = BACKLOG_SECONDS + DEAD_SECONDS + LIVE_SECONDS
    prices = {sym: BASE_PRICE[sym] * np.exp(np.cumsum(rng.normal(0, 2e-4, n))) for sym in SYMBOLS}
    prev: dict[str, tuple[str, int]] = {}
    entries = []
    seq = 0
    warmup = dict.fromkeys(TIMEFRAMES, 1.0)
    for t in range(n):
        for sym in SYMBOLS:
            seq += 1
            ts = T0 + 1000 * t
            entry_id = f"{ts}-{seq}"
            prev_id, prev_ts = prev.get(sym, ("", 0))
            p = TrainingDataPacket(
                symbol=sym, ts_event_ms=ts, price=float(prices[sym][t]), source="SYNTHETIC", state_dim=STATE_DIM,
                state=codec.f32_to_bytes(rng.standard_normal(STATE_DIM, dtype=np.float32)),
                cnn_features=codec.f32_to_bytes(rng.standard_normal(CNN_HIDDEN, dtype=np.float32)),
                cnn_predictions=codec.f32_to_bytes(np.full(len(PREDICTION_NAMES), 0.2, np.float32)),
                prediction_names=PREDICTION_NAMES, model_version="cnn-mtf-init-7", window_fill=1.0,
                layout_version=layout_version, cnn_state="INITIALISED", warmup=warmup, warm=True, tick_coverage=1.0,
                ts_emit_ms=ts, prev_id=prev_id, prev_ts_event_ms=prev_ts,
            )  # fmt: skip
            prev[sym] = (entry_id, ts)
            entries.append((keys.training(sym), entry_id, codec.encode(p)))
    _PACKETS.append(Packets(entries))
    return _PACKETS[0]


TRAINING = [keys.training(sym) for sym in SYMBOLS]


async def _write(
    client: aioredis.Redis, entries: list[tuple[str, str, dict[bytes, bytes]]], per_round: int = 100
) -> None:
    pipe = client.pipeline(transaction=False)
    for stream, entry_id, fields in entries:
        pipe.xadd(stream, fields, id=entry_id)
        if len(pipe) >= per_round:
            await pipe.execute()
    await pipe.execute()


# --- the service as processes ---------------------------------------------------------------


class _Trainer:
    """``unistream trainer`` as a process, output to a log in ``run_dir``; stopped on the way out."""

    def __init__(self, url: str, name: str, run_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = run_dir / f"{name}.log"
        (run_dir / "models").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
        env.update({
            "UNISTREAM_REDIS_URL": url, "UNISTREAM_HTTP_HOST": "127.0.0.1", "UNISTREAM_HTTP_PORT": str(self.port),
            "UNISTREAM_SYMBOLS": ",".join(SYMBOLS), "UNISTREAM_CONSUMER_NAME": name,
            "UNISTREAM_MODEL_DIR": str(run_dir / "models"), "UNISTREAM_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([TRAINER_SCRIPT], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)
        self.started = time.monotonic()

    def check(self, what: str, deadline: float) -> None:
        """RuntimeError (the row is skipped) when the process died or ``deadline`` passed."""
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{self.name} exited {self.proc.returncode} before {what}: {tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{self.name}: no {what} in time")

    async def ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check("readiness", deadline)
            try:
                if (await self.http.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)

    async def stats(self) -> dict[str, Any]:
        return (await self.http.get("/stats")).json()

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> str:
        """SIGTERM, SIGKILL after 15 s; the log's text."""
        await self.http.aclose()
        await asyncio.to_thread(stop_process, self.proc, 15)
        return self.log.read_text(errors="replace")


class _Replicas:
    """Several trainer processes sharing a temporary run directory (logs, models)."""

    def __init__(self, url: str, n: int) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="unistream-bench-trainer-")
        self.procs = [_Trainer(url, f"trainer-{i + 1}", Path(self.dir.name)) for i in range(n)]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        logs = await asyncio.gather(*(p.stop() for p in self.procs))
        self.dir.cleanup()
        for p, log in zip(self.procs, logs):
            if "Traceback" in log or p.proc.returncode not in (0, None):
                print(f"{p.name} (exit {p.proc.returncode}) log:\n{log[-3000:]}", file=sys.stderr)


def _machine_cpu() -> dict[str, float]:
    """Busy, idle and stolen CPU seconds of the whole machine so far (/proc/stat)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "busy": (user + nice + system + irq + softirq) / tick,
        "idle": (idle + iowait) / tick,
        "steal": steal / tick,
    }


async def _group(client: aioredis.Redis) -> dict[str, Any]:
    """The trainer group over every symbol's training stream: entries read and pending summed, the
    last delivered id of each stream."""
    out: dict[str, Any] = {"entries-read": 0, "pending": 0, "last-delivered-id": {}}
    for stream in TRAINING:
        g = next((g for g in await client.xinfo_groups(stream) if s(g["name"]) == keys.GROUP_TRAINER), None)
        if g is None:
            raise RuntimeError(f"no trainer group on {stream}")
        out["entries-read"] += int(g["entries-read"] or 0)
        out["pending"] += int(g["pending"])
        out["last-delivered-id"][stream] = s(g["last-delivered-id"])
    return out


# --- replay ---------------------------------------------------------------------------------


async def _replay(client: aioredis.Redis, reps: _Replicas, row: str) -> float:
    """Hand the pre-written backlog to the ready replicas; packets/s from the first ack to the end."""
    backlog = packets().seconds(0, BACKLOG_SECONDS)
    total = len(backlog)
    last = backlog[-len(SYMBOLS) :]  # the last second: one entry per symbol's stream
    last_ids = {stream: eid for stream, eid, _ in last}
    for p in reps.procs:
        await p.ready()
    await asyncio.sleep(0.5)  # every replica is in its blocking read
    cpu0 = [p.cpu_s() for p in reps.procs]
    machine0 = _machine_cpu()
    stats0 = [await p.stats() for p in reps.procs]
    for stream in TRAINING:
        await client.xgroup_setid(stream, keys.GROUP_TRAINER, "0", entries_read=0)
    for stream, eid, fields in last:
        await client.xadd(stream, fields, id=eid)  # wakes the blocked reads
    deadline = time.monotonic() + 300
    start = end = 0.0
    acked0 = 0
    while True:
        g = await _group(client)
        now = time.perf_counter()
        read, pending = int(g["entries-read"] or 0), int(g["pending"])
        if not start and read - pending > 0:
            start, acked0 = now, read - pending
        if g["last-delivered-id"] == last_ids and pending == 0:
            end = now
            break
        for p in reps.procs:
            p.check(f"the backlog learned ({read - pending:,} of {total:,} acknowledged)", deadline)
        await asyncio.sleep(0.01)
    cpu = [p.cpu_s() - c for p, c in zip(reps.procs, cpu0)]
    machine = {k: v - machine0[k] for k, v in _machine_cpu().items()}
    stats = [await p.stats() for p in reps.procs]

    def delta(i: int, name: str) -> float:
        return float(stats[i]["counters"].get(name, 0)) - float(stats0[i]["counters"].get(name, 0))

    learned = [delta(i, "trainer_packets") for i in range(len(reps.procs))]
    if sum(learned) != total:
        raise RuntimeError(f"the replicas learned {learned} packets, {total:,} were written")
    # DQN updates per packet of the backlog past each replica's replay warm-up (its first
    # learning_starts transitions earn none, live or not): the catch-up rate
    from unistream_trainer.dqn import Hyperparameters

    warm = Hyperparameters().learning_starts
    past_warmup = sum(max(0.0, learned[i] - warm) for i in range(len(reps.procs)))
    if past_warmup:
        _UPDATES[len(reps.procs)] = sum(delta(i, "trainer_updates") for i in range(len(reps.procs))) / past_warmup
    elapsed = end - start
    per = "; ".join(
        f"{p.name}: {learned[i]:.0f} packets, {delta(i, 'trainer_updates'):.0f} DQN updates, "
        f"{delta(i, 'trainer_predecessors_fetched'):.0f} predecessors fetched, {cpu[i]:.1f} CPU s"
        for i, p in enumerate(reps.procs)
    )
    _note(
        row,
        f"{total - acked0:,} packets in {elapsed:.1f} s after the first batch ({acked0}); {per}; machine "
        f"(from the hand-over, {os.cpu_count()} CPUs): {machine['busy']:.1f} CPU s busy, {machine['idle']:.1f} idle, "
        f"{machine['steal']:.1f} stolen",
    )
    return (total - acked0) / elapsed


async def _start(url: str, n: int) -> tuple[aioredis.Redis, _Replicas]:
    client = clients.client(url)
    await client.flushall()
    backlog = packets().seconds(0, BACKLOG_SECONDS)
    await _write(client, backlog[: -len(SYMBOLS)])
    for stream in TRAINING:  # the replicas start at the end
        await client.xgroup_create(stream, keys.GROUP_TRAINER, id="$", mkstream=True)
    return client, _Replicas(url, n)


async def _replicas_replay(url: str, n: int, row: str) -> float:
    client, reps = await _start(url, n)
    try:
        async with reps:
            return await _replay(client, reps, row)
    finally:
        await client.aclose()


async def trainer_packets_per_s_1_replica(url: str, n: int, batch: int) -> float:
    suffix = "_cluster" if is_cluster(url) else ""  # the same row on a Redis Cluster (bench/run.py)
    return await _replicas_replay(url, 1, f"trainer_packets_per_s_1_replica{suffix}")


async def trainer_packets_per_s_3_replicas(url: str, n: int, batch: int) -> float:
    return await _replicas_replay(url, 3, "trainer_packets_per_s_3_replicas")


# DQN updates per packet of the latest backlog learned by n replicas (filled by _replay), and of
# the real-time packets the 2-replica run learns after it (key "live"): the catch-up rate beside
# the live one.
_UPDATES: dict[int | str, float] = {}


async def _updates_per_packet(url: str, key: int | str) -> float:
    if key not in _UPDATES:  # run alone (--only): learn a backlog for it
        if key == "live" or key == 2:
            await _from_two_replicas(url, "trainer_packets_per_s_2_replicas")
        else:
            await _replicas_replay(url, int(key), f"trainer_packets_per_s_{key}_replica{'s' if key != 1 else ''}")
    if key not in _UPDATES:
        raise RuntimeError("the run that measures it gave no value")
    return _UPDATES.pop(key)


async def trainer_updates_per_packet_live(url: str, n: int, batch: int) -> float:
    return await _updates_per_packet(url, "live")


async def trainer_updates_per_packet_1_replica(url: str, n: int, batch: int) -> float:
    return await _updates_per_packet(url, 1)


async def trainer_updates_per_packet_2_replicas(url: str, n: int, batch: int) -> float:
    return await _updates_per_packet(url, 2)


async def trainer_updates_per_packet_3_replicas(url: str, n: int, batch: int) -> float:
    return await _updates_per_packet(url, 3)


# --- two replicas: replay, then a dead replica's packets and merge rounds -----------------------

_CACHE: dict[str, float | RuntimeError] = {}


async def _live(client: aioredis.Redis, first: int) -> None:
    """Real-time packets from second ``first`` on: both symbols every wall second."""
    lap = time.perf_counter()
    for t in range(first, BACKLOG_SECONDS + DEAD_SECONDS + LIVE_SECONDS):
        await _write(client, packets().seconds(t, t + 1))
        lap += 1.0
        await asyncio.sleep(max(0.0, lap - time.perf_counter()))
    raise RuntimeError("out of live packets")


async def _watch_merges(reps: _Replicas, rounds: dict[int, tuple[int, float, str]]) -> None:
    """Collect every replica's ``info.last_merge`` (round -> members, ms, leader) every 0.5 s."""
    while True:
        for p in reps.procs:
            try:
                merge = (await p.stats())["info"].get("last_merge") or {}
            except httpx.HTTPError:
                continue
            if merge:
                rounds.setdefault(int(merge["round"]), (int(merge["members"]), float(merge["duration_ms"]), p.name))
        await asyncio.sleep(0.5)


async def _claim(client: aioredis.Redis, reps: _Replicas) -> float:
    """A consumer takes DEAD_SECONDS of packets and dies; seconds until none of them is pending."""
    dead = packets().seconds(BACKLOG_SECONDS, BACKLOG_SECONDS + DEAD_SECONDS)
    ids = sorted((stream, eid) for stream, eid, _ in dead)
    pipe = client.pipeline(transaction=True)
    for stream, eid, fields in dead:
        pipe.xadd(stream, fields, id=eid)
    pipe.xreadgroup(keys.GROUP_TRAINER, DEAD_CONSUMER, dict.fromkeys(TRAINING, ">"), count=len(dead))
    *_, reply = await pipe.execute()
    read_at = time.perf_counter()
    got = sorted((s(stream), s(eid)) for stream, entries in reply or [] for eid, _ in entries)
    if got != ids:
        raise RuntimeError(f"the dead consumer read {len(got)} entries, not its {len(ids)}")
    owner_changed = 0.0
    deadline = time.monotonic() + CLAIM_TIMEOUT_S
    while True:
        rows = [
            row
            for stream in TRAINING
            for row in await client.xpending_range(stream, keys.GROUP_TRAINER, min="-", max="+", count=100)
            if (stream, s(row["message_id"])) in set(ids)
        ]
        now = time.perf_counter()
        if not owner_changed and any(s(r["consumer"]) != DEAD_CONSUMER for r in rows):
            owner_changed = now
        if not rows:
            break
        for p in reps.procs:
            p.check(f"the dead replica's {len(ids)} packets processed ({len(rows)} pending)", deadline)
        await asyncio.sleep(0.05)
    changed = f"changed owner after {owner_changed - read_at:.1f} s" if owner_changed else "claimed between two polls"
    _note("trainer_claim_s", f"{len(ids)} packets read and never acknowledged; {changed}")
    return now - read_at


async def two_replicas(url: str) -> None:
    """The 2-replica run: replay, then claim and merge rounds on real-time packets; results in _CACHE."""
    client, reps = await _start(url, 2)
    rounds: dict[int, tuple[int, float, str]] = {}
    live: asyncio.Task[None] | None = None
    watch: asyncio.Task[None] | None = None
    try:
        async with reps:
            _CACHE["trainer_packets_per_s_2_replicas"] = await _replay(client, reps, "trainer_packets_per_s_2_replicas")
            watch = asyncio.create_task(_watch_merges(reps, rounds))
            claiming = asyncio.create_task(_claim(client, reps))
            await asyncio.sleep(0.2)  # the dead consumer's MULTI went first
            before = [(await p.stats())["counters"] for p in reps.procs]
            live = asyncio.create_task(_live(client, BACKLOG_SECONDS + DEAD_SECONDS))
            try:
                _CACHE["trainer_claim_s"] = await claiming
            except RuntimeError as exc:
                _CACHE["trainer_claim_s"] = exc
            await _wait_merge(reps, rounds, live)
            after = [(await p.stats())["counters"] for p in reps.procs]

            def total(name: str) -> float:
                return sum(float(a.get(name, 0)) - float(b.get(name, 0)) for a, b in zip(after, before))

            if total("trainer_packets"):
                _UPDATES["live"] = total("trainer_updates") / total("trainer_packets")
                _note(
                    "trainer_updates_per_packet_live",
                    f"{total('trainer_packets'):.0f} packets (one second of both symbols per wall second, and the "
                    f"dead replica's {2 * DEAD_SECONDS}) and {total('trainer_updates'):.0f} DQN updates",
                )
    except RuntimeError as exc:
        for row in ("trainer_packets_per_s_2_replicas", "trainer_claim_s", "trainer_merge_round_ms"):
            _CACHE.setdefault(row, exc)
    finally:
        for task in (live, watch):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (live, watch) if t is not None), return_exceptions=True)
        await client.aclose()


async def _wait_merge(reps: _Replicas, rounds: dict[int, tuple[int, float, str]], live: asyncio.Task[None]) -> None:
    deadline = max(p.started for p in reps.procs) + MERGE_WAIT_S
    while not any(m == 2 for m, _, _ in rounds.values()):
        for p in reps.procs:
            p.check("a merge round of both replicas", deadline)
        if live.done():
            live.result()
        await asyncio.sleep(0.25)
    both = [ms for m, ms, _ in rounds.values() if m == 2]
    _CACHE["trainer_merge_round_ms"] = statistics.median(both)
    from unistream_model.cnn import init_model

    cnn_mb = sum(p.numel() for p in init_model(7).parameters()) * 4 / 1e6
    from unistream_trainer.dqn import Hyperparameters, QNetwork, parameter_count

    dqn_params = parameter_count(QNetwork(OBS_DIM, Hyperparameters().hidden_sizes))
    listed = ", ".join(f"r{r}: {m} members {ms:.0f} ms ({who})" for r, (m, ms, who) in sorted(rounds.items()))
    _note(
        "trainer_merge_round_ms",
        f"rounds {listed}; each submission {dqn_params * 4 / 1e6:.1f} MB of DQN + {cnn_mb:.1f} MB of CNN (float32)",
    )


async def _from_two_replicas(url: str, row: str) -> float:
    if row not in _CACHE:
        await two_replicas(url)
    value = _CACHE.pop(row, None)
    if value is None:
        raise RuntimeError("the 2-replica run gave no value")
    if isinstance(value, RuntimeError):
        raise value
    return value


async def trainer_packets_per_s_2_replicas(url: str, n: int, batch: int) -> float:
    return await _from_two_replicas(url, "trainer_packets_per_s_2_replicas")


async def trainer_claim_s(url: str, n: int, batch: int) -> float:
    return await _from_two_replicas(url, "trainer_claim_s")


async def trainer_merge_round_ms(url: str, n: int, batch: int) -> float:
    return await _from_two_replicas(url, "trainer_merge_round_ms")


def profile_learners(steps: int = 30) -> None:
    """Operator tables of the trainer's and SB3's gradient steps (torch profiler, one thread)."""
    from torch.profiler import ProfilerActivity, profile

    for name, setup, step in (
        ("DQNAgent.learn", _trainer_agent, lambda a, n: a.learn(n)),
        ("SB3 DQN.train", _sb3_model, lambda m, n: m.train(gradient_steps=n, batch_size=64)),
    ):
        learner = setup()
        step(learner, WARMUP_UPDATES)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            step(learner, steps)
            elapsed = time.perf_counter() - start
        print(f"{name}: {1000 * elapsed / steps:.1f} ms per update")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        del learner
        gc.collect()


if __name__ == "__main__":
    if sys.argv[1:] != ["--profile"]:
        sys.exit("usage: python bench/trainer.py --profile (the rows run from bench/run.py)")
    profile_learners()
