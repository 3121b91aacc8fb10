"""The ``unistream`` command: one entry point for every service and the operator tools, for local use.

It comes with the tools package, which no image installs: an image runs its service's own script,
``unistream-<service>``. ``unistream <service>`` runs the same ``unistream_<service>.__main__.main(argv)``;
``unistream run`` runs the whole system locally from deploy/docker-compose.yml;
``unistream tail`` and ``unistream status`` look into the streams.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

SERVICES = ("ingest", "aggregator", "features", "trainer", "dashboard")

# name -> (module, function, help); imported on use so `unistream <service>` stays light.
TOOLS: dict[str, tuple[str, str, str]] = {
    "run": ("unistream_tools.supervisor", "main", "run Redis and every service locally, as compose defines them"),
    "tail": ("unistream_tools.tail", "tail_main", "print the newest entries of a stream (--follow for more)"),
    "status": ("unistream_tools.status", "status_main", "streams, consumer groups, lag and pending entries"),
    "evaluate": ("unistream_tools.evaluate", "main", "walk-forward evaluation of the trainer on archive files"),
    "export": ("unistream_tools.export", "main", "write streams to Parquet or CSV files (ticks, bars, training data)"),
}


def _run_service(name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(f"unistream_{name}.__main__")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"unistream_{name}"):
            print(
                f"unistream {name}: the unistream-{name} package is not installed in this environment "
                f"(pip install -e services/{name})",
                file=sys.stderr,
            )
            return 2
        raise
    return int(module.main(argv) or 0)


def _run_tool(name: str, argv: list[str]) -> int:
    module_name, func_name, _ = TOOLS[name]
    func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
    return int(func(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVICES:
        return _run_service(argv[0], argv[1:])
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="unistream", description="unistream: live market data to training data")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service")
    for name, (_, _, text) in TOOLS.items():
        sub.add_parser(name, help=text, add_help=False)
    args = parser.parse_args(argv)
    return _run_service(args.command, [])


if __name__ == "__main__":
    sys.exit(main())
