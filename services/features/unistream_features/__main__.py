"""``unistream features``: run the features service until SIGINT/SIGTERM; ``unistream features layout`` prints the state layout."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from unistream_common.keys import check_symbol
from unistream_model.layout import DEFAULT_SYMBOLS, LAYOUT_VERSION, make_layout
from unistream_model.mtf import DEFAULT_WINDOW_BARS


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unistream features``; configuration comes from ``UNISTREAM_*`` variables."""
    argv = sys.argv[1:] if argv is None else argv  # the console script calls main() bare
    if argv and argv[0] == "layout":
        # Before the service imports: printing the layout needs neither torch nor Redis.
        return layout_main(argv[1:])

    import torch

    from unistream_common.service import run_service
    from unistream_common.settings import load_settings
    from unistream_common.stats import Stats
    from unistream_features.service import SERVICE, worker
    from unistream_features.settings import FeaturesSettings

    argparse.ArgumentParser(
        prog="unistream features",
        description="1s bars and trades in, CNN features and RL training states out (settings: UNISTREAM_*); "
        "'unistream features layout --help' describes the state layout",
    ).parse_args(argv)
    settings = load_settings(FeaturesSettings)
    # One inference per bar per symbol is cheap; more threads only fight the other services for cores.
    torch.set_num_threads(1)
    return run_service(SERVICE, settings, worker, Stats(SERVICE))


def _symbols_arg(text: str) -> tuple[str, ...]:
    items = tuple(s.strip().upper() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("no symbols given; use e.g. ETHUSDT,BTCUSDT")
    for s in items:
        try:
            check_symbol(s)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return items


def layout_main(argv: Sequence[str]) -> int:
    """``unistream features layout``: print the state layout (Markdown table, ``--json``, or ``--features``)."""
    parser = argparse.ArgumentParser(
        prog="unistream features layout", description=f"print the RL state layout {LAYOUT_VERSION}"
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="the layout as JSON")
    out.add_argument("--features", action="store_true", help="one line per value: index and feature name")
    # Defaults are what the service would use here: UNISTREAM_SYMBOLS and UNISTREAM_WINDOW_BARS when set.
    env_symbols = os.environ.get("UNISTREAM_SYMBOLS", "").strip()
    env_window = os.environ.get("UNISTREAM_WINDOW_BARS", "").strip()
    parser.add_argument(
        "--symbols",
        type=_symbols_arg,
        default=_symbols_arg(env_symbols) if env_symbols else DEFAULT_SYMBOLS,
        help="comma-separated symbols (default: UNISTREAM_SYMBOLS, else ETHUSDT,BTCUSDT)",
    )
    parser.add_argument(
        "--focus", type=str.upper, default=None, help="the state's own symbol (default: the first of --symbols)"
    )
    parser.add_argument(
        "--window-bars",
        type=int,
        default=int(env_window) if env_window.isdigit() else DEFAULT_WINDOW_BARS,
        help="bars per timeframe window (default: UNISTREAM_WINDOW_BARS, else 300)",
    )
    args = parser.parse_args(list(argv))
    try:
        layout = make_layout(args.symbols, window_bars=args.window_bars, focus=args.focus)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        if args.json:
            print(json.dumps(layout.to_json(), indent=1))
        elif args.features:
            sys.stdout.writelines(f"{i}\t{name}\n" for i, name in enumerate(layout.feature_names()))
        else:
            print(layout.table_markdown())
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout again at exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
