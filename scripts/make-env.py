"""Write deploy/.env from deploy/.env.example with a fresh random value for every empty secret.

    python3 scripts/make-env.py deploy/.env.example deploy/.env

A secret is an assignment whose name ends in ``_TOKEN`` or contains ``_PASSWORD``; every other
line is copied as it is. The file is created with mode 600 and never overwritten (delete it to
start again: Redis takes the new passwords at its next start). Values are 48 hex digits, so
they go into a Redis URL unquoted. Standard library only: it runs before the venv exists.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path

SECRET_RE = re.compile(r"^(?P<name>[A-Z0-9_]*(?:_PASSWORD[A-Z0-9_]*|_TOKEN))=\s*$")


def render(example: str) -> str:
    """The text of ``example`` with every empty secret given a random value."""
    lines = []
    for line in example.splitlines():
        m = SECRET_RE.match(line)
        lines.append(f"{m.group('name')}={secrets.token_hex(24)}" if m else line)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: make-env.py EXAMPLE TARGET", file=sys.stderr)
        return 2
    example, target = Path(argv[0]), Path(argv[1])
    text = render(example.read_text())
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"{target} exists: not overwritten (delete it to make a new one)", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as out:
        out.write(text)
    print(f"wrote {target} with new random secrets (mode 600); it is in .gitignore: never commit it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
