"""Training page: how the RL agent and the CNN learn, how the agent would have traded, and the
trainer replicas that do the work.

Two layers, top to bottom:

* pure shaping (no Redis, no Streamlit): :func:`metric_series` (one metric per replica over
  time), :func:`paper_series` (paper PnL of the policy and its baselines), :func:`newest_values`,
  :func:`extrema_rows` (CNN PR-AUC per timeframe beside its baselines), :func:`model_timeline`
  (merged model versions over time) and :func:`replica_rows` (one row per trainer replica);
* :func:`render`, called by the app's page: four self-refreshing ``st.fragment`` panels keyed
  ``training-learning``, ``training-paper``, ``training-cnn`` and ``training-replicas``, all
  reading through one cached read shared by every panel of every tab,
  :func:`unistream_dashboard.data.read_trainer` (ml:metrics, ml:models, ml:{trainer}:members,
  ml:{trainer}:leader and the replicas' heartbeat hashes ``svc:trainer:<name>``).

Metric names are the trainer's CleanRL-style ones (``losses/td_loss``, ``charts/epsilon``,
``paper/pnl``, ``extrema/pr_auc_top_1s``, ``sensitivity/edge``, ``merge/duration_ms``...).
Chart ``uirevision`` values are ``training-<what>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from unistream_common import heartbeat, keys
from unistream_common.packets import MetricsPacket, ModelAnnouncement
from unistream_common.redisio import REDIS_ERRORS
from unistream_common.redisio import s as text
from unistream_dashboard import charts
from unistream_dashboard.data import TrainerRead, read_trainer
from unistream_dashboard.settings import DashboardSettings
from unistream_dashboard.widgets import (
    SEP,
    clock_ms,
    fetched_caption,
    is_finite,
    latest_per_producer,
    live,
    show_redis_error,
    utc_datetime,
)

# A heartbeat hash older than its TTL belongs to a stopped replica.
ALIVE_MS = heartbeat.HEARTBEAT_TTL_MS

TD_LOSS = "losses/td_loss"
Q_VALUES = "losses/q_values"
EPSILON = "charts/epsilon"
PACKETS_PER_S = "charts/packets_per_s"
UPDATES_PER_S = "charts/updates_per_s"
MODEL_ROUND = "charts/model_round"
REPLAY_FRESH = "charts/replay_fresh"  # share of the replay built by the newest CNN versions
MERGE_MS = "merge/duration_ms"
MERGE_MEMBERS = "merge/members"
PAPER_HOURS = "paper/hours"
SHARPE_HOURS = "paper/sharpe_hours"
# The trainer's Sharpe comes from the returns of completed hours (annualised x sqrt(8,760)), and
# is 0 until three are complete: it is shown as n/a until then, and with the hours it rests on
# under a day, so nobody takes a few hours for a yearly track record.
SHARPE_MIN_HOURS = 3
SHARPE_HORIZON_H = 24.0
EDGE = "sensitivity/edge"
EDGE_SE = "sensitivity/edge_se"
PAPER_LINES: dict[str, str] = {
    "policy": "paper/pnl",
    "buy & hold": "paper/buy_and_hold_pnl",
    "flat": "paper/flat_pnl",
    "random": "paper/random_pnl",
}
PAPER_STATS: tuple[tuple[str, str, str], ...] = (
    # (label, metric, format: "num" | "pct")
    ("Gross PnL (log)", "paper/gross_pnl", "num"),
    ("Sharpe", "paper/sharpe", "num"),
    ("Max drawdown", "paper/max_drawdown", "pct"),
    ("Win rate", "paper/win_rate", "pct"),
    ("Trades / hour", "paper/trades_per_hour", "num"),
    ("Fee share", "paper/fee_share", "pct"),
)
EXTREMA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("PR-AUC top", "extrema/pr_auc_top_{tf}"),
    ("baseline top", "extrema/baseline_top_{tf}"),
    ("past rule top", "extrema/past_rule_top_{tf}"),
    ("PR-AUC bottom", "extrema/pr_auc_bottom_{tf}"),
    ("baseline bottom", "extrema/baseline_bottom_{tf}"),
    ("past rule bottom", "extrema/past_rule_bottom_{tf}"),
)
_ROUND_RE = re.compile(r"r(\d+)$")
_CHOSEN_SIZE = "sensitivity/chosen_size_"

Series = tuple[list[int], list[float]]  # (times_ms, values), oldest first


# --------------------------------------------------------------------------- pure: shaping


def metric_series(metrics: Iterable[MetricsPacket], key: str) -> dict[str, Series]:
    """Per producer (sorted by name), (ts_ms, value) of metric ``key`` in time order; packets
    without it and non-finite values are left out, as are producers without any value."""
    points: dict[str, list[tuple[int, float]]] = {}
    for packet in metrics:
        value = packet.metrics.get(key)
        if is_finite(value):
            points.setdefault(packet.producer, []).append((packet.ts_ms, float(value)))  # type: ignore[arg-type]
    return {p: _columns(points[p]) for p in sorted(points)}


def _columns(points: list[tuple[int, float]]) -> Series:
    ordered = sorted(points)
    return [t for t, _ in ordered], [v for _, v in ordered]


def paper_series(metrics: Iterable[MetricsPacket]) -> dict[str, Series]:
    """Paper PnL (sum of net log returns) of the policy and of its baselines (buy & hold, flat,
    random) over time, each one line whatever replica led the paper trading then; lines without
    a value are left out."""
    metrics = list(metrics)
    out: dict[str, Series] = {}
    for label, key in PAPER_LINES.items():
        points = [(p.ts_ms, float(p.metrics[key])) for p in metrics if is_finite(p.metrics.get(key))]
        if points:
            out[label] = _columns(points)
    return out


@dataclass(frozen=True)
class Value:
    """The newest value of one metric, when and by whom it was reported."""

    value: float
    ts_ms: int
    producer: str


def newest_values(metrics: Iterable[MetricsPacket], names: Iterable[str] | None = None) -> dict[str, Value]:
    """The newest finite value of each metric (all of them, or only ``names``) over every producer;
    on equal times the packet seen last wins."""
    wanted = None if names is None else set(names)
    out: dict[str, Value] = {}
    for packet in metrics:
        for key, value in packet.metrics.items():
            if (wanted is not None and key not in wanted) or not is_finite(value):
                continue
            seen = out.get(key)
            if seen is None or packet.ts_ms >= seen.ts_ms:
                out[key] = Value(float(value), packet.ts_ms, packet.producer)
    return out


def extrema_rows(values: Mapping[str, Value]) -> list[dict[str, Any]]:
    """One row per timeframe (1s, 1m, 1h, 1d) that has any extrema metric: the CNN's PR-AUC for
    tops and bottoms beside a random classifier's (``baseline``: the positive rate) and the
    past rule's; None where a value is missing."""
    rows = []
    for tf in keys.TIMEFRAMES:
        row: dict[str, Any] = {"timeframe": tf}
        for column, pattern in EXTREMA_COLUMNS:
            v = values.get(pattern.format(tf=tf))
            row[column] = None if v is None else v.value
        if any(row[c] is not None for c, _ in EXTREMA_COLUMNS):
            rows.append(row)
    return rows


