"""The CNN's extremum labels are a function of the stream, not of which replica received a packet.

A label needs the packet of its bar and the one ``k`` bars later; the consumer group hands them
to different replicas. Before the CNN had one owner, each replica learned from its own share and
about half the labels were lost at two replicas (a third survived at three). Now the lease holder
reads every packet in stream order: with 1, 2 or 3 replicas fed the same packets, the labels
learned are exactly those one extrema trainer finds in the whole stream. And every DQN sample a
replica learns from reaches a published model once (the replicas submit deltas, and keep what
they learned since submitting when they adopt a merged round): with one replica, the published
DQN is its own weights, and its input statistics count every state once.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
import torch
from helpers import eventually, running_worker
from safetensors.torch import load as load_safetensors

from unistream_common import codec, keys
from unistream_common.packets import ModelAnnouncement, TrainingDataPacket
from unistream_common.redisio import command_client
from unistream_tools.evaluate import build_packets, files_by_symbol
from unistream_tools.synthetic import write_archive
from unistream_trainer import service
from unistream_trainer.extrema import ExtremaTrainer
from unistream_trainer.service import CNN_CURSOR, worker
from unistream_trainer.settings import TrainerSettings

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

T0 = 1_739_923_200_000  # 2025-02-19 00:00 UTC
SYMBOLS = ("ETHUSDT", "BTCUSDT")
SECONDS = 150


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[TrainingDataPacket]:
    """Two and a half minutes of two symbols' packets as the features service builds them, linked per symbol."""
    tmp = tmp_path_factory.mktemp("archives")
    files = [write_archive(tmp, s, T0, SECONDS, planted=False, seed=k) for k, s in enumerate(SYMBOLS)]
    out, last = [], {}
    built = sorted(build_packets(files_by_symbol(files), 300), key=lambda p: p.ts_event_ms)  # stable: symbols' order
    for n, p in enumerate(built):
        entry_id = f"{p.ts_event_ms}-{n}"
        prev_id, prev_ts = last.get(p.symbol, ("", 0))
        out.append(msgspec.structs.replace(p, prev_id=prev_id, prev_ts_event_ms=prev_ts))
        last[p.symbol] = (entry_id, p.ts_event_ms)
    return out


def labels_in(packets: list[TrainingDataPacket]) -> int:
    trainer = ExtremaTrainer(seed=7, buffer_size=2_000)
    return sum(len(trainer.observe(p)) for p in packets)


async def write(r: aioredis.Redis, packets: list[TrainingDataPacket]) -> dict[str, str]:
    """Each packet on its symbol's training stream; the last entry id of each."""
    pipe = r.pipeline(transaction=False)
    last: dict[str, str] = {}
    for n, p in enumerate(packets):
        last[p.symbol] = f"{p.ts_event_ms}-{n}"
        pipe.xadd(keys.training(p.symbol), codec.encode(p), id=last[p.symbol])
    await pipe.execute()
    return last


async def announcements(r: aioredis.Redis, name: str) -> list[ModelAnnouncement]:
    out = [codec.decode(f) for _, f in await r.xrange(keys.MODELS)]
    return [a for a in out if isinstance(a, ModelAnnouncement) and a.name == name]


@pytest.mark.parametrize("replicas", [1, 2, 3])
async def test_every_label_and_every_dqn_sample_is_learned_once_whatever_the_replica_count(
    redis_url: str, tmp_path: Path, packets: list[TrainingDataPacket], replicas: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    services: list[service.TrainerService] = []

    class Recorded(service.TrainerService):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            services.append(self)

    monkeypatch.setattr(service, "TrainerService", Recorded)
    expected = labels_in(packets)
    assert expected > len(packets) // 3, "the 1s bars give most packets a label"
    r = command_client(redis_url)
    try:
        await r.flushall()
        settings = [
            TrainerSettings(
                redis_url=redis_url, symbols=SYMBOLS, consumer_name=f"trainer-{k}", model_dir=str(tmp_path / str(k)),
                dqn_hidden_sizes="8", dqn_buffer_size=200, dqn_batch_size=8, dqn_learning_starts=8,
                dqn_updates_per_transition=0.1, merge_every_s=1.0, metrics_every_s=0.5,
                extrema_updates_per_packet=0.02, claim_idle_ms=5_000, dqn_normalize=True,
            )  # type: ignore[arg-type]
            for k in range(replicas)
        ]  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            contexts = [await stack.enter_async_context(running_worker("trainer", s, worker)) for s in settings]
            last = await write(r, packets)

            async def all_learned() -> bool:
                cursors = {k.decode(): v.decode() for k, v in (await r.hgetall(CNN_CURSOR)).items()}
                return cursors == last and sum(c.stats.total("trainer_extrema_packets") for c in contexts) == len(
                    packets
                )

            await eventually(all_learned, timeout=120, what="the CNN's owner learned from the whole stream")

            async def every_sample_merged() -> bool:  # each replica's learning reaches a published DQN once
                merged = sum(int(a.metrics["merge/samples"]) for a in await announcements(r, "dqn"))
                return merged == sum(c.info()["transitions"] for c in contexts) > 0

            await eventually(every_sample_merged, timeout=30, what="every DQN sample in a merged model")
            # the input statistics count each state once, whichever replica learned from it
            (newest,) = (await announcements(r, "dqn"))[-1:]
            published = load_safetensors(await r.get(newest.uri.removeprefix("redis:")))
            assert published["input_stats.count"].item() == sum(c.info()["transitions"] for c in contexts)
            if replicas == 1:  # one replica: the published DQN is its weights, nothing lost on the way
                await asyncio.sleep(2.5)  # it adopted the last round (no packet since)
                (newest,) = (await announcements(r, "dqn"))[-1:]
                published = load_safetensors(await r.get(newest.uri.removeprefix("redis:")))
                own = services[0].core.online_weights()
                assert own is not None and all(torch.equal(published[k], own[k]) for k in own)
            infos = [c.info() for c in contexts]
            assert sum(i["cnn_owner"] for i in infos) == 1, infos
            assert sum(i["extrema_labels"] for i in infos) == expected
            received = sum(c.stats.total("trainer_packets") for c in contexts)
            assert received <= len(packets)
            if replicas > 1:
                shares = [c.stats.total("trainer_packets") for c in contexts]
                assert sum(1 for n in shares if n > 0) > 1, f"the group spread the packets: {shares}"
    finally:
        await r.aclose()
