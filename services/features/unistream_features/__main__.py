"""``unistream features``: run the features service until SIGINT/SIGTERM; ``unistream features layout`` prints the state layout."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unistream features``; configuration comes from ``UNISTREAM_*`` variables."""
    argv = sys.argv[1:] if argv is None else argv  # the console script calls main() bare
    if argv and argv[0] == "layout":
        # Before the service imports: printing the layout needs neither torch nor Redis.
        from unistream_model.layout import main as layout_main

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


if __name__ == "__main__":
    sys.exit(main())
