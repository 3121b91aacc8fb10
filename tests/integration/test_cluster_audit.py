"""The cross-slot check of tests/slots.py finds what a Redis Cluster would refuse, and only that:
MONITOR lines recorded from a real Redis while a client sends known commands."""

from __future__ import annotations

import time

import redis
from slots import KeyFinder, Monitor, Violation, cross_slot, unescape

from unistream_tools.redis_server import RedisServer


def recorded(server: RedisServer, send) -> list[tuple[str, list[bytes]]]:  # type: ignore[no-untyped-def]
    monitor = Monitor(server.port)
    client = redis.Redis(port=server.port)
    try:
        time.sleep(0.2)
        send(client)
        client.ping()
        time.sleep(0.3)
    finally:
        monitor.stop()
        client.close()
    return monitor.lines


def test_the_check_flags_cross_slot_commands_transactions_and_scripts_and_nothing_else(
    module_redis: RedisServer,
) -> None:
    def send(c: redis.Redis) -> None:
        # one slot each: fine
        c.xadd("md:ticks:{ETHUSDT}", {"v": 'a "quoted"\nvalue \x00\xff'})
        pipe = c.pipeline(transaction=True)
        pipe.xadd("md:bars:{ETHUSDT}:1s", {"v": "1"})
        pipe.set("md:ticks:{ETHUSDT}:mark", "1")
        pipe.execute()
        c.xgroup_create("md:ticks:{ETHUSDT}", "g", id="0")
        c.xreadgroup("g", "c", {"md:ticks:{ETHUSDT}": ">"})
        # two slots: each of these is refused by a cluster
        c.mget("md:ticks:{ETHUSDT}:mark", "md:ticks:{BTCUSDT}:mark")
        pipe = c.pipeline(transaction=True)
        pipe.set("svc:a", "1")
        pipe.zadd("svc:index", {"a": 1})
        pipe.execute()
        c.eval("return 1", 2, "ml:training:{ETHUSDT}", "ml:training:{BTCUSDT}")
        c.xadd("md:ticks:{BTCUSDT}", {"v": "1"})
        c.xgroup_create("md:ticks:{BTCUSDT}", "g", id="0")
        c.xreadgroup("g", "c", {"md:ticks:{ETHUSDT}": ">", "md:ticks:{BTCUSDT}": ">"})

    lines = recorded(module_redis, send)
    found = cross_slot(lines, KeyFinder(redis.Redis(port=module_redis.port)))
    assert set(found) == {
        Violation("MGET", ("md:ticks:{BTCUSDT}:mark", "md:ticks:{ETHUSDT}:mark")),
        Violation("MULTI: SET, ZADD", ("svc:a", "svc:index")),
        Violation("EVAL", ("ml:training:{BTCUSDT}", "ml:training:{ETHUSDT}")),
        Violation("XREADGROUP", ("md:ticks:{BTCUSDT}", "md:ticks:{ETHUSDT}")),
    }, found


def test_monitor_arguments_are_read_back_as_the_client_sent_them() -> None:
    assert unescape(rb"a \"quoted\"\nvalue \x00\xff") == b'a "quoted"\nvalue \x00\xff'
    assert unescape(rb"back\\slash") == b"back\\slash"
