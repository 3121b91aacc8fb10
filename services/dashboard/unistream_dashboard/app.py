"""The unistream dashboard, run by ``streamlit run`` (start it with ``unistream dashboard``).

Four pages under ``st.navigation``, one module each, every module holding that page's pure view
models and its ``render(settings)``: **Overview** (:mod:`unistream_dashboard.overview`: the
Training Data Stream cards and one health card per service), **Market**
(:mod:`unistream_dashboard.market`), **Training** (:mod:`unistream_dashboard.training`) and
**Streams** (:mod:`unistream_dashboard.streams`: stream, group and consumer statistics, dead
letters, data quality). Market and Training are imported when first opened, which keeps plotly
out of the Overview's start-up. The pages share :mod:`unistream_dashboard.widgets` (formatting,
the Redis banner, the panel footer, :func:`~unistream_dashboard.widgets.live`),
:mod:`unistream_dashboard.charts` and the cached reads of :mod:`unistream_dashboard.data`. The
page modules sit beside this script, not in a ``pages/`` folder: Streamlit takes a ``pages/``
folder next to the main script for its older multipage mode and runs that instead of this script.

Every live panel is its own ``st.fragment(run_every=...)`` that refreshes itself every
``refresh_s`` seconds without rerunning the page (never a ``while True`` loop: that would pin a
script thread per tab and block Streamlit's own reruns). The sidebar's pause toggle stops them
(``run_every=None``). Panels say how long the fetch took and keep refreshing when Redis is down,
with a banner. Stable anchors for tests are listed in each page module's docstring.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st
from pydantic import ValidationError

from unistream_common.redisio import safe_url
from unistream_common.settings import describe_errors
from unistream_dashboard import data, overview, streams
from unistream_dashboard.settings import DashboardSettings
from unistream_dashboard.widgets import refresh_text


@dataclass(frozen=True)
class PageSpec:
    """One page of the navigation: its title, URL path and icon."""

    key: str
    title: str
    icon: str


PAGES: tuple[PageSpec, ...] = (
    PageSpec("overview", "Overview", ":material/dashboard:"),
    PageSpec("market", "Market", ":material/candlestick_chart:"),
    PageSpec("training", "Training", ":material/model_training:"),
    PageSpec("streams", "Streams", ":material/stream:"),
)


def _lazy_page(module: str, title: str, settings: DashboardSettings) -> None:
    """Render ``unistream_dashboard.<module>`` (imported on first visit: plotly stays out of the
    Overview's start-up), or say plainly that this installation lacks it."""
    try:
        render = importlib.import_module(f"unistream_dashboard.{module}").render
    except ImportError as exc:
        st.title(title)
        st.info(f"The {title} page is not available in this installation ({exc}).", icon=":material/info:")
        return
    render(settings)


def market_page(settings: DashboardSettings) -> None:
    """The Market page (:mod:`unistream_dashboard.market`)."""
    _lazy_page("market", "Market", settings)


def training_page(settings: DashboardSettings) -> None:
    """The Training page (:mod:`unistream_dashboard.training`)."""
    _lazy_page("training", "Training", settings)


RENDERERS: dict[str, Callable[[DashboardSettings], None]] = {
    "overview": overview.render,
    "market": market_page,
    "training": training_page,
    "streams": streams.render,
}


def _sidebar(settings: DashboardSettings) -> DashboardSettings:
    """The pause toggle (and a refresh button while paused); returns the settings the pages use."""
    with st.sidebar:
        paused = st.toggle(
            "Pause live updates",
            value=settings.paused,
            key="paused",
            help="Stops every panel's automatic refresh; the numbers shown stay as they were.",
        )
        if paused:
            st.button("Refresh now", key="refresh-now", icon=":material/refresh:")
        chosen = settings.model_copy(update={"paused": paused})
        st.caption(
            f"Redis {safe_url(settings.redis_url)}  \nsymbols {', '.join(settings.symbols)}  \n{refresh_text(chosen)}"
        )
    return chosen


def main(start: str | None = None) -> None:
    """Check settings, start the dashboard's heartbeat, and show the page chosen in the navigation.

    ``start`` names the page shown at the root URL (default: the first of :data:`PAGES`).
    """
    # An emoji favicon: a :material/ page icon makes the browser fetch an SVG from Google Fonts, which
    # fails (a console error) wherever the dashboard has no internet.
    st.set_page_config(page_title="unistream", page_icon="📈", layout="wide")
    try:
        settings = DashboardSettings()
    except ValidationError as exc:
        st.error(describe_errors(DashboardSettings, exc))
        st.stop()
    if settings.heartbeat_s > 0:
        data.start_heartbeat(settings.redis_url, settings.consumer(data.SERVICE_NAME), settings.heartbeat_s)
    start = start or PAGES[0].key
    current: dict[str, DashboardSettings] = {}

    def page(spec: PageSpec) -> st.Page:
        render = RENDERERS[spec.key]
        return st.Page(
            lambda: render(current["settings"]),
            title=spec.title,
            icon=spec.icon,
            url_path=spec.key,
            default=spec.key == start,
        )

    chosen = st.navigation([page(spec) for spec in PAGES])
    current["settings"] = _sidebar(settings)
    chosen.run()


if __name__ == "__main__":
    main()
