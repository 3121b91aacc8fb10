"""``unistream evaluate --report DIR``: the verdict as a page to read, beside its numbers.

``DIR/report.html`` is one self-contained file (inline SVG, no script, no network): the verdict's
tables and conclusion as ``evaluate`` prints them, then per test block the cumulative net return of
the policy (seeds averaged), buy-and-hold, flat and the policy's own positions shifted in time (the
random baseline: the mean of the shifted paths with their 5-95 % band), the policy's drawdown, the
fee sweep (policy minus each baseline against the cost per side, with intervals over blocks) and
the shift null of the summed block returns with the policy's value on it, net and gross.
``DIR/report.json`` holds what ``--json`` prints. Charts are drawn here with the standard library:
the trainer image carries no plotting package.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unistream_tools.verdict import BlockPaths, Verdict, shift_offsets, step_returns

WIDTH, HEIGHT = 720, 260
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 150, 28, 34
MAX_POINTS = 600  # per line: a day at 1 s is 86,400 steps
BAND_SHIFTS = 100  # shifted paths behind the random baseline's band
COLORS = {"policy": "#1f77b4", "buy_and_hold": "#ff7f0e", "flat": "#7f7f7f", "random": "#2ca02c"}


def curves(paths: BlockPaths, cost_per_side: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Cumulative net log return per step of each arm on one block; ``random_low``/``random_high``
    bound 90 % of the shifted paths (seed-averaged like the policy)."""
    lp = paths.log_prices
    n = len(lp)
    ones = np.ones(n)

    def cumulative(held: np.ndarray) -> np.ndarray:
        gross, cost = step_returns(lp, held, cost_per_side)
        return np.cumsum(gross - cost)

    out = {
        "policy": np.mean([cumulative(h) for h in paths.held.values()], axis=0),
        "buy_and_hold": cumulative(ones),
        "flat": np.zeros(n),
    }
    try:
        offsets = shift_offsets(n, BAND_SHIFTS, np.random.default_rng(seed))
    except ValueError:
        return out
    shifted = np.array(
        [np.mean([cumulative(np.roll(h, int(s))) for h in paths.held.values()], axis=0) for s in offsets]
    )
    out["random"] = shifted.mean(axis=0)
    out["random_low"], out["random_high"] = np.percentile(shifted, [5, 95], axis=0)
    return out


def drawdown(cumulative: np.ndarray) -> np.ndarray:
    """Distance below the running peak (0 at a new high; negative log return below it)."""
    return cumulative - np.maximum.accumulate(np.maximum(cumulative, 0.0))


# --- SVG --------------------------------------------------------------------------------------------


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, math.ceil(len(x) / MAX_POINTS))
    if step == 1:
        return x, y
    keep = np.unique(np.append(np.arange(0, len(x), step), len(x) - 1))
    return x[keep], y[keep]


