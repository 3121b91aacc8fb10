"""deploy/docker-compose.cluster.yml, the Redis Cluster overlay, checked statically.

What it does in a real engine is `make compose-check` (deploy/check.py --cluster): six nodes
formed into three masters with a replica each, hostnames announced, the stack on top, a master
SIGKILLed. Here: that it says what the base file says about users and rights, and that every
service, node and address agrees with every other.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from test_compose_files import ALL_APP_SERVICES, APP_SERVICES, COMPOSE, REPO, SECRETS, acl_users, redis_argv, tool

from unistream_common.redisio import parse_cluster_url
from unistream_tools.compose import interpolate, interpolate_tree, load

OVERLAY = REPO / "deploy" / "docker-compose.cluster.yml"
NODES = ("redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6")
CONF = "/usr/local/etc/redis/cluster.conf"


@pytest.fixture(scope="module")
def overlay() -> dict:
    return load(OVERLAY)


def conf_lines(overlay: dict, env: dict[str, str]) -> list[str]:
    """The nodes' configuration file as Compose writes it (interpolated with ``env``)."""
    return interpolate(overlay["configs"]["redis-cluster-conf"]["content"], env).splitlines()


def test_overlay_passes_the_compose_spec_schema() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(OVERLAY)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_node_has_the_base_file_s_users_with_the_same_rules(overlay: dict) -> None:
    base = acl_users(redis_argv(load(COMPOSE), SECRETS))
    users = {}
    for line in conf_lines(overlay, SECRETS):
        if line.startswith("user "):
            _, name, *rules = line.split()
            users[name] = rules
    assert users == base
    # replicas log in to their masters as the administrator
    assert 'masterauth "pw-admin"' in conf_lines(overlay, SECRETS)


def test_a_changed_right_in_either_file_is_caught(overlay: dict) -> None:
    changed = dict(overlay)
    content = overlay["configs"]["redis-cluster-conf"]["content"].replace("~md:ticks:*", "~md:*")
    changed["configs"] = {"redis-cluster-conf": {"content": content}}
    users = {line.split()[1]: line.split()[2:] for line in conf_lines(changed, SECRETS) if line.startswith("user ")}
    assert users != acl_users(redis_argv(load(COMPOSE), SECRETS))


def test_nodes_run_in_cluster_mode_announce_their_own_hostname_and_keep_their_own_data(overlay: dict) -> None:
    conf = conf_lines(overlay, SECRETS)
    for setting in ("cluster-enabled yes", "cluster-preferred-endpoint-type hostname", "appendonly yes"):
        assert setting in conf
    volumes = set()
    for node in NODES:
        service = overlay["services"][node]
        assert service["command"] == ["redis-server", CONF, "--cluster-announce-hostname", node]
        assert service["configs"][0] == {"source": "redis-cluster-conf", "target": CONF}
        if node != "redis":  # `redis` keeps the base file's redis-data volume
            volumes.add(service["volumes"][0].split(":")[0])
    assert len(volumes) == len(NODES) - 1
    assert volumes <= set(overlay["volumes"])


def test_the_init_forms_the_cluster_from_the_nodes_fixed_addresses(overlay: dict) -> None:
    env = {**SECRETS}
    subnet = ipaddress.ip_network(interpolate_tree(overlay["networks"], env)["default"]["ipam"]["config"][0]["subnet"])
    addresses = []
    for node in NODES:
        address = interpolate(overlay["services"][node]["networks"]["default"]["ipv4_address"], env)
        assert ipaddress.ip_address(address) in subnet
        addresses.append(f"{address}:6379")
    assert len(set(addresses)) == len(NODES)
    init = overlay["services"]["redis-cluster-init"]
    assert interpolate(init["environment"]["NODES"], env).split() == addresses
    assert "--cluster-replicas 1" in init["command"][-1]
    assert set(init["depends_on"]) == set(NODES)


def test_services_wait_for_the_node_that_is_healthy_once_the_cluster_serves_every_slot(overlay: dict) -> None:
    assert "cluster_state:ok" in " ".join(overlay["services"]["redis"]["healthcheck"]["test"])
    base = load(COMPOSE)
    for name in APP_SERVICES:
        assert base["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ALL_APP_SERVICES)
def test_each_service_waits_for_the_cluster_to_be_formed(overlay: dict, name: str) -> None:
    # Also what tells `up --wait` that the init's exit is its success, not a failure (seen with
    # Compose 2.26: without it `make up CLUSTER=1` failed on "redis-cluster-init exited (0)").
    assert overlay["services"][name]["depends_on"] == {
        "redis-cluster-init": {"condition": "service_completed_successfully"}
    }


@pytest.mark.parametrize("name", ALL_APP_SERVICES)
def test_each_service_reaches_every_node_as_its_own_user(overlay: dict, name: str) -> None:
    user = name.split("-")[0]
    url = interpolate(overlay["services"][name]["environment"]["UNISTREAM_REDIS_URL"], SECRETS)
    parsed = parse_cluster_url(url)
    assert (parsed.username, parsed.password) == (user, f"pw-{user}")
    assert [f"{host}:{port}" for host, port in parsed.nodes] == [f"{n}:6379" for n in NODES]


def test_make_up_takes_the_overlay_with_cluster_1() -> None:
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "up", "CLUSTER=1"], cwd=REPO, capture_output=True, text=True,
        timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "docker compose -f deploy/docker-compose.yml -f deploy/docker-compose.cluster.yml --env-file" in out


def test_compose_check_runs_the_stack_on_one_redis_and_on_the_cluster() -> None:
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "compose-check"], cwd=REPO, capture_output=True, text=True,
        timeout=30, check=True,
    ).stdout  # fmt: skip
    runs = [line.split()[1:] for line in out.splitlines() if "deploy/check.py" in line]
    assert runs == [["deploy/check.py"], ["deploy/check.py", "--cluster"]]


def test_overlay_path_is_where_the_check_takes_it_from() -> None:
    sys.path.insert(0, str(REPO / "deploy"))
    import check

    assert Path(check.CLUSTER_FILE) == OVERLAY
    assert tuple(check.CLUSTER_NODES) == NODES
