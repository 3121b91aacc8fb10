"""Print the third-party requirements of the given pyproject.toml files, one per line.

    python dependencies.py libs/common/pyproject.toml services/ingest/pyproject.toml

The Dockerfile installs these (pinned by constraints.txt) before it copies any source, so a change
to the code rebuilds only the last layer of an image, not its dependencies (torch among them).
Our own packages (unistream-*) are left out: the Dockerfile installs them from source with
--no-deps. Standard library only: it runs in the bare base image.
"""

from __future__ import annotations

import sys
import tomllib

OWN_PREFIX = "unistream-"


def requirements(paths: list[str]) -> list[str]:
    """The dependencies of every ``pyproject.toml`` in ``paths``, ours left out, in order, without repeats."""
    out: list[str] = []
    for path in paths:
        with open(path, "rb") as f:
            for requirement in tomllib.load(f)["project"].get("dependencies", []):
                if not requirement.startswith(OWN_PREFIX) and requirement not in out:
                    out.append(requirement)
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
