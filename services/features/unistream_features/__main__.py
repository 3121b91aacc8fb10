"""``unistream features``: run the features service until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import sys

import torch

from unistream_common.service import run_service
from unistream_common.settings import load_settings
from unistream_common.stats import Stats
from unistream_features.service import SERVICE, worker
from unistream_features.settings import FeaturesSettings


def main(argv: list[str]) -> int:
    """Entry point of ``unistream features``; configuration comes from ``UNISTREAM_*`` variables."""
    argparse.ArgumentParser(
        prog="unistream features",
        description="1s bars and trades in, CNN features and RL training states out (settings: UNISTREAM_*)",
    ).parse_args(argv)
    settings = load_settings(FeaturesSettings)
    # One inference per bar per symbol is cheap; more threads only fight the other services for cores.
    torch.set_num_threads(1)
    return run_service(SERVICE, settings, worker, Stats(SERVICE))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
