"""What every page shares: formatting of numbers, times and names for display, and the Streamlit
helpers that frame a live panel (its Redis banner, its footer, its refresh).

The formatting functions are pure (no Redis, no Streamlit, no clock); their outputs double as
anchors for tests: integers with thousands separators, absent values as ``n/a``, parts joined by
:data:`SEP`. The Streamlit helpers give every page the same behaviour: a live panel is one
``st.fragment(run_every=...)`` (:func:`live`), a failed read shows :func:`show_redis_error` and
the panel's next refresh simply tries again, and a panel's footer says how long its reads took
(:func:`fetched_caption`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import redis
import streamlit as st

from unistream_common.packets import MetricsPacket
from unistream_common.redisio import safe_url
from unistream_dashboard.settings import DashboardSettings

NA = "n/a"
SEP = " · "

# Characters that change Markdown (or Streamlit's $LaTeX$) mid-line; only these need escaping
# in names that come from other services.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~$])")


# --------------------------------------------------------------------------- formatting


def md_escape(text: str) -> str:
    """``text`` with Markdown's special characters escaped, for strings that come from outside."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def fmt_int(value: float | None) -> str:
    """``1234567`` -> ``1,234,567``; None -> ``n/a``."""
    if value is None:
        return NA
    return f"{int(value):,}"


def fmt_price(price: float | None, max_decimals: int = 8) -> str:
    """A venue price with thousands separators and the decimals it was quoted with (at least 2).

    Prices arrive as float64 whose shortest ``repr`` is the venue's decimal string (see
    ``unistream_common.packets``), so the decimals of that repr are the quoted precision:
    ``3012.5`` -> ``3,012.50``, ``0.00001234`` -> ``0.00001234``.
    """
    if price is None or not math.isfinite(price):
        return NA
    try:
        exponent = Decimal(repr(price)).as_tuple().exponent
    except InvalidOperation:
        return NA
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    decimals = min(max(decimals, 2), max_decimals)
    return f"{price:,.{decimals}f}"


def fmt_age(age_ms: float | None) -> str:
    """A duration for humans: ``0.4 s``, ``12 s``, ``3 min``, ``2.5 h``, ``4 d``.

    Negative ages (the writer's clock runs ahead of ours) show as ``0.0 s``.
    """
    if age_ms is None:
        return NA
    seconds = max(age_ms, 0) / 1000.0
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.0f} d"


def fmt_fetch(ms: float) -> str:
    """How long a read took: ``0.4 ms``, ``12 ms``."""
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def fmt_utc(ts_ms: int | None) -> str:
    """Wall-clock time of an epoch-ms timestamp, ``HH:MM:SS UTC``."""
    if ts_ms is None:
        return NA
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%H:%M:%S UTC")


def utc_datetime(ts_ms: int) -> datetime:
    """Timezone-aware UTC datetime of an epoch-ms timestamp (chart axes)."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def id_ms(entry_id: str) -> int:
    """Millisecond part of a stream entry id such as ``1700000000000-0``."""
    return int(entry_id.split("-", 1)[0])


def is_finite(value: float | None) -> bool:
    """Whether ``value`` is a number to show (not None, NaN nor infinite)."""
    return value is not None and math.isfinite(value)


# --------------------------------------------------------------------------- shared view models


def latest_per_producer(metrics: Iterable[MetricsPacket]) -> dict[str, MetricsPacket]:
    """Newest packet (by ``ts_ms``, then ``step``) of each producer, producers sorted by name."""
    latest: dict[str, MetricsPacket] = {}
    for packet in metrics:
        seen = latest.get(packet.producer)
        if seen is None or (packet.ts_ms, packet.step) >= (seen.ts_ms, seen.step):
            latest[packet.producer] = packet
    return dict(sorted(latest.items()))


# --------------------------------------------------------------------------- Streamlit


def clock_ms() -> int:
    """The wall clock in epoch milliseconds (the time a panel is drawn at)."""
    return int(time.time() * 1000)


def refresh_text(settings: DashboardSettings) -> str:
    """``refresh every 1 s`` or ``paused``, for the pages' captions."""
    return "paused" if settings.paused else f"refresh every {settings.refresh_s:g} s"


def show_redis_error(settings: DashboardSettings, exc: BaseException) -> None:
    """Banner for a failed read; the panel's next scheduled refresh simply tries again."""
    where = safe_url(settings.redis_url)
    reason = str(exc).rstrip(".") or type(exc).__name__
    down = isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
    retry = "Paused: resume to retry." if settings.paused else f"Retrying every {settings.refresh_s:g} s."
    st.error(
        f"Redis {'unreachable' if down else 'error'} at {where}: {reason}. {retry}",
        icon=":material/cloud_off:" if down else ":material/error:",
    )


def fetched_caption(fetch_ms: float, *parts: str, now_ms: int | None = None) -> str:
    """``fetched in 3.1 ms · updated 12:00:01 UTC · <parts>``: how long the Redis reads behind a
    panel took (the cached read's own time, whichever tab made it) and when the panel was drawn
    (``now_ms``, default the clock); empty parts are left out."""
    drawn = clock_ms() if now_ms is None else now_ms
    return SEP.join([f"fetched in {fmt_fetch(fetch_ms)}", f"updated {fmt_utc(drawn)}", *[p for p in parts if p]])


def live(panel: Callable[..., None], settings: DashboardSettings, *args: object) -> None:
    """Run ``panel(settings, *args)`` as a fragment that reruns itself every ``refresh_s`` seconds
    (never while the sidebar's pause toggle is on: ``settings.run_every`` is then None)."""
    st.fragment(panel, run_every=settings.run_every)(settings, *args)
