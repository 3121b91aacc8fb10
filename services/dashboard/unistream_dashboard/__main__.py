"""``unistream dashboard``: serve the Streamlit page on ``UNISTREAM_HTTP_HOST:UNISTREAM_HTTP_PORT``.

The process replaces itself with ``python -m streamlit run app.py`` (``os.execv``) rather than
starting a child: the Streamlit server then has this process's pid, so a supervisor's SIGTERM
reaches it directly and no wrapper is left behind to forward signals or orphan a child.
Settings, and the credentials in the Redis URL, are checked before the exec so bad configuration
fails with a clear message and status 2 instead of a page full of errors; the page reads the same
environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from unistream_common.redisio import access_problem, safe_url
from unistream_common.settings import EXIT_BAD_CONFIG, load_settings
from unistream_dashboard.settings import DashboardSettings

APP = Path(__file__).with_name("app.py")


def streamlit_argv(settings: DashboardSettings, extra: list[str] | None = None) -> list[str]:
    """Command line that serves the page; ``extra`` Streamlit flags come last so they win."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(settings.port),
        "--server.address", settings.http_host,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        # The installed page never changes under a running server; watching it costs CPU.
        "--server.fileWatcherType", "none",
        # An operator's view: no "Deploy" button or developer menu.
        "--client.toolbarMode", "viewer",
        # Streamlit runs a full gc.collect() after every script run, fragment runs included: with
        # plotly, pandas and pyarrow loaded that is most of a live page's CPU (a panel refreshes
        # every second). Python's own generational collector still runs.
        "--runner.postScriptGC", "false",
        "--logger.level", settings.log_level.lower(),
        *(extra or []),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Check settings, then exec Streamlit (does not return on success).

    ``argv`` may hold extra Streamlit flags, e.g. ``--theme.base dark``; ``-h``/``--help``
    prints usage.
    """
    argv = sys.argv[1:] if argv is None else argv  # the console script calls main() bare
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: unistream dashboard [STREAMLIT FLAGS...]\n\n"
            "Serves the dashboard with Streamlit. Configure with UNISTREAM_REDIS_URL, UNISTREAM_SYMBOLS,\n"
            "UNISTREAM_HTTP_HOST (default 127.0.0.1), UNISTREAM_HTTP_PORT (default 8501),\n"
            "UNISTREAM_REFRESH_S, UNISTREAM_LIVE_AFTER_S, UNISTREAM_CHART_BARS."
        )
        return 0
    settings = load_settings(DashboardSettings)
    problem = access_problem(settings.redis_url)
    if problem is not None:
        print(f"unistream dashboard: {problem}; fix UNISTREAM_REDIS_URL", file=sys.stderr, flush=True)
        return EXIT_BAD_CONFIG
    args = streamlit_argv(settings, argv)
    print(
        f"unistream dashboard: serving on http://{settings.http_host}:{settings.port} "
        f"(Redis {safe_url(settings.redis_url)}, symbols {','.join(settings.symbols)})",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os.execv(sys.executable, args)
    return 0  # not reached: execv replaces the process


if __name__ == "__main__":
    sys.exit(main())
