"""The ``redis+cluster://`` URL: what it names, what it refuses, and how settings and logs treat it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from unistream_common.consumer import StreamRuntime
from unistream_common.redisio import ClusterURL, is_cluster, parse_cluster_url, safe_url
from unistream_common.settings import CommonSettings, describe_errors
from unistream_common.stats import Stats


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    assert parse_cluster_url("redis+cluster://svc:p%40ss@redis-1:7000,redis-2:7001/0") == ClusterURL(
        (("redis-1", 7000), ("redis-2", 7001)), "svc", "p@ss"
    )
    assert parse_cluster_url("redis+cluster://10.0.0.1:6380").nodes == (("10.0.0.1", 6380),)
    assert is_cluster("REDIS+CLUSTER://h:1") and not is_cluster("redis://h:1/0")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "not host:port"),
        ("redis+cluster://h1:1,h2", "'h2' is not host:port"),
        ("redis+cluster://h:99999", "not host:port"),
        ("redis+cluster://h:1/3", "only database 0"),
        ("redis+cluster://h:1?ssl=true", "no ?options"),
    ],
)
def test_a_bad_cluster_url_stops_start_up_saying_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValidationError, match=r"(?s)redis_url.*" + says.replace("?", r"\?")):
        CommonSettings(redis_url=url)


def test_the_password_of_a_cluster_url_is_masked_in_messages() -> None:
    assert safe_url("redis+cluster://svc:secret@h1:1,h2:2/0") == "redis+cluster://svc:***@h1:1,h2:2/0"
    with pytest.raises(ValidationError) as info:
        CommonSettings(redis_url="redis+cluster://svc:secret@h1:1,h2/0")
    said = describe_errors(CommonSettings, info.value)
    assert "UNISTREAM_REDIS_URL" in said and "'h2' is not host:port" in said and "secret" not in said


def test_a_cluster_runtime_reads_each_hash_slot_apart_and_a_single_node_reads_all_at_once() -> None:
    streams = ["md:ticks:{ETHUSDT}", "md:bars:{ETHUSDT}:1s", "md:ticks:{BTCUSDT}", "md:bars:{BTCUSDT}:1s"]
    single = StreamRuntime("redis://127.0.0.1:1/0", "c", [], Stats("t"))
    assert single.read_groups(streams) == [streams]
    cluster = StreamRuntime("redis+cluster://127.0.0.1:1", "c", [], Stats("t"))
    assert cluster.read_groups(streams) == [streams[:2], streams[2:]]
    assert cluster.read_groups([]) == []
