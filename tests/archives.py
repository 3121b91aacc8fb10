"""Archive files as data.binance.vision serves them, written by tests: header-less trade CSVs with
µs times, zipped under the archive's names (``ETHUSDT-trades-2025-02-19.zip``)."""

from __future__ import annotations

import math
import random
import zipfile
from pathlib import Path


def archive_zip(
    directory: Path, day: str, first_id: int, seconds: int, t0_ms: int, seed: int, symbol: str = "ETHUSDT",
    price: float = 2500.0,
) -> Path:  # fmt: skip
    """A trades .zip of ``seconds`` seconds from ``t0_ms``: a random walk, ~2 trades/s."""
    rnd = random.Random(seed)
    rows, trade_id = [], first_id
    for sec in range(seconds):
        for ms in sorted(rnd.randrange(1_000) for _ in range(rnd.randrange(0, 5))):
            price *= math.exp(rnd.gauss(0.0, 0.0005))
            buyer_maker = "true" if rnd.random() < 0.5 else "false"
            rows.append(f"{trade_id},{price:.2f},{rnd.uniform(0.001, 2):.4f},1.0,{(t0_ms + sec * 1000 + ms) * 1000},"
                        f"{buyer_maker},true\n")  # fmt: skip
            trade_id += 1
    path = directory / f"{symbol}-trades-{day}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{symbol}-trades-{day}.csv", "".join(rows))
    return path
