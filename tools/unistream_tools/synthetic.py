"""Synthetic Binance trade archives with a known truth, for checking ``unistream evaluate`` end to end.

    python -m unistream_tools.synthetic --pattern planted|walk --hours 2 --out DIR [--seed 1]
        [--symbols ETHUSDT,BTCUSDT] [--date 2025-02-19]

writes one ``SYMBOL-trades-DATE.zip`` per symbol, as data.binance.vision serves them (header-less
CSV: id, price, qty, quote qty, time in µs, is buyer maker, is best match), so the files go
through the same replay, aggregator and features as real ones.

Each symbol's 1-second log returns are ``r = DRIFT * z + NOISE * e`` (``--pattern planted``): ``z``
is a regime of +1 or -1 that flips with probability ``SWITCH`` each second (regimes of five
minutes on average), ``e`` standard normal. A model that reads the last minute of returns from
its 1s window can tell the regime and earn ``DRIFT`` a second after costs; the random walk
(``--pattern walk``) has the same volatility, ``hypot(DRIFT, NOISE)``, and nothing to learn.
Within a second the trades (Poisson, ``TRADES_PER_S`` on average) scatter around the second's
price by ``TICK_NOISE``; sizes and sides are random. Symbols are independent, each its own seed.
"""

from __future__ import annotations

import argparse
import math
import sys
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

DRIFT = 0.5e-4  # per second, in the planted regime's direction
NOISE = 3e-4  # per second
SWITCH = 1 / 300
TRADES_PER_S = 3.0
TICK_NOISE = 0.3e-4
PRICES = {"ETHUSDT": 2_500.0, "BTCUSDT": 60_000.0}


def second_returns(seconds: int, planted: bool, rng: np.random.Generator) -> np.ndarray:
    """The 1-second log returns of one symbol (module docstring)."""
    if not planted:
        return math.hypot(DRIFT, NOISE) * rng.standard_normal(seconds)
    flips = rng.random(seconds) < SWITCH
    z = np.where(np.cumsum(flips) % 2 == 0, 1.0, -1.0) * (1.0 if rng.random() < 0.5 else -1.0)
    return DRIFT * z + NOISE * rng.standard_normal(seconds)


def write_archive(
    directory: Path, symbol: str, start_ms: int, seconds: int, planted: bool, seed: int, price: float | None = None
) -> Path:
    """One symbol's trades archive of ``seconds`` seconds from ``start_ms`` (a UTC day's name)."""
    rng = np.random.default_rng(seed)
    level = np.log(price if price is not None else PRICES.get(symbol, 100.0)) + np.cumsum(
        second_returns(seconds, planted, rng)
    )
    counts = rng.poisson(TRADES_PER_S, seconds)
    rows: list[str] = []
    trade_id = 1
    for sec in range(seconds):
        n = int(counts[sec])
        if not n:
            continue
        offsets = np.sort(rng.integers(0, 1_000_000, n))  # µs within the second
        prices = np.exp(level[sec] + TICK_NOISE * rng.standard_normal(n))
        prices[-1] = np.exp(level[sec])  # the second closes at its price
        sizes = rng.uniform(0.001, 2.0, n)
        makers = rng.random(n) < 0.5
        for k in range(n):
            p, q = float(prices[k]), float(sizes[k])
            rows.append(f"{trade_id},{p:.2f},{q:.4f},{p * q:.6f},{(start_ms + sec * 1_000) * 1_000 + int(offsets[k])},"
                        f"{'true' if makers[k] else 'false'},true\n")  # fmt: skip
            trade_id += 1
    day = datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y-%m-%d")
    path = directory / f"{symbol}-trades-{day}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{symbol}-trades-{day}.csv", "".join(rows))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unistream_tools.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pattern", choices=("planted", "walk"), required=True)
    parser.add_argument("--hours", type=float, default=24.0, help="length from the day's midnight (default 24)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the .zip files")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first symbol; the next get seed + 1, ...")
    parser.add_argument("--symbols", default="ETHUSDT,BTCUSDT", help="comma-separated (default ETHUSDT,BTCUSDT)")
    parser.add_argument("--date", default="2025-02-19", help="UTC day the files are named and timed for")
    args = parser.parse_args(argv)
    if not 0 < args.hours <= 24:
        parser.error(f"--hours must be in (0, 24], was {args.hours}")
    try:
        start_ms = int(datetime.strptime(args.date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)
    except ValueError:
        parser.error(f"--date must be YYYY-MM-DD, was {args.date!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    for k, symbol in enumerate(s.strip().upper() for s in args.symbols.split(",") if s.strip()):
        path = write_archive(
            args.out, symbol, start_ms, round(args.hours * 3_600), args.pattern == "planted", args.seed + k
        )
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
