"""``unistream ingest`` mounts the door beside its probes."""

from __future__ import annotations

from typing import Any

import pytest

import unistream_ingest.__main__ as ingest_main
from unistream_ingest.door import PATH, STATS_PATH


def test_the_ingest_entry_point_serves_the_door_with_the_service_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run_service(name: str, settings: Any, worker: Any, stats: Any, routers: Any = None) -> int:
        seen.update(name=name, stats=stats, routers=routers)
        return 0

    monkeypatch.setattr(ingest_main, "run_service", fake_run_service)
    monkeypatch.setenv("UNISTREAM_INGEST_TOKEN", "s3cret")
    assert ingest_main.main([]) == 0
    (router,) = seen["routers"]
    assert {route.path for route in router.routes} == {PATH, STATS_PATH}
    assert router.door.stats is seen["stats"] and router.door.token_required
