"""``unistream ingest``: the ingest service."""

from __future__ import annotations

import argparse
import os
import sys

from unistream_common.service import run_service
from unistream_common.settings import load_settings
from unistream_common.stats import Stats
from unistream_ingest.door import make_door_router
from unistream_ingest.service import SERVICE, worker
from unistream_ingest.settings import IngestSettings


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; each one overrides the UNISTREAM_* variable of the same name."""
    parser = argparse.ArgumentParser(
        prog="unistream ingest",
        description="Market trades into md:ticks:{SYMBOL}. Every option overrides its UNISTREAM_* variable.",
    )
    parser.add_argument(
        "--source", choices=["auto", "binance", "synthetic", "replay", "external"], help="UNISTREAM_SOURCE"
    )
    parser.add_argument("--record", metavar="DIR", help="record live trades as daily CSV files (UNISTREAM_RECORD_DIR)")
    parser.add_argument("--path", nargs="+", metavar="FILE", help="files to replay (UNISTREAM_REPLAY_PATHS)")
    parser.add_argument("--symbol", help="symbol of the replayed files (UNISTREAM_REPLAY_SYMBOL)")
    parser.add_argument("--speed", help="replay pace: max, or a factor of real time (UNISTREAM_REPLAY_SPEED)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ingest until SIGTERM/SIGINT, or until a replay's files are written (exit 0)."""
    argv = sys.argv[1:] if argv is None else argv  # the console script calls main() bare
    args = build_parser().parse_args(argv)
    overrides: dict[str, object] = {}
    if args.source:
        overrides["source"] = args.source
    if args.path:
        overrides["replay_paths"] = tuple(args.path)
    if args.symbol:
        overrides["replay_symbol"] = args.symbol.upper()
        if "UNISTREAM_SYMBOLS" not in os.environ:  # a one-off replay of one symbol needs no more set-up
            overrides["symbols"] = (args.symbol.upper(),)
    if args.speed:
        overrides["replay_speed"] = args.speed
    if args.record:
        overrides["record_dir"] = args.record
    settings = load_settings(IngestSettings, **overrides)
    stats = Stats(SERVICE)
    return run_service(SERVICE, settings, worker, stats, routers=[make_door_router(settings, stats)])


if __name__ == "__main__":
    sys.exit(main())
