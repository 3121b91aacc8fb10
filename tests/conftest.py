"""Shared fixtures: a real Redis server started on a free port for the test, stopped after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from unistream_tools.redis_server import RedisCluster, RedisServer, start_cluster, start_redis

REPO = Path(__file__).resolve().parents[1]


INTEGRATION = REPO / "tests" / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under ``tests/integration`` is marked ``integration`` (a module cannot forget it:
    ``pytest -m "not integration and not e2e"`` is the run without a Redis server).

    Files marked ``heavy`` first: ``make test``'s workers take a file at a time in this order
    (``--no-loadscope-reorder``: xdist would otherwise start with the files of most tests, leaving
    the one-test end-to-end files for last), and a long file picked up last leaves the other
    worker idle while it runs (longest first)."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable: file order kept


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server of our own (free port, never 6379), stopped after the test."""
    server = start_redis(tmp_path / "redis", appendonly=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server shared by a module's tests (each test must use its own keys or flush)."""
    server = start_redis(tmp_path_factory.mktemp("redis"), appendonly=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real Redis Cluster of our own: 3 masters with a replica each on free ports, shared by a
    module's tests (each test uses its own keys), stopped after."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1, appendonly=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def module_one_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A one-node Redis Cluster (every slot on one server) shared by a module's tests."""
    cluster = start_cluster(tmp_path_factory.mktemp("one-node-cluster"), masters=1, replicas=0)
    try:
        yield cluster
    finally:
        cluster.stop()


# The password of :func:`password_redis`: what `make deploy/.env` writes (hex, URL-safe).
REDIS_PASSWORD = "0f3a9c1d7e5b2a4c6e8f0a1b"


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of our own that requires :data:`REDIS_PASSWORD` (``--requirepass``)."""
    server = start_redis(tmp_path / "redis", extra_args=["--requirepass", REDIS_PASSWORD])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["single", "cluster"])
def dashboard_redis(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The module's Redis, emptied, as the dashboard pages read it (UNISTREAM_REDIS_URL, two
    symbols, no heartbeat thread), with no cached reads from an earlier test (the cache key is the
    URL, which every test of the module shares). Each test runs twice: on a single Redis and on a
    one-node Redis Cluster (every slot on one server: the dashboard reads with the cluster client,
    and the server refuses what spans two slots), which the test writes to with a plain client."""
    import streamlit as st

    if request.param == "cluster":
        server = request.getfixturevalue("module_one_node_cluster").nodes[0]
        url = request.getfixturevalue("module_one_node_cluster").url
    else:
        server = request.getfixturevalue("module_redis")
        url = server.url
    monkeypatch.setenv("UNISTREAM_REDIS_URL", url)
    monkeypatch.setenv("UNISTREAM_SYMBOLS", "ETHUSDT,BTCUSDT")
    monkeypatch.setenv("UNISTREAM_HEARTBEAT_S", "0")
    conn = redis.Redis(port=server.port)
    conn.flushall()
    st.cache_data.clear()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(autouse=True)
def _no_ambient_unistream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit a developer's UNISTREAM_* settings (a stray Redis URL above all)."""
    for key in list(os.environ):
        if key.startswith("UNISTREAM_") and key != "UNISTREAM_REDIS_SERVER":
            monkeypatch.delenv(key, raising=False)
