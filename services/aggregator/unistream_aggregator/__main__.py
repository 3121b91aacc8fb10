"""``unistream aggregator``: the aggregator service."""

from __future__ import annotations

import sys

from unistream_aggregator.service import SERVICE, worker
from unistream_aggregator.settings import AggregatorSettings
from unistream_common.service import run_service
from unistream_common.settings import load_settings
from unistream_common.stats import Stats


def main(argv: list[str] | None = None) -> int:
    """Run the aggregator until SIGTERM/SIGINT; settings come from UNISTREAM_* variables."""
    argv = sys.argv[1:] if argv is None else argv  # the console script calls main() bare
    if argv:
        print(
            f"unistream aggregator takes no arguments (got {' '.join(argv)}); configure it with UNISTREAM_* "
            "variables, e.g. UNISTREAM_REDIS_URL, UNISTREAM_SYMBOLS, UNISTREAM_GRACE_MS",
            file=sys.stderr,
        )
        return 2
    settings = load_settings(AggregatorSettings)
    return run_service(SERVICE, settings, worker, Stats(SERVICE))


if __name__ == "__main__":
    sys.exit(main())
