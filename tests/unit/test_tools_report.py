"""The evaluation report: its charts draw the verdict's own numbers, and the page stands alone."""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from unistream_tools.report import curves, drawdown, histogram, line_chart, write_report
from unistream_tools.verdict import Costs, block_paths, format_verdict, judge

T0 = 1_700_000_000_000
COSTS = Costs(fee=0.001, slippage=0.0002)


def blocks(n_blocks: int = 3, steps: int = 900, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_blocks):
        lp = np.cumsum(rng.normal(0, 1e-3, size=steps))
        ts = T0 + 1_000 * (k * steps + np.arange(steps))
        targets = {s: np.sign(rng.normal(size=steps)) * (rng.random(steps) < 0.1) for s in (1, 2)}
        out.append(block_paths(ts, 100 * np.exp(lp), targets, 1_000))
    return out


def test_the_curves_end_where_the_verdict_puts_each_arm() -> None:
    paths = blocks()
    verdict = judge(paths, COSTS, latency_ms=1_000)
    for b, v in zip(paths, verdict.blocks, strict=True):
        c = curves(b, COSTS.per_side)
        assert c["policy"][-1] == pytest.approx(v.net["policy"], abs=1e-12), "seeds averaged, net of costs"
        assert c["buy_and_hold"][-1] == pytest.approx(v.net["buy_and_hold"], abs=1e-12)
        assert not c["flat"].any()
        # the random baseline is the mean of shifted paths: near the verdict's (other draws of shifts)
        assert c["random"][-1] == pytest.approx(v.net["random"], abs=0.02)
        assert np.all(c["random_low"] <= c["random"] + 1e-12) and np.all(c["random"] <= c["random_high"] + 1e-12)


def test_drawdown_is_the_distance_below_the_running_peak() -> None:
    assert drawdown(np.array([0.0, 0.02, 0.01, 0.03, -0.01])).tolist() == pytest.approx([0, 0, -0.01, 0, -0.04])
    assert drawdown(np.array([-0.01, -0.02])).tolist() == pytest.approx([-0.01, -0.02]), "the peak starts at 0"


def test_charts_are_svg_with_one_line_per_series_and_the_observed_value_marked() -> None:
    x = np.arange(5_000, dtype=np.float64)
    svg = line_chart("t", {"policy": (x, np.sin(x / 500)), "flat": (x, np.zeros_like(x))}, "x", "y",
                     band=(x, np.sin(x / 500) - 0.1, np.sin(x / 500) + 0.1))  # fmt: skip
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2
    assert all(len(p.get("points", "").split()) <= 601 for p in lines), "thinned to at most 600 points and the last"
    assert root.find("{http://www.w3.org/2000/svg}polygon") is not None, "the band"
    hist = ET.fromstring(histogram("null", np.random.default_rng(0).normal(size=400), 2.5, "net"))
    assert any(t.text == "policy +2.5" for t in hist.iter("{http://www.w3.org/2000/svg}text"))


def test_the_report_is_one_page_without_outside_references_and_the_json_beside_it(tmp_path: Path) -> None:
    paths = blocks()
    verdict = judge(paths, COSTS, latency_ms=1_000)
    text = format_verdict(verdict)
    numbers = {"verdict": {"p_value": verdict.p_value}}
    written = write_report(tmp_path / "out", "a <title> & more", text, [("", paths, verdict)], numbers)
    assert [p.name for p in written] == ["report.html", "report.json"]
    page = written[0].read_text()
    assert "<h1>a &lt;title&gt; &amp; more</h1>" in page
    assert html.escape(text.splitlines()[-1]) in page, "the conclusion line"
    for k in (1, 2, 3):
        assert (
            f"Test block {k} of 3: cumulative net return" in page
            and html.escape(f"Test block {k} of 3: the policy's drawdown") in page
        )
    assert "by cost per side" in page and page.count('aria-label="Shift null, ') == 2
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "nothing loaded from elsewhere"
    assert "<script" not in page
    svgs = re.findall(r"<svg.*?</svg>", page, re.DOTALL)
    assert len(svgs) == 2 * 3 + 1 + 2
    for svg in svgs:
        ET.fromstring(svg)  # each chart is well-formed
    assert json.loads(written[1].read_text()) == numbers