def chosen_sizes(values: Mapping[str, Value]) -> dict[str, float]:
    """Share of the sensitivity head's trades at each size, e.g. ``{"0": 0.4, "0.5": 0.35, "1": 0.25}``."""
    found = {k.removeprefix(_CHOSEN_SIZE): v.value for k, v in values.items() if k.startswith(_CHOSEN_SIZE)}
    return dict(sorted(found.items(), key=lambda kv: float(kv[0]) if _is_number(kv[0]) else math.inf))


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def model_round(ann: ModelAnnouncement) -> int | None:
    """The merge round of an announcement: its ``merge/round`` metric, else the ``r<N>`` at the
    end of its version (``dqn-r0000012`` -> 12), else None."""
    value = ann.metrics.get("merge/round")
    if is_finite(value):
        return int(value)  # type: ignore[arg-type]
    match = _ROUND_RE.search(ann.version)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class ModelTimeline:
    """Announced versions of one model, oldest first: time, merge round, version, who merged it
    and how many replicas took part."""

    name: str
    times_ms: list[int] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    members: list[int | None] = field(default_factory=list)
    contributors: list[list[str]] = field(default_factory=list)  # by name, where the announcement says
    samples: list[int | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.times_ms)


def model_timeline(models: Iterable[ModelAnnouncement]) -> dict[str, ModelTimeline]:
    """Per model name (sorted), its announcements in time order; a repeated version keeps the last
    announcement seen; announcements without a round (see :func:`model_round`) get the number of
    versions of that model before them plus one."""
    by_model: dict[str, dict[str, ModelAnnouncement]] = {}
    for ann in models:
        by_model.setdefault(ann.name, {})[ann.version] = ann
    out: dict[str, ModelTimeline] = {}
    for name in sorted(by_model):
        line = ModelTimeline(name)
        for i, ann in enumerate(sorted(by_model[name].values(), key=lambda a: (a.ts_ms, a.version))):
            members = ann.metrics.get("merge/members")
            line.times_ms.append(ann.ts_ms)
            round_no = model_round(ann)
            line.rounds.append(i + 1 if round_no is None else round_no)
            line.versions.append(ann.version)
            line.producers.append(ann.producer)
            line.members.append(int(members) if is_finite(members) else None)  # type: ignore[arg-type]
            line.contributors.append(list(ann.members))
            samples = ann.metrics.get("merge/samples")
            line.samples.append(int(samples) if is_finite(samples) else None)  # type: ignore[arg-type]
        out[name] = line
    return out


