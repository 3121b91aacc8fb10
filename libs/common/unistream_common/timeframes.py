"""Bar timeframes, named in one place: what they are called and how long they last.

A bar of timeframe ``tf`` covers the UTC-aligned, left-closed interval
``[open_time_ms, open_time_ms + TIMEFRAME_MS[tf])`` (:mod:`unistream_common.bars` builds them). A
module of its own, importing nothing of ours, because both the packets (a :class:`Bar` checks its
span) and the bar core (which builds :class:`Bar` packets) need these facts: defined in either,
they would make an import cycle. Everything else imports them from here (or from
:mod:`unistream_common.keys`, which names the bar streams after them).
"""

from __future__ import annotations

from typing import Literal, get_args

Timeframe = Literal["1s", "1m", "1h", "1d"]
TIMEFRAMES: tuple[str, ...] = get_args(Timeframe)  # shortest first: the order of every per-timeframe table
TIMEFRAME_MS: dict[str, int] = {"1s": 1_000, "1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}  # span, ms
