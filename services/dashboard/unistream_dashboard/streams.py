"""Streams page: stream, group and consumer statistics, dead letters and data quality.

Pure view models first (no Redis, no Streamlit, no clock: the current time arrives as ``now_ms``,
milliseconds since the Unix epoch), then the three live panels and :func:`render`. Streamlit
anchors: containers keyed ``streams``, ``dlq`` and ``quality``; tables keyed ``streams-table``,
``groups-table``, ``consumers-table``, ``dlq-table`` and ``quality-table``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import streamlit as st

from unistream_common.groups import group_overrun
from unistream_common.redisio import REDIS_ERRORS, safe_url
from unistream_dashboard import data
from unistream_dashboard.data import DeadLetter, DeadLetters, GroupInfo, StreamInfo
from unistream_dashboard.settings import DashboardSettings
from unistream_dashboard.widgets import (
    NA,
    SEP,
    clock_ms,
    fetched_caption,
    fmt_age,
    fmt_int,
    id_ms,
    live,
    md_escape,
    refresh_text,
    show_redis_error,
)

# --------------------------------------------------------------------------- stream statistics


def fmt_rate(rate: float | None) -> str:
    """Entries per second: ``0``, ``0.5``, ``12.3``, ``1,234``; n/a when unknown."""
    if rate is None or not math.isfinite(rate):
        return NA
    if rate >= 100:
        return fmt_int(round(rate))
    if rate == 0:
        return "0"
    return f"{rate:.1f}" if rate >= 0.05 else f"{rate:.2g}"


def overrun_count(stream: StreamInfo, group: GroupInfo) -> int | None:
    """Entries trimmed from ``stream`` before ``group`` read them: a count when Redis >= 7's counters
    tell it, else None. Only meaningful when :func:`overrun_alarm` raised an alarm."""
    if stream.entries_added is None or group.entries_read is None:
        return None
    return max(stream.entries_added - stream.length - group.entries_read, 0)


def overrun_alarm(stream: StreamInfo, group: GroupInfo) -> str | None:
    """``OVERRUN: 2 entries trimmed before this group read them`` (or without a count when Redis
    cannot tell how many) when trimming removed entries the group had not read, else None.

    The judgement is :func:`unistream_common.groups.group_overrun`, the one ``unistream status`` uses.
    """
    last_generated = stream.last_generated_id or stream.last_entry_id or group.last_delivered_id
    lost = group_overrun(
        group.last_delivered_id,
        group.entries_read,
        stream.length,
        stream.first_entry_id,
        last_generated,
        stream.entries_added,
    )
    if not lost:
        return None
    count = overrun_count(stream, group)
    if count:
        return f"OVERRUN: {fmt_int(count)} {'entry' if count == 1 else 'entries'} trimmed before this group read them"
    return "OVERRUN: entries trimmed before this group read them"


def overrun_alarms(streams: Iterable[StreamInfo]) -> list[str]:
    """One alarm line per overrun group: ``md:ticks:{ETHUSDT} · group aggregator: OVERRUN: ...``."""
    return [
        f"{md_escape(s.name)}{SEP}group {md_escape(g.name)}: {alarm}"
        for s in streams
        for g in s.groups
        if (alarm := overrun_alarm(s, g))
    ]


def _rate_cell(stream: StreamInfo, rate: float | None) -> str:
    if rate is not None:
        return fmt_rate(rate)
    return "measuring" if stream.entries_added is not None else f"{NA} (Redis < 7)"


def stream_rows(
    streams: Iterable[StreamInfo], now_ms: int, rates: Mapping[str, float | None] | None = None
) -> list[dict[str, str]]:
    """One row per stream: entries, entries/s, total added, last entry's age, groups, first/last id.

    ``entries/s`` says ``measuring`` until two reads of the counter are apart, and n/a on Redis < 7
    (which keeps no counter).
    """
    rates = rates or {}
    return [
        {
            "stream": s.name,
            "entries": fmt_int(s.length),
            "entries/s": _rate_cell(s, rates.get(s.name)),
            "added": fmt_int(s.entries_added),
            "last entry": f"{fmt_age(now_ms - id_ms(s.last_entry_id))} ago" if s.last_entry_id else "empty",
            "groups": fmt_int(len(s.groups)),
            "first id": s.first_entry_id or NA,
            "last id": s.last_entry_id or NA,
        }
        for s in streams
    ]


def group_rows(streams: Iterable[StreamInfo]) -> list[dict[str, str]]:
    """One row per (stream, group): consumers, pending, lag (``n/a`` when Redis cannot tell, never
    a made-up 0), last delivered id, entries read and the trimming check (``ok`` or the alarm)."""
    return [
        {
            "stream": s.name,
            "group": g.name,
            "consumers": fmt_int(g.consumers),
            "pending": fmt_int(g.pending),
            "lag": fmt_int(g.lag),
            "last delivered": g.last_delivered_id,
            "read": fmt_int(g.entries_read),
            "trimmed": overrun_alarm(s, g) or "ok",
        }
        for s in streams
        for g in s.groups
    ]


def consumer_rows(streams: Iterable[StreamInfo]) -> list[dict[str, str]]:
    """One row per consumer: its pending entries, idle time, and inactive time when known."""
    return [
        {
            "stream": s.name,
            "group": g.name,
            "consumer": c.name,
            "pending": fmt_int(c.pending),
            "idle": fmt_age(c.idle_ms),
            "inactive": fmt_age(c.inactive_ms) if c.inactive_ms is not None and c.inactive_ms >= 0 else NA,
        }
        for s in streams
        for g in s.groups
        for c in g.consumer_infos
    ]


def streams_line(streams: Sequence[StreamInfo], missing: Sequence[str]) -> str:
    """``Streams: 9 present, 5 not created yet · groups 3 · consumers 4 · pending 12``."""
    groups = [g for s in streams for g in s.groups]
    consumers = sum(len(g.consumer_infos) for g in groups)
    pending = sum(g.pending for g in groups)
    return (
        f"Streams: {len(streams)} present, {len(missing)} not created yet{SEP}groups {len(groups)}"
        f"{SEP}consumers {consumers}{SEP}pending {fmt_int(pending)}"
    )


# --------------------------------------------------------------------------- dead letters


def dead_letter_reasons(latest: Sequence[DeadLetter], now_ms: int) -> str:
    """Newest first: ``3 s ago by aggregator-1 (aggregator): bar rejected: ...; ...``."""
    parts = []
    for d in latest:
        when = f"{fmt_age(now_ms - (d.ts_ms if d.ts_ms is not None else id_ms(d.entry_id)))} ago"
        who = f" by {d.consumer}" + (f" ({d.group})" if d.group else "") if d.consumer else ""
        parts.append(f"{when}{who}: {d.reason}")
    return "; ".join(parts)


def dead_letter_rows(dlqs: Iterable[DeadLetters], now_ms: int) -> list[dict[str, str]]:
    """One row per dead-letter stream that holds entries: count, total ever, newest reasons."""
    return [
        {
            "stream": d.stream,
            "dead letters": fmt_int(d.length),
            "total": fmt_int(d.entries_added),
            "latest reasons": dead_letter_reasons(d.latest, now_ms),
        }
        for d in dlqs
        if d.length or d.latest
    ]


def dead_letters_line(dlqs: Sequence[DeadLetters]) -> str:
    """``Dead letters: none`` or ``Dead letters: 7 in 2 streams``."""
    held = [d for d in dlqs if d.length]
    if not held:
        return "Dead letters: none"
    total = sum(d.length for d in held)
    return f"Dead letters: {fmt_int(total)} in {len(held)} {'stream' if len(held) == 1 else 'streams'}"


# --------------------------------------------------------------------------- data quality


def quality_rows(rows: Iterable[Mapping[str, object]], now_ms: int) -> list[dict[str, str]]:
    """Per symbol, the aggregator's counters (``quality.collect_bar_quality`` rows) as display strings.

    ``score`` is :func:`unistream_common.quality.score` (n/a before the first counter). Columns:
    symbol, owner, score, ticks applied, late, duplicates, redelivered, 1s bars, empty filled
    (empty intervals filled with flat bars), incomplete (bars on a gap), skipped (empty intervals
    without a bar), gaps (trades missing), last bar latency, updated.
    """

    def num(row: Mapping[str, object], key: str) -> str:
        value = row.get(key)
        return fmt_int(value) if isinstance(value, int | float) else NA

    out = []
    for row in rows:
        score = row.get("score")
        updated = row.get("updated_ms")
        latency = row.get("last_bar_latency_ms")
        out.append(
            {
                "symbol": str(row.get("symbol", "")),
                "owner": str(row.get("owner") or "(none)"),
                "score": f"{score:.2f}" if isinstance(score, int | float) else NA,
                "ticks applied": num(row, "ticks_applied"),
                "late": num(row, "ticks_late"),
                "duplicates": num(row, "ticks_duplicate"),
                "redelivered": num(row, "ticks_already_applied"),
                "1s bars": num(row, "bars_1s"),
                "empty filled": num(row, "bars_filled"),
                "incomplete": num(row, "bars_incomplete"),
                "skipped": num(row, "intervals_skipped"),
                "gaps": f"{num(row, 'gaps')} ({num(row, 'trades_missing')} trades missing)",
                "bar latency": f"{fmt_int(latency)} ms" if isinstance(latency, int) else NA,
                "updated": f"{fmt_age(now_ms - updated)} ago" if isinstance(updated, int) and updated else NA,
            }
        )
    return out


# --------------------------------------------------------------------------- Streamlit


def _read_streams(settings: DashboardSettings) -> data.StreamsRead | None:
    """The Streams page's statistics (one cached read both panels share), or None after saying
    that Redis failed."""
    try:
        return data.read_streams(settings.redis_url, settings.symbols, settings.dlq_reasons)
    except REDIS_ERRORS as exc:
        show_redis_error(settings, exc)
        return None


def stream_statistics_panel(settings: DashboardSettings) -> None:
    """Streams, consumer groups and consumers: lengths, entries/s, pending, lag, trimming overruns."""
    with st.container(key="streams"):
        st.subheader("Stream statistics")
        streams = _read_streams(settings)
        if streams is None:
            return
        now_ms = streams.time_ms or clock_ms()
        st.markdown(streams_line(streams.streams, streams.missing))
        for alarm in overrun_alarms(streams.streams):
            st.error(alarm, icon=":material/warning:")
        if streams.streams:
            st.dataframe(stream_rows(streams.streams, now_ms, streams.rates), hide_index=True, key="streams-table")
        else:
            st.info("No streams in Redis yet: nothing has been written (is ingest running?).")
        groups = group_rows(streams.streams)
        if groups:
            st.markdown("**Consumer groups**")
            st.dataframe(groups, hide_index=True, key="groups-table")
        consumers = consumer_rows(streams.streams)
        if consumers:
            st.markdown("**Consumers**")
            st.dataframe(consumers, hide_index=True, key="consumers-table")
        if streams.missing:
            st.caption("Not created yet: " + ", ".join(md_escape(m) for m in streams.missing))
        st.caption(fetched_caption(streams.fetch_ms))


def dead_letters_panel(settings: DashboardSettings) -> None:
    """Entries the consumers gave up on, per stream, with the newest reasons."""
    with st.container(key="dlq"):
        st.subheader("Dead letters")
        streams = _read_streams(settings)
        if streams is None:
            return
        now_ms = streams.time_ms or clock_ms()
        st.markdown(dead_letters_line(streams.dead_letters))
        rows = dead_letter_rows(streams.dead_letters, now_ms)
        if rows:
            st.dataframe(rows, hide_index=True, key="dlq-table")
        st.caption(fetched_caption(streams.fetch_ms))


def data_quality_panel(settings: DashboardSettings) -> None:
    """The aggregator's data-quality counters and score per symbol (md:quality:{SYMBOL})."""
    with st.container(key="quality"):
        st.subheader("Data quality")
        try:
            quality = data.read_quality(settings.redis_url, settings.symbols)
        except REDIS_ERRORS as exc:
            show_redis_error(settings, exc)
            return
        now_ms = clock_ms()
        rows = quality_rows(quality.rows, now_ms)
        if not any(r.get("score") is not None for r in quality.rows):
            st.info("No data-quality counters yet: the aggregator has not emitted a bar.")
        st.dataframe(rows, hide_index=True, key="quality-table")
        st.caption(
            "Score (0-100) = share of trades applied (not late) × share of 1s bars not resting on a gap × "
            "share of seconds that have a bar. Duplicates and redelivered trades were recognised and left out."
        )
        st.caption(fetched_caption(quality.fetch_ms, now_ms=now_ms))


def render(settings: DashboardSettings) -> None:
    """The Streams page: its caption, then the three live panels."""
    st.title("Streams")
    st.caption(f"Redis {safe_url(settings.redis_url)}{SEP}{refresh_text(settings)}")
    live(stream_statistics_panel, settings)
    live(dead_letters_panel, settings)
    live(data_quality_panel, settings)