def merge_rows(timeline: Mapping[str, ModelTimeline], limit: int = 8) -> list[dict[str, Any]]:
    """The newest ``limit`` merged versions of every model, newest first: round, model, time,
    the replicas whose submissions it holds (their number when an older release did not name
    them), the samples behind it and who published it."""
    rows = [
        {
            "round": line.rounds[i],
            "model": name,
            "time (UTC)": utc_datetime(line.times_ms[i]).strftime("%H:%M:%S"),
            "contributors": ", ".join(line.contributors[i])
            or (f"{line.members[i]} replicas" if line.members[i] is not None else ""),
            "samples": line.samples[i],
            "published by": line.producers[i],
            "_ts": line.times_ms[i],
        }
        for name, line in timeline.items()
        for i in range(len(line))
    ]
    rows.sort(key=lambda r: (r["_ts"], r["round"], r["model"]), reverse=True)
    return [{k: v for k, v in r.items() if k != "_ts"} for r in rows[:limit]]


def _int_or_none(value: Any) -> int | None:
    try:
        return int(text(value))
    except (TypeError, ValueError):
        return None


def replica_rows(
    metrics: Iterable[MetricsPacket],
    members: Mapping[str, int],
    leader: str | None,
    heartbeats: Mapping[str, Mapping[str, str]],
    models: Iterable[ModelAnnouncement],
    now_ms: int,
) -> list[dict[str, Any]]:
    """One row per trainer replica, by name, for every replica named by a metrics packet, the
    members set (name -> heartbeat expiry ms) or a heartbeat hash (``updated_ms``, ``ready``):

    ``replica``, ``lease`` (holds ml:{trainer}:leader), ``alive`` (its heartbeat hash is at most
    :data:`ALIVE_MS` old or its membership has not expired), ``ready``, ``packets/s``,
    ``updates/s`` and ``step`` of its newest metrics, ``heartbeat age s`` (from its heartbeat
    hash), ``member expires in s`` (negative: expired), ``metrics age s``, ``model round`` (of the
    model it runs), ``last merge round`` (newest round it merged as leader), ``last merge ms`` and
    ``last merge members`` (of its newest metrics), ``replay fresh %`` (the share of its replay
    a batch may draw: states of the newest CNN versions). Missing values are None."""
    latest = latest_per_producer(metrics)
    led: dict[str, int] = {}
    for ann in models:
        round_no = model_round(ann)
        if round_no is not None and round_no > led.get(ann.producer, -1):
            led[ann.producer] = round_no
    rows = []
    for name in sorted(set(latest) | set(members) | set(heartbeats)):
        packet = latest.get(name)
        m = packet.metrics if packet is not None else {}
        beat = heartbeats.get(name, {})
        updated = _int_or_none(beat.get("updated_ms"))
        ready = _int_or_none(beat.get("ready"))
        heartbeat_age = None if updated is None else (now_ms - updated) / 1000
        expiry = members.get(name)
        expires_in = None if expiry is None else (expiry - now_ms) / 1000
        alive = (updated is not None and now_ms - updated <= ALIVE_MS) or (expiry is not None and expiry > now_ms)

        def metric(key: str, m: Mapping[str, float] = m) -> float | None:
            value = m.get(key)
            return float(value) if is_finite(value) else None

        merge_members = metric(MERGE_MEMBERS)
        model_round_no = metric(MODEL_ROUND)
        rows.append(
            {
                "replica": name,
                "lease": leader is not None and name == leader,
                "alive": alive,
                "ready": None if ready is None else bool(ready),
                "packets/s": metric(PACKETS_PER_S),
                "updates/s": metric(UPDATES_PER_S),
                "step": None if packet is None else packet.step,
                "heartbeat age s": heartbeat_age,
                "member expires in s": expires_in,
                "metrics age s": None if packet is None else (now_ms - packet.ts_ms) / 1000,
                "model round": None if model_round_no is None else int(model_round_no),
                "last merge round": led.get(name),
                "last merge ms": metric(MERGE_MS),
                "last merge members": None if merge_members is None else int(merge_members),
                "replay fresh %": None if (fresh := metric(REPLAY_FRESH)) is None else 100 * fresh,
            }
        )
    return rows


