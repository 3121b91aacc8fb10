"""The probes every service shares, against a real Redis and an unreachable one."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from unistream_common.redisio import command_client
from unistream_common.service import ServiceContext, create_app
from unistream_common.settings import CommonSettings
from unistream_common.stats import Stats
from unistream_tools.redis_server import free_port


def context(url: str, ready: bool = True) -> ServiceContext:
    stats = Stats("demo")
    stats.inc("ticks_written", 5, symbol="ETHUSDT")
    return ServiceContext(
        name="demo",
        settings=CommonSettings(redis_url=url),
        stats=stats,
        redis=command_client(url, timeout_s=0.5),
        ready=lambda: ready,
        info=lambda: {"source": "SYNTHETIC"},
    )


async def idle(ctx: ServiceContext) -> None:
    await asyncio.Event().wait()


async def crash(ctx: ServiceContext) -> None:
    raise RuntimeError("boom")


def test_probes_report_live_ready_metrics_and_stats(redis_url: str) -> None:
    with TestClient(create_app(context(redis_url), idle)) as client:
        assert client.get("/healthz").json() == {"status": "ok", "service": "demo"}
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json()["ready"] is True
        m = client.get("/metrics")
        assert m.headers["content-type"].startswith("text/plain")
        assert 'unistream_ticks_written_total{service="demo",symbol="ETHUSDT"} 5.0' in m.text
        s = client.get("/stats").json()
        assert s["counters"]["ticks_written"] == {"symbol=ETHUSDT": 5}
        assert s["info"] == {"source": "SYNTHETIC"}


def test_readyz_is_503_when_redis_is_unreachable_but_healthz_stays_ok() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(context(url), idle)) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503
        assert any("redis unreachable" in reason for reason in r.json()["reasons"])


def test_readyz_is_503_when_the_worker_is_not_ready_or_dead(redis_url: str) -> None:
    with TestClient(create_app(context(redis_url, ready=False), idle)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["reasons"] == ["worker not ready"]
    stopped: list[bool] = []
    with TestClient(create_app(context(redis_url), crash, on_worker_exit=lambda: stopped.append(True))) as client:
        for _ in range(50):
            if stopped:
                break
            client.get("/healthz")
        r = client.get("/readyz")
        assert r.status_code == 503 and "worker not running" in r.json()["reasons"]
    assert stopped == [True]