def _svg_head(title: str) -> list[str]:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}" font-family="sans-serif" font-size="11">'
    )
    return [svg, f'<text x="{MARGIN_L}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not high > low:
        return [low]
    raw = (high - low) / count
    unit = 10 ** math.floor(math.log10(raw))
    step = next(m * unit for m in (1, 2, 2.5, 5, 10) if m * unit >= raw)
    first = math.ceil(low / step) * step
    return [first + k * step for k in range(int((high - first) / step) + 1)]


def line_chart(
    title: str,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    x_label: str,
    y_label: str,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    whiskers: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
) -> str:
    """An SVG line chart: ``series`` name -> (x, y); ``band`` (x, low, high) shaded under them;
    ``whiskers`` name -> (x, low, high) vertical intervals drawn in the series' colour."""
    xs = [v for x, _ in series.values() for v in (float(np.min(x)), float(np.max(x)))]
    ys = [v for _, y in series.values() for v in (float(np.min(y)), float(np.max(y)))]
    if band is not None:
        ys += [float(np.min(band[1])), float(np.max(band[2]))]
    for points in (whiskers or {}).values():
        ys += [v for _, lo, hi in points for v in (lo, hi) if math.isfinite(v)]
        xs += [wx for wx, _, _ in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys + [0.0]), max(ys + [0.0])
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.05 or 1e-6
    y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = WIDTH - MARGIN_L - MARGIN_R, HEIGHT - MARGIN_T - MARGIN_B

    def px(x: float) -> float:
        return MARGIN_L + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return MARGIN_T + (y1 - y) / (y1 - y0) * plot_h

    parts = [
        *_svg_head(title),
        f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
    ]
    for t in _ticks(y0, y1):
        parts.append(
            f'<line x1="{MARGIN_L}" x2="{MARGIN_L + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
        )
        parts.append(f'<text x="{MARGIN_L - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    for t in _ticks(x0, x1):
        parts.append(f'<text x="{px(t):.1f}" y="{HEIGHT - MARGIN_B + 14}" text-anchor="middle">{t:.3g}</text>')
    parts.append(
        f'<text x="{MARGIN_L + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{MARGIN_T + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {MARGIN_T + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    if y0 < 0 < y1:
        parts.append(
            f'<line x1="{MARGIN_L}" x2="{MARGIN_L + plot_w}" y1="{py(0):.1f}" y2="{py(0):.1f}" stroke="#999"/>'
        )
    if band is not None:
        bx, lo, hi = (np.asarray(a, dtype=np.float64) for a in band)
        bx_lo, lo = _thin(bx, lo)
        bx_hi, hi = _thin(bx, hi)
        outline = [f"{px(a):.1f},{py(b):.1f}" for a, b in zip(bx_lo, lo, strict=True)]
        outline += [f"{px(a):.1f},{py(b):.1f}" for a, b in zip(bx_hi[::-1], hi[::-1], strict=True)]
        parts.append(f'<polygon points="{" ".join(outline)}" fill="{COLORS["random"]}" fill-opacity="0.15"/>')
    for k, (name, (x, y)) in enumerate(series.items()):
        color = COLORS.get(name, "#9467bd")
        tx, ty = _thin(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(tx, ty, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for wx, lo, hi in (whiskers or {}).get(name, ()):
            if math.isfinite(lo) and math.isfinite(hi):
                parts.append(
                    f'<line x1="{px(wx):.1f}" x2="{px(wx):.1f}" y1="{py(lo):.1f}" y2="{py(hi):.1f}" stroke="{color}"/>'
                )
        ly = MARGIN_T + 14 * k + 8
        parts.append(f'<line x1="{WIDTH - MARGIN_R + 10}" x2="{WIDTH - MARGIN_R + 28}" y1="{ly}" y2="{ly}" '
                     f'stroke="{color}" stroke-width="2"/>')  # fmt: skip
        parts.append(f'<text x="{WIDTH - MARGIN_R + 32}" y="{ly + 4}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def histogram(title: str, values: np.ndarray, observed: float, x_label: str, bins: int = 30) -> str:
    """An SVG histogram of ``values`` with a vertical line at ``observed``."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(min(values.min(), observed)), float(max(values.max(), observed))
    if high == low:
        high = low + 1e-9
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    plot_w, plot_h = WIDTH - MARGIN_L - MARGIN_R, HEIGHT - MARGIN_T - MARGIN_B
    top = max(int(counts.max()), 1)

    def px(x: float) -> float:
        return MARGIN_L + (x - low) / (high - low) * plot_w

    parts = [
        *_svg_head(title),
    ]
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        h = c / top * plot_h
        parts.append(f'<rect x="{px(a):.1f}" y="{MARGIN_T + plot_h - h:.1f}" width="{max(px(b) - px(a) - 1, 0.5):.1f}" '
                     f'height="{h:.1f}" fill="{COLORS["random"]}" fill-opacity="0.6"/>')  # fmt: skip
    x = px(observed)
    parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_T}" y2="{MARGIN_T + plot_h}" stroke="{COLORS["policy"]}" '
                 f'stroke-width="2"/>')  # fmt: skip
    parts.append(f'<text x="{x + 4:.1f}" y="{MARGIN_T + 12}" fill="{COLORS["policy"]}">policy {observed:+.4g}</text>')
    for t in _ticks(low, high):
        parts.append(f'<text x="{px(t):.1f}" y="{HEIGHT - MARGIN_B + 14}" text-anchor="middle">{t:.3g}</text>')
    parts.append(
        f'<text x="{MARGIN_L + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


# --- the page ---------------------------------------------------------------------------------------


def charts(blocks: Sequence[BlockPaths], verdict: Verdict, symbol: str = "") -> list[tuple[str, str]]:
    """(heading, SVG) of every chart of one symbol's report, in page order (``symbol``: heading prefix)."""
    out: list[tuple[str, str]] = []
    cost = verdict.costs.per_side
    prefix = f"{symbol}: " if symbol else ""
    for k, paths in enumerate(blocks):
        c = curves(paths, cost, seed=k)
        hours = (paths.ts_ms - paths.ts_ms[0]) / 3_600_000
        series = {name: (hours, c[name]) for name in ("policy", "buy_and_hold", "flat", "random") if name in c}
        band = (hours, c["random_low"], c["random_high"]) if "random_low" in c else None
        heading = f"{prefix}Test block {k + 1} of {len(blocks)}"
        out.append((heading, line_chart(f"{heading}: cumulative net return", series, "hours into the block",
                                        "net log return", band=band)))  # fmt: skip
        out.append(("", line_chart(f"{heading}: the policy's drawdown", {"policy": (hours, drawdown(c["policy"]))},
                                   "hours into the block", "below its peak")))  # fmt: skip
    bps = sorted(verdict.sweep)
    series = {}
    whiskers: dict[str, list[tuple[float, float, float]]] = {}
    for k, base in enumerate(("random", "buy_and_hold", "flat")):
        ivs = [verdict.sweep[b][base] for b in bps]
        series[base] = (np.array(bps, dtype=np.float64), np.array([iv.value for iv in ivs]))
        dx = 0.12 * (k - 1)  # side by side, not on top of each other
        whiskers[base] = [(float(b) + dx, iv.low, iv.high) for b, iv in zip(bps, ivs, strict=True)]
    out.append((f"{prefix}Costs", line_chart(f"{prefix}Policy minus each baseline by cost per side (intervals over blocks)", series,
                                     "bps per side (fee + slippage)", "return per block", whiskers=whiskers)))  # fmt: skip
    for arm in ("net", "gross"):
        nulls = np.sum([b.null_net if arm == "net" else b.null_gross for b in verdict.blocks], axis=0)
        observed = sum((b.net if arm == "net" else b.gross)["policy"] for b in verdict.blocks)
        title = f"{prefix}Shift null, {arm} (p = {verdict.p_value[arm]:.3g}): the policy's positions out of time"
        out.append((f"{prefix}Shift null" if arm == "net" else "", histogram(
            title, nulls, observed, f"{arm} return summed over blocks")))  # fmt: skip
    return out


def render_html(title: str, text: str, figures: Sequence[tuple[str, str]]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(text)}</pre>"]
    for heading, svg in figures:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(f"<figure>{svg}</figure>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em}"
        "pre{font-size:12px;overflow-x:auto;background:#f7f7f7;padding:1em}figure{margin:0 0 1em}</style>"
        "</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    directory: Path,
    title: str,
    text: str,
    sections: Sequence[tuple[str, Sequence[BlockPaths], Verdict]],
    numbers: dict[str, Any],
) -> list[Path]:
    """Write ``report.html`` (``text``: the printed verdicts, then each symbol's charts; ``sections``:
    (symbol, its test blocks, its verdict)) and ``report.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / "report.html"
    figures = [fig for symbol, blocks, verdict in sections for fig in charts(blocks, verdict, symbol)]
    page.write_text(render_html(title, text, figures), encoding="utf-8")
    data = directory / "report.json"
    data.write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    return [page, data]
