"""``unistream features`` as a process: it gets ready against a real Redis and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_ready

from unistream_common.redis_server import free_port

pytestmark = pytest.mark.integration


def test_unistream_features_gets_ready_and_exits_promptly_on_sigterm(redis_url: str, tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "UNISTREAM_REDIS_URL": redis_url,
        "UNISTREAM_HTTP_PORT": str(port),
        "UNISTREAM_SYMBOLS": "ETHUSDT",
        "UNISTREAM_MODEL_DIR": str(tmp_path),
        "UNISTREAM_CONSUMER_NAME": "features-entrypoint",
    }
    log = tmp_path / "features.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unistream_common.cli", "features"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(port, proc, log)  # importing torch is slow on a busy machine
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=15)
            assert time.monotonic() - started < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
