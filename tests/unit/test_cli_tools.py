"""The pure parts of `unistream tail` and `unistream status`: records, lines, overrun, URLs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unistream_common import codec
from unistream_common.groups import group_overrun
from unistream_common.packets import MetricsPacket, Tick, TickBatch
from unistream_common.redisio import safe_url
from unistream_tools.connection import DEFAULT_REDIS_URL, redis_url_from
from unistream_tools.status import format_age, format_status
from unistream_tools.tail import entry_records, format_record

T0 = 1_700_000_000_000


def batch() -> TickBatch:
    return TickBatch(
        symbol="ETHUSDT",
        source="REAL",
        ticks=[
            Tick(trade_id=1, price=3012.55, size=0.012, aggressor_side="BUY", ts_event_ms=T0, ts_recv_ms=T0 + 5),
            Tick(trade_id=2, price=3012.5, size=1.5, aggressor_side="SELL", ts_event_ms=T0 + 1, ts_recv_ms=T0 + 6),
        ],
    )


def test_a_tick_batch_becomes_one_record_per_tick_with_symbol_and_source() -> None:
    records = entry_records("md:ticks:{ETHUSDT}", "5-0", codec.encode(batch()))
    assert [r["trade_id"] for r in records] == [1, 2]
    assert all(r["symbol"] == "ETHUSDT" and r["source"] == "REAL" and r["type"] == "tick" for r in records)
    assert records[0]["price"] == 3012.55 and records[1]["aggressor_side"] == "SELL"


def test_text_line_names_every_field_and_keeps_prices_exact() -> None:
    record = entry_records("s", "5-0", codec.encode(batch()))[0]
    line = format_record(record)
    assert line.startswith("5-0 tick ")
    assert "symbol=ETHUSDT" in line and "source=REAL" in line and "price=3012.55" in line and "size=0.012" in line


def test_long_float_vectors_are_summarised_and_dicts_stay_json() -> None:
    line = format_record({"id": "1-0", "type": "x", "state": [0.5] * 10, "pair": [1.0, 2.0], "m": {"a": 1.0}})
    assert "state=[10 floats]" in line and "pair=[1.0,2.0]" in line and 'm={"a":1.0}' in line


def test_other_packets_are_one_record_each() -> None:
    packet = MetricsPacket(producer="trainer-0", ts_ms=T0, step=3, metrics={"losses/td_loss": 0.5})
    (record,) = entry_records("ml:metrics", "7-0", codec.encode(packet))
    assert record["type"] == "metrics" and record["metrics"] == {"losses/td_loss": 0.5}
    assert json.loads(codec.to_json(record))["step"] == 3


def test_undecodable_fields_raise_decode_error_with_the_reason() -> None:
    with pytest.raises(codec.DecodeError, match="unknown packet type"):
        entry_records("s", "1-0", {b"type": b"nope", b"v": b"1", b"data": b""})


@pytest.mark.parametrize(
    ("args", "overrun"),
    [
        # Redis 7: 10 added, 5 left (first 6-0). Read 3 of the 5 that went: 2 were lost.
        (("3-0", 3, 5, "6-0", "10-0", 10), True),
        # read all 5 that went, and the next one is 6-0: nothing lost, though 5-0 < 6-0
        (("5-0", 5, 5, "6-0", "10-0", 10), False),
        # never read (0-0, entries-read None) and 5 were trimmed
        (("0-0", None, 5, "6-0", "10-0", 10), True),
        # caught up, nothing trimmed
        (("10-0", 10, 10, "1-0", "10-0", 10), False),
        # nothing trimmed, the group simply has not started
        (("0-0", None, 10, "1-0", "10-0", 10), False),
        # trimmed to empty while unread
        (("3-0", 3, 0, None, "10-0", 10), True),
        (("10-0", 10, 0, None, "10-0", 10), False),
        # Redis 6.2 (no counters): below the first entry after having read something
        (("3-0", None, 5, "6-0", "10-0", None), True),
        (("0-0", None, 5, "6-0", "10-0", None), False),
        (("7-0", None, 5, "6-0", "10-0", None), False),
    ],
)
def test_overrun_means_trimming_removed_entries_the_group_had_not_read(args: tuple, overrun: bool) -> None:
    assert group_overrun(*args) is overrun


@pytest.mark.parametrize(
    ("ms", "text"),
    [(None, "-"), (0, "0 ms"), (999, "999 ms"), (12_300, "12.3 s"), (252_000, "4.2 min"), (3 * 3_600_000, "3.0 h")],
)
def test_ages_are_short_and_human(ms: int | None, text: str) -> None:
    assert format_age(ms) == text


def test_redis_url_comes_from_flag_then_environment_then_a_running_supervisor(tmp_path: Path) -> None:
    state = tmp_path / "run.json"
    assert redis_url_from(None, {}, state) == (DEFAULT_REDIS_URL, "default")
    state.write_text(json.dumps({"redis_url": "redis://127.0.0.1:6390/0"}))
    assert redis_url_from(None, {}, state)[0] == "redis://127.0.0.1:6390/0"
    assert redis_url_from(None, {"UNISTREAM_REDIS_URL": "redis://e:1/0"}, state)[0] == "redis://e:1/0"
    assert redis_url_from("redis://f:2/0", {"UNISTREAM_REDIS_URL": "redis://e:1/0"}, state)[0] == "redis://f:2/0"
    # a run whose Redis has compose's ACL users records the tools' login beside the masked URL
    state.write_text(json.dumps({"redis_url": "redis://127.0.0.1:6390/0", "tools_redis_url": "redis://d:pw@h:1/0"}))
    assert redis_url_from(None, {}, state)[0] == "redis://d:pw@h:1/0"


def test_passwords_are_masked_in_messages() -> None:
    assert safe_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert safe_url("redis://host:6379/0") == "redis://host:6379/0"


def test_status_text_shows_lag_na_and_overrun() -> None:
    stream = "md:ticks:{ETHUSDT}"
    status = {
        "redis_version": "6.2.14",
        "symbols": ["ETHUSDT"],
        "streams": [
            {
                "name": stream,
                "exists": True,
                "length": 5,
                "first_id": "6-0",
                "last_id": "10-0",
                "last_entry_age_ms": 1500,
            },
            {"name": "ml:training", "exists": False},
        ],
        "groups": [
            {
                "stream": stream,
                "name": "aggregator",
                "consumers": 1,
                "pending": 2,
                "lag": None,
                "last_delivered_id": "3-0",
                "overrun": True,
            }
        ],
        "consumers": [
            {
                "stream": stream,
                "group": "aggregator",
                "name": "aggregator-1",
                "pending": 2,
                "idle_ms": 40,
                "inactive_ms": None,
            },
        ],
    }
    lines = format_status(status, "redis://127.0.0.1:1/0")
    text = "\n".join(lines)
    assert "lag n/a" in text and "OVERRUN" in text and "1.5 s" in text
    assert "consumer aggregator-1: pending 2, idle 40 ms" in text and "inactive" not in text
    assert "ml:training" in text and "(no stream)" in text
    ticks_row = next(i for i, line in enumerate(lines) if line.startswith(stream))
    assert lines[ticks_row + 1].strip().startswith("group aggregator:")
