"""The dashboard as a user sees it: `unistream dashboard` served by Streamlit, opened in
headless Chromium, showing packets written to a real Redis on its Overview page, following new
packets by itself (the live panels are self-refreshing fragments; the page is never reloaded),
and moving to the Streams page through the sidebar navigation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dashboard_samples as samples
import pytest
import redis
from browser import chromium, needs_chromium, number, open_app, streamlit_server, unistream_command, wait_for_text
from dashboard_samples import SymbolSnapshot

from unistream_common import keys
from unistream_tools.redis_server import RedisServer, free_port, start_redis

pytestmark = [pytest.mark.heavy, pytest.mark.integration, needs_chromium]

SNAPSHOTS = {
    "ETHUSDT": SymbolSnapshot("ETHUSDT", price=3012.55, ticks_seen=45_678, bars_seen=4_321, training_packets=1_234),
    "BTCUSDT": SymbolSnapshot("BTCUSDT", price=97_123.4, ticks_seen=2_345, bars_seen=321, training_packets=56),
}
TICK_CAPACITY = 5_000  # samples.ui_packet's default
BAR_CAPACITY = 3_600
CARD_LINE = r"{s} · {label}: ([\d,]+) / ([\d,]+) \(total ([\d,]+)\)"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _publish_progress(client: redis.Redis, snap: SymbolSnapshot, now_ms: int, more_ticks: int, price: float) -> None:
    """What the pipeline would write a moment later: a new tick batch, a new 1s bar, a status packet."""
    samples.write(
        client,
        keys.ticks(snap.symbol),
        samples.tick_batch(snap.symbol, first_trade_id=snap.ticks_seen + 1, prices=[price], ts_ms=now_ms),
    )
    bar = samples.bar_walk(snap.symbol, end_open_ms=now_ms, count=1, start_price=price)[0]
    samples.write(client, keys.bars(snap.symbol, "1s"), bar, entry_id=f"{bar.open_time_ms}-0")
    status = samples.ui_packet(
        snap.symbol,
        ts_ms=now_ms,
        last_price=price,
        ticks_seen=snap.ticks_seen + more_ticks,
        bars_seen=snap.bars_seen + 1,
        training_packets=snap.training_packets + 1,
    )
    samples.write(client, keys.UI, status)


def _env(redis_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "UNISTREAM_REDIS_URL": redis_url,
        "UNISTREAM_SYMBOLS": ",".join(SNAPSHOTS),
        "UNISTREAM_HTTP_HOST": "127.0.0.1",
        "UNISTREAM_HTTP_PORT": str(port),
        # The test's own pauses must not turn the written ticks stale.
        "UNISTREAM_LIVE_AFTER_S": "300",
    }


def test_dashboard_in_chromium_shows_written_counts_then_follows_new_packets_without_reload(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms(), bars=120)
    port = free_port()
    env = _env(redis_url, port)
    with (
        streamlit_server([*unistream_command(), "dashboard"], port, env, log_path=tmp_path / "streamlit.log") as url,
        chromium() as browser,
        open_app(browser, url) as page,
    ):
        try:
            for snap in SNAPSHOTS.values():
                card = f".st-key-tds-{snap.symbol}"
                ticks = wait_for_text(page, card, CARD_LINE.format(s=snap.symbol, label="Tick cache"))
                assert [number(g) for g in ticks.groups()] == [
                    min(snap.ticks_seen, TICK_CAPACITY),
                    TICK_CAPACITY,
                    snap.ticks_seen,
                ]
                bars = wait_for_text(page, card, CARD_LINE.format(s=snap.symbol, label="1s bars"))
                assert [number(g) for g in bars.groups()] == [
                    min(snap.bars_seen, BAR_CAPACITY),
                    BAR_CAPACITY,
                    snap.bars_seen,
                ]
                price = wait_for_text(page, card, rf"{snap.symbol} · Price: ([\d,.]+)")
                assert number(price[1]) == pytest.approx(snap.price)
                wait_for_text(page, card, rf"{snap.symbol} · Stream: LIVE \(last tick [\d.]+ (s|min) ago\)")
                wait_for_text(page, card, rf"{snap.symbol} · Source: REAL MARKET DATA")
                wait_for_text(page, card, rf"{snap.symbol} · RL agent: training \(1,000 updates\), 512 features")

            # A marker on window survives fragment refreshes but not a reload.
            page.evaluate("window.__unistreamMarker = 'same page'")
            eth = SNAPSHOTS["ETHUSDT"]
            _publish_progress(client, eth, _now_ms(), more_ticks=1_000, price=3020.75)

            grown = wait_for_text(
                page,
                ".st-key-tds-ETHUSDT",
                CARD_LINE.format(s="ETHUSDT", label="Tick cache"),
                accept=lambda m: number(m[3]) == eth.ticks_seen + 1_000,
            )
            assert number(grown[1]) == TICK_CAPACITY
            wait_for_text(
                page,
                ".st-key-tds-ETHUSDT",
                CARD_LINE.format(s="ETHUSDT", label="1s bars"),
                accept=lambda m: number(m[3]) == eth.bars_seen + 1,
            )
            wait_for_text(page, ".st-key-tds-ETHUSDT", r"ETHUSDT · Price: 3,020\.75")
            assert page.evaluate("window.__unistreamMarker") == "same page"

            # The other pages are a click away in the sidebar, still without reloading the page.
            page.get_by_role("link", name="Streams").click()
            wait_for_text(page, ".st-key-streams", r"Streams: \d+ present")
            assert page.evaluate("window.__unistreamMarker") == "same page"
        except BaseException:
            page.screenshot(path=str(tmp_path / "dashboard-failure.png"), full_page=True)
            raise


def test_dashboard_in_chromium_shows_a_banner_while_redis_is_down_and_recovers_by_itself(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms(), bars=30)
    client.close()
    port = free_port()
    restarted: RedisServer | None = None
    with (
        streamlit_server(
            [*unistream_command(), "dashboard"], port, _env(redis_server.url, port), log_path=tmp_path / "streamlit.log"
        ) as url,
        chromium() as browser,
        open_app(browser, url) as page,
    ):
        try:
            card_line = CARD_LINE.format(s="ETHUSDT", label="Tick cache")
            wait_for_text(page, ".st-key-tds", card_line)
            page.evaluate("window.__unistreamMarker = 'same page'")

            redis_server.stop()
            wait_for_text(page, ".st-key-tds", r"Redis unreachable at redis://127\.0\.0\.1:\d+/0: .*Retrying every 1 s")
            wait_for_text(page, ".st-key-services", r"Redis unreachable")

            # Same port, same append-only file: the data written before comes back.
            restarted = start_redis(redis_server.data_dir, port=redis_server.port, appendonly=True)
            match = wait_for_text(page, ".st-key-tds", card_line)
            assert number(match[3]) == SNAPSHOTS["ETHUSDT"].ticks_seen
            assert "Redis unreachable" not in page.locator(".st-key-tds").inner_text()
            assert page.evaluate("window.__unistreamMarker") == "same page"
        except BaseException:
            page.screenshot(path=str(tmp_path / "dashboard-failure.png"), full_page=True)
            raise
        finally:
            if restarted is not None:
                restarted.stop()