def sharpe_label(hours: float | None) -> str:
    """The Sharpe metric's label: under :data:`SHARPE_HORIZON_H` it names the completed hours whose
    returns it rests on (``Sharpe (5 h)``); under :data:`SHARPE_MIN_HOURS` it says how many it needs."""
    if hours is None or hours >= SHARPE_HORIZON_H:
        return "Sharpe"
    if hours < SHARPE_MIN_HOURS:
        return f"Sharpe (needs {SHARPE_MIN_HOURS} h)"
    return f"Sharpe ({hours:.0f} h)"


def sharpe_value(sharpe: float | None, hours: float | None) -> float | None:
    """The Sharpe ratio to show: None (n/a) while it rests on fewer than :data:`SHARPE_MIN_HOURS` hours."""
    if sharpe is None or hours is None or hours < SHARPE_MIN_HOURS:
        return None
    return sharpe


SIZING_MIN_BLOCKS = 3  # held-out blocks the trainer's sensitivity learner needs before it may size trades


def sizing_verdict(values: Mapping[str, Value]) -> str:
    """Which rule sizes the paper trader's trades and why, from ``sensitivity/trading``,
    ``sensitivity/blocks``, ``sensitivity/threshold`` and ``sensitivity/block_edge_{always,threshold}[_low]``."""
    blocks = values.get("sensitivity/blocks")
    if blocks is None:
        return "Sizing: full size (no sensitivity metrics yet)."
    n = int(blocks.value)
    if n < SIZING_MIN_BLOCKS:
        return (
            f"Sizing: full size; the sensitivity learner is in the shadow ({n} of {SIZING_MIN_BLOCKS} held-out "
            "blocks of trades scored)."
        )
    threshold = values.get("sensitivity/threshold")
    parts = []
    for name, label in (
        ("always", "acting always"),
        ("threshold", f"the best past threshold ({threshold.value:.2f})" if threshold else "the best past threshold"),
    ):
        mean, low = values.get(f"sensitivity/block_edge_{name}"), values.get(f"sensitivity/block_edge_{name}_low")
        if mean is not None and low is not None:
            parts.append(f"{label} {mean.value:+.2g} (95 % low {low.value:+.2g})")
    compared = f"over {n} held-out blocks, its mean reward per trade less " + ", ".join(parts)
    trading = values.get("sensitivity/trading")
    if trading is not None and trading.value >= 1:
        return f"Sizing: **the sensitivity learner sizes the trades**: it beats both rules ({compared})."
    return f"Sizing: full size; the sensitivity learner is in the shadow: it does not beat both rules ({compared})."


