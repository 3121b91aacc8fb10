"""``unistream trainer``: run the DQN trainer until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import sys

import torch

from unistream_common.service import run_service
from unistream_common.settings import load_settings
from unistream_common.stats import Stats
from unistream_trainer.service import SERVICE, worker
from unistream_trainer.settings import TrainerSettings


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unistream trainer``; configuration comes from ``UNISTREAM_*`` variables."""
    argv = sys.argv[1:] if argv is None else argv  # the console script calls main() bare
    argparse.ArgumentParser(
        prog="unistream trainer",
        description="DQN on the training stream; metrics to ml:metrics, checkpoints announced on ml:models "
        "(settings: UNISTREAM_*)",
    ).parse_args(argv)
    settings = load_settings(TrainerSettings)
    # One thread: the machine is shared with the other services, and at batch 64 more threads gain little.
    torch.set_num_threads(1)
    return run_service(SERVICE, settings, worker, Stats(SERVICE))


if __name__ == "__main__":
    sys.exit(main())
