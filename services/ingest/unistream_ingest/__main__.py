"""``unistream ingest``: the ingest service."""

from __future__ import annotations

import sys

from unistream_common.service import run_service
from unistream_common.settings import load_settings
from unistream_common.stats import Stats
from unistream_ingest.service import SERVICE, worker
from unistream_ingest.settings import IngestSettings


def main(argv: list[str]) -> int:
    """Run ingest until SIGTERM/SIGINT; settings come from UNISTREAM_* variables."""
    if argv:
        print(
            f"unistream ingest takes no arguments (got {' '.join(argv)}); configure it with UNISTREAM_* "
            "variables, e.g. UNISTREAM_REDIS_URL, UNISTREAM_SYMBOLS, UNISTREAM_SEED, UNISTREAM_FLUSH_INTERVAL_MS",
            file=sys.stderr,
        )
        return 2
    settings = load_settings(IngestSettings)
    return run_service(SERVICE, settings, worker, Stats(SERVICE))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