EDGE_LABELS: dict[str, str] = {
    "random": "the random baseline (its own trades, out of time: same turnover and costs)",
    "flat": "staying flat",
}
EDGE_KEYS: tuple[str, ...] = tuple(
    f"paper/edge_{name}{suffix}" for name in EDGE_LABELS for suffix in ("", "_low", "_high", "_hours")
)


def edge_verdict(values: Mapping[str, Value], name: str) -> str:
    """One sentence: the policy's net return less baseline ``name``'s per completed hour, its 95 %
    interval over the hours (the trainer's ``paper/edge_<name>*``) and what that interval allows
    one to say; or how many hours it still needs."""
    label = EDGE_LABELS[name]
    hours_v = values.get(f"paper/edge_{name}_hours")
    mean, low, high = (values.get(f"paper/edge_{name}{s}") for s in ("", "_low", "_high"))
    if mean is None or low is None or high is None:
        have = f"{hours_v.value:.0f}" if hours_v else "0"
        return f"Policy vs {label}: n/a, needs {SHARPE_MIN_HOURS} completed hours ({have} so far)."
    hours = f"{hours_v.value:.0f} h" if hours_v else "its hours"
    if low.value > 0:
        word = "better"
    elif high.value < 0:
        word = "worse"
    else:
        word = "no difference shown"
    return (
        f"Policy vs {label}: {mean.value:+.3g} log return per hour, 95 % interval "
        f"[{low.value:+.3g}, {high.value:+.3g}] over {hours}: **{word}**."
    )


def fmt_stat(value: float | None, kind: str) -> str:
    """A paper statistic for st.metric: ``pct`` as ``12.3 %``, ``num`` with 3 significant digits."""
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


# --------------------------------------------------------------------------- pure: figures


def extrema_figure(rows: Sequence[Mapping[str, Any]], side: str = "top", height: int = 280) -> go.Figure:
    """Grouped bars per timeframe: the CNN's PR-AUC for ``side`` (top or bottom) beside the
    baseline and the past rule; ``uirevision`` ``training-extrema-<side>``."""
    fig = go.Figure()
    timeframes = [r["timeframe"] for r in rows]
    for label, colour in (
        (f"PR-AUC {side}", "#5e35b1"),
        (f"baseline {side}", "#9e9e9e"),
        (f"past rule {side}", "#ffb300"),
    ):
        fig.add_trace(go.Bar(x=timeframes, y=[r.get(label) for r in rows], name=label, marker_color=colour))
    fig.update_layout(
        uirevision=f"training-extrema-{side}",
        height=height,
        margin=charts.MARGIN_TWO_LINES,
        title={"text": f"CNN extrema: {side}s, PR-AUC vs baselines", **charts.TITLE_LINE},
        barmode="group",
        yaxis={"range": [0, 1]},
        legend=charts.LEGEND_LINE,
    )
    return fig


