"""``unistream features`` as a process: it gets ready against a real Redis and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import service_process, stop_cleanly

from unistream_tools.redis_server import free_port

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
    with service_process("features", env, port, log) as proc:
        stop_cleanly(proc, log)
