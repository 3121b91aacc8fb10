"""The I/O shell every service shares: HTTP probes, logging, and one worker task.

``create_app`` gives ``/healthz`` (liveness, no dependencies), ``/readyz`` (Redis reachable and
the worker alive and ready, else 503), ``/metrics`` (Prometheus text) and ``/stats`` (JSON).
``run_service`` serves that app with uvicorn and runs the worker from the app's lifespan; when
the worker dies the process exits non-zero so the supervisor (or compose) restarts it, and when
it returns (a finite job such as a replay) the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from unistream_common.heartbeat import HEARTBEAT_EVERY_S, beat_fields, queue_beat, queue_goodbye
from unistream_common.redisio import REDIS_ERRORS, access_problem, beat_pipeline, command_client, safe_url
from unistream_common.settings import EXIT_BAD_CONFIG, CommonSettings
from unistream_common.stats import Stats

if TYPE_CHECKING:
    from unistream_common.consumer import StreamRuntime

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"ingest": 8001, "aggregator": 8002, "features": 8003, "trainer": 8004, "dashboard": 8501}


@dataclass
class ServiceContext:
    """What a service's worker and probes share."""

    name: str
    settings: CommonSettings
    stats: Stats
    redis: aioredis.Redis
    ready: Callable[[], bool] = lambda: True
    info: Callable[[], dict[str, Any]] = dict
    # Extra HTTP routes of the service (e.g. ingest's /v1/ticks), mounted beside the probes.
    routers: list[APIRouter] = field(default_factory=list)
    worker_error: BaseException | None = field(default=None, init=False)


Worker = Callable[[ServiceContext], Awaitable[None]]


async def run_consumers(
    ctx: ServiceContext,
    runtime: StreamRuntime,
    info: Callable[[], dict[str, Any]],
    *,
    ready: Callable[[], bool] | None = None,
    run: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """A consumer service's worker body: probes report ``runtime`` (or ``ready``) and ``info``;
    ``run`` (default ``runtime.run``) goes until cancelled; the runtime's clients are closed after."""
    ctx.ready = ready or (lambda: runtime.ready)
    ctx.info = info
    try:
        await (run() if run is not None else runtime.run())
    finally:
        await runtime.close()


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def heartbeat(ctx: ServiceContext, started_ms: int) -> None:
    """Say in Redis, every :data:`~unistream_common.heartbeat.HEARTBEAT_EVERY_S` seconds, that this
    process runs and whether it is ready (for the dashboard); see :mod:`unistream_common.heartbeat`.

    Redis errors are counted and retried at the next beat: the heartbeat never stops a service.
    """
    consumer = ctx.settings.consumer(ctx.name)
    while True:
        fields = beat_fields(ctx.name, consumer, started_ms=started_ms, ready=ctx.ready())
        try:
            pipe = beat_pipeline(ctx.redis)
            queue_beat(pipe, ctx.name, consumer, fields, int(time.time() * 1000))
            await pipe.execute()
        except REDIS_ERRORS:
            ctx.stats.inc("heartbeat_errors")
        await asyncio.sleep(HEARTBEAT_EVERY_S)


def create_app(ctx: ServiceContext, worker: Worker, on_worker_exit: Callable[[], None] = lambda: None) -> FastAPI:
    """FastAPI app with the four probes; ``worker(ctx)`` runs for the app's lifetime, beside a heartbeat."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(worker(ctx), name=f"{ctx.name}:worker")
        app.state.worker_task = task
        beat = asyncio.create_task(heartbeat(ctx, int(time.time() * 1000)), name=f"{ctx.name}:heartbeat")

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                return
            if t.exception() is None:  # a finite job (a replay) finished: a clean exit
                log.info("%s worker finished", ctx.name)
            else:
                ctx.worker_error = t.exception()
                log.error("%s worker stopped: %r", ctx.name, ctx.worker_error, exc_info=t.exception())
            on_worker_exit()

        task.add_done_callback(done)
        try:
            yield
        finally:
            beat.cancel()
            task.remove_done_callback(done)
            task.cancel()
            # Bounded: a cancellation lost inside redis-py on Python 3.11 must not hang shutdown.
            await asyncio.wait({task}, timeout=10)
            if not task.done():
                log.error("%s worker ignored cancellation for 10 s; exiting anyway", ctx.name)
            with contextlib.suppress(*REDIS_ERRORS):
                pipe = beat_pipeline(ctx.redis)
                queue_goodbye(pipe, ctx.name, ctx.settings.consumer(ctx.name))
                await pipe.execute()
            await ctx.redis.aclose()

    app = FastAPI(title=f"unistream {ctx.name}", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": ctx.name}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reasons: list[str] = []
        try:
            await asyncio.wait_for(ctx.redis.ping(), timeout=1.0)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            reasons.append(f"redis unreachable: {exc!r}")
        task = getattr(app.state, "worker_task", None)
        if task is None or task.done():
            reasons.append("worker not running")
        elif not ctx.ready():
            reasons.append("worker not ready")
        code = 503 if reasons else 200
        return JSONResponse({"ready": not reasons, "service": ctx.name, "reasons": reasons}, status_code=code)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(ctx.stats.prometheus(), media_type="text/plain; version=0.0.4")

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {**ctx.stats.as_dict(), "info": ctx.info()}

    for router in ctx.routers:
        app.include_router(router)
    return app


class _Server(uvicorn.Server):
    """uvicorn re-raises a handled SIGINT/SIGTERM after shutting down; a requested stop is a
    clean stop here, so the process exits 0 and supervisors do not count it as a crash."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def run_service(
    name: str,
    settings: CommonSettings,
    worker: Worker,
    stats: Stats | None = None,
    routers: list[APIRouter] | None = None,
) -> int:
    """Serve probes (and ``routers``) and run ``worker`` until SIGINT/SIGTERM (exit 0) or it fails (exit 1).

    Credentials that Redis refuses stop start-up with one line and exit status 2 (bad
    configuration, as for a bad setting): restarting cannot fix them.
    """
    setup_logging(settings.log_level)
    problem = access_problem(settings.redis_url)
    if problem is not None:
        log.error("%s: %s; fix UNISTREAM_REDIS_URL", name, problem)
        return EXIT_BAD_CONFIG
    ctx = ServiceContext(
        name=name,
        settings=settings,
        stats=stats or Stats(name),
        redis=command_client(settings.redis_url, name=f"{name}:probe", timeout_s=2.0),
        routers=list(routers or []),
    )
    port = settings.http_port or DEFAULT_PORTS.get(name, 8000)
    server: _Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(ctx, worker, on_worker_exit=stop)
    config = uvicorn.Config(app, host=settings.http_host, port=port, log_level="warning", lifespan="on")
    server = _Server(config)
    log.info("%s: probes on http://%s:%d, redis %s", name, settings.http_host, port, safe_url(settings.redis_url))
    server.run()
    if ctx.worker_error is not None:
        return 1
    return 0 if server.started else 1