def model_figure(timeline: Mapping[str, ModelTimeline], height: int = 280) -> go.Figure:
    """Merge round of each announced version over time, a line per model; ``uirevision``
    ``training-models``."""
    fig = go.Figure()
    for name, line in timeline.items():
        fig.add_trace(
            go.Scatter(
                x=[utc_datetime(t) for t in line.times_ms],
                y=line.rounds,
                mode="lines+markers",
                line={"shape": "hv"},
                name=name,
                text=[
                    f"{v}{SEP}by {p}"
                    + (f"{SEP}from {', '.join(c)}" if c else (f"{SEP}{m} replicas" if m is not None else ""))
                    for v, p, m, c in zip(line.versions, line.producers, line.members, line.contributors, strict=True)
                ],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        uirevision="training-models",
        height=height,
        margin=charts.MARGIN_TWO_LINES,
        title={"text": "Model versions (merge round)", **charts.TITLE_LINE},
        xaxis={"type": "date"},
        yaxis={"title": "round"},
        legend=charts.LEGEND_LINE,
    )
    return fig


# --------------------------------------------------------------------------- Streamlit


def _read(settings: DashboardSettings) -> TrainerRead | None:
    """The cached read, or None after showing the Redis banner."""
    try:
        return read_trainer(settings.redis_url, settings.metrics_history)
    except REDIS_ERRORS as exc:
        show_redis_error(settings, exc)
        return None


def _skipped(read: TrainerRead) -> str:
    return f"{read.skipped:,} undecodable entries skipped" if read.skipped else ""


def _no_metrics() -> None:
    st.info(
        f"No trainer metrics yet: {keys.METRICS} is empty (is a trainer running?).", icon=":material/hourglass_empty:"
    )


def _plot(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, config=charts.PLOT_CONFIG)


def _learning_panel(settings: DashboardSettings) -> None:
    """TD loss, mean Q and epsilon per replica over time."""
    st.subheader("DQN learning")
    read = _read(settings)
    if read is None:
        return
    if not read.metrics:
        _no_metrics()
    else:
        columns = st.columns(3)
        for column, key, title in zip(
            columns, (TD_LOSS, Q_VALUES, EPSILON), ("TD loss", "Mean Q", "Epsilon"), strict=True
        ):
            with column:
                series = metric_series(read.metrics, key)
                if series:
                    _plot(charts.lines_figure(series, f"{title} ({key})", f"training-{key}"), f"training-plot-{key}")
                else:
                    st.info(f"No {key} reported yet.")
    st.caption(fetched_caption(read.fetch_ms, f"{len(read.metrics):,} metrics packets", _skipped(read)))


def _paper_panel(settings: DashboardSettings) -> None:
    """Paper PnL of the policy against its baselines, and the newest paper statistics."""
    st.subheader("Paper trading")
    read = _read(settings)
    if read is None:
        return
    series = paper_series(read.metrics)
    if not series:
        if read.metrics:
            st.info("No paper trading yet: the lease holder reports paper/* once it has traded.")
        else:
            _no_metrics()
    else:
        values = newest_values(
            read.metrics,
            [key for _, key, _ in PAPER_STATS] + list(PAPER_LINES.values()) + [PAPER_HOURS, SHARPE_HOURS, *EDGE_KEYS],
        )
        pnl, hold = values.get(PAPER_LINES["policy"]), values.get(PAPER_LINES["buy & hold"])
        columns = st.columns(len(PAPER_STATS) + 1)
        columns[0].metric(
            "PnL (log)",
            fmt_stat(pnl.value if pnl else None, "num"),
            delta=f"{pnl.value - hold.value:+.3g} vs hold" if pnl and hold else None,
            help="Sum of net log returns of the policy; the delta is against buying and holding.",
        )
        sharpe_hours = values.get(SHARPE_HOURS)
        for column, (label, key, kind) in zip(columns[1:], PAPER_STATS, strict=True):
            v = values.get(key)
            if key == "paper/sharpe":
                used = sharpe_hours.value if sharpe_hours else None
                column.metric(
                    sharpe_label(used),
                    fmt_stat(sharpe_value(v.value if v else None, used), kind),
                    help=(
                        "Mean / std of the net returns of each completed hour, annualised (x sqrt(8,760)): "
                        f"n/a until {SHARPE_MIN_HOURS} hours are complete; under {SHARPE_HORIZON_H:g} h the "
                        "label shows how many it rests on."
                    ),
                )
                continue
            help_text = (
                "Before costs: what the positions earned, fees and slippage not taken off."
                if (key == "paper/gross_pnl")
                else None
            )
            column.metric(label, fmt_stat(v.value if v else None, kind), help=help_text)
        with st.container(key="training-paper-edge"):
            for name in EDGE_LABELS:
                st.markdown(edge_verdict(values, name))
        baselines = [label for label in series if label != "policy"]
        _plot(
            charts.lines_figure(
                series, "Paper PnL: policy vs baselines", "training-paper", yaxis_title="log return", dashed=baselines
            ),
            "training-plot-paper",
        )
    st.caption(fetched_caption(read.fetch_ms, _skipped(read)))


def _cnn_panel(settings: DashboardSettings) -> None:
    """CNN extrema PR-AUC per timeframe vs its baselines; the sensitivity head's edge."""
    st.subheader("CNN extrema and sensitivity")
    read = _read(settings)
    if read is None:
        return
    if not read.metrics:
        _no_metrics()
        st.caption(fetched_caption(read.fetch_ms, _skipped(read)))
        return
    values = newest_values(read.metrics)
    rows = extrema_rows(values)
    left, right = st.columns(2)
    with left:
        if rows:
            _plot(extrema_figure(rows, "top"), "training-plot-extrema-top")
            st.dataframe(rows, hide_index=True, key="training-extrema-table")
        else:
            st.info("No CNN extrema metrics (extrema/*) reported yet.")
    with right:
        edge = values.get(EDGE)
        if edge is None:
            st.info("No sensitivity edge (sensitivity/edge) reported yet.")
        else:
            se = values.get(EDGE_SE)
            st.metric(
                "Sensitivity edge (mean reward over the best past threshold's)",
                f"{edge.value:+.3g}",
                help=f"± {se.value:.2g} standard error" if se else None,
            )
            _plot(
                charts.lines_figure(metric_series(read.metrics, EDGE), "Sensitivity edge", "training-edge"),
                "training-plot-edge",
            )
            st.markdown(sizing_verdict(values))
            sizes = chosen_sizes(values)
            if sizes:
                st.caption("Chosen sizes: " + ", ".join(f"{k}: {100 * v:.0f} %" for k, v in sizes.items()))
    st.caption(fetched_caption(read.fetch_ms, _skipped(read)))


REPLICA_COLUMNS: dict[str, Any] = {
    "lease": st.column_config.CheckboxColumn("lease", help="Holds ml:{trainer}:leader: merges and paper-trades"),
    "packets/s": st.column_config.NumberColumn("packets/s", format="%.1f"),
    "updates/s": st.column_config.NumberColumn("updates/s", format="%.1f"),
    "heartbeat age s": st.column_config.NumberColumn("heartbeat age", format="%.1f s"),
    "member expires in s": st.column_config.NumberColumn("member expires in", format="%.1f s"),
    "metrics age s": st.column_config.NumberColumn("metrics age", format="%.1f s"),
    "last merge ms": st.column_config.NumberColumn("last merge", format="%.0f ms"),
}


def _replicas_panel(settings: DashboardSettings) -> None:
    """One row per trainer replica; the model versions over time."""
    st.subheader("Trainer replicas and models")
    read = _read(settings)
    if read is None:
        return
    now_ms = clock_ms()
    rows = replica_rows(read.metrics, read.members, read.leader, read.heartbeats, read.models, now_ms)
    if rows:
        st.dataframe(rows, hide_index=True, key="training-replicas-table", column_config=REPLICA_COLUMNS)
    else:
        st.info(f"No trainer replicas: no metrics on {keys.METRICS}, nobody in {keys.TRAINER_MEMBERS}, no heartbeats.")
    lease = f"lease held by {read.leader}" if read.leader else "nobody holds the lease"
    timeline = model_timeline(read.models)
    if timeline:
        _plot(model_figure(timeline), "training-plot-models")
        st.dataframe(merge_rows(timeline), hide_index=True, key="training-merges-table")
        newest = sorted(
            ((line.times_ms[-1], line.versions[-1], line.producers[-1]) for line in timeline.values()), reverse=True
        )
        models_text = "newest: " + ", ".join(f"{v} by {p}" for _, v, p in newest)
    else:
        models_text = f"no model announced yet ({keys.MODELS} is empty)"
    st.caption(fetched_caption(read.fetch_ms, f"{len(rows)} replicas", lease, models_text, _skipped(read)))


def render(settings: DashboardSettings) -> None:
    """The training page: four live panels."""
    st.title("Training")
    for key, panel in (
        ("training-learning", _learning_panel),
        ("training-paper", _paper_panel),
        ("training-cnn", _cnn_panel),
        ("training-replicas", _replicas_panel),
    ):
        with st.container(border=True, key=key):
            live(panel, settings)
