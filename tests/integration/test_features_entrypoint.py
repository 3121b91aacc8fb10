"""``unistream features`` as a process: it gets ready against a real Redis and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from unistream_common.redis_server import free_port

pytestmark = pytest.mark.integration


def readyz(port: int) -> tuple[int | None, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())
    except OSError:
        return None, {}


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
            deadline = time.monotonic() + 60  # importing torch is slow on a busy machine
            code, body = readyz(port)
            while code != 200:
                assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"not ready within 60 s: {body}"
                time.sleep(0.2)
                code, body = readyz(port)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=15)
            assert time.monotonic() - started < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # uvicorn re-raises the SIGTERM it handled once shut down, so a clean stop reads as -SIGTERM.
    assert rc in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
