"""Process helpers shared by the bench rows."""

from __future__ import annotations

import subprocess
import sys

# A small launcher runs the command and reports its children's peak RSS. ru_maxrss survives exec,
# so a child forked straight from the (large) bench process would start at that process's size.
_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS of ``cmd`` run to completion, MiB; raises RuntimeError when it fails."""
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], env=env, capture_output=True, text=True, check=True)
    rc, kib = out.stdout.split()
    if rc != "0":
        raise RuntimeError(f"{cmd[:4]} exited {rc}")
    return int(kib) / 1024
