"""What `unistream run` reads of a compose file beyond command and environment: profiles, YAML
anchors and extension fields, required variables that only feed local overrides, restart policies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from unistream_common.settings import EXIT_BAD_CONFIG
from unistream_tools import compose
from unistream_tools.compose import ComposeError
from unistream_tools.supervisor import PlanError, RunOptions, build_plan, no_restart_reason, resolve

OPTIONS = RunOptions(redis_url="redis://127.0.0.1:7000/0", run_dir=Path("/tmp/r"), bin_dir=Path("/b"), python="/p")

# The shapes of deploy/docker-compose.yml in small: an x- extension with an anchor merged into
# services, a profile per variant, a required secret in the Redis URL and in Redis's command.
ANCHORED = """
name: demo
x-unistream-default-profiles: [a]
x-logging: &logging
  driver: json-file
  options: {max-size: 10m, max-file: "5"}
x-base: &base
  restart: unless-stopped
  logging: *logging
  command: ["python", "-c", "pass"]
services:
  redis:
    image: redis:7.4
    command: redis-server --requirepass ${SECRET:?set it in .env}
  one-a:
    <<: *base
    profiles: [a]
    environment:
      UNISTREAM_REDIS_URL: redis://one:${SECRET:?set it in .env}@redis:6379/0
      UNISTREAM_HTTP_PORT: "9001"
  one-b:
    <<: *base
    profiles: [b]
    environment:
      UNISTREAM_REDIS_URL: redis://one:${SECRET:?set it in .env}@redis:6379/0
      UNISTREAM_HTTP_PORT: "9001"
  two:
    <<: *base
    environment: ["UNISTREAM_SYMBOLS=${SYMBOLS:-ETHUSDT}", "UNISTREAM_HTTP_HOST=${HOST:?never needed locally}"]
"""


@pytest.fixture
def doc(tmp_path: Path) -> dict:
    path = tmp_path / "compose.yml"
    path.write_text(ANCHORED)
    return compose.load(path)


def test_anchors_merge_keys_and_extension_fields_load_as_compose_reads_them(doc: dict) -> None:
    assert doc["services"]["one-a"]["logging"] == {
        "driver": "json-file",
        "options": {"max-size": "10m", "max-file": "5"},
    }
    assert doc["services"]["two"]["restart"] == "unless-stopped"
    assert compose.command(doc, "one-b") == ["python", "-c", "pass"]
    assert compose.default_profiles(doc) == ["a"]


def test_a_service_with_profiles_runs_only_when_one_is_active(doc: dict) -> None:
    assert compose.profiles(doc, "one-a") == ["a"] and compose.profiles(doc, "two") == []
    assert compose.enabled(doc, "one-a", ["a"]) and not compose.enabled(doc, "one-a", ["b"])
    assert compose.enabled(doc, "two", []), "a service without profiles always runs"
    assert compose.enabled(doc, "one-b", ["*"]), "compose's --profile '*' enables every profile"


def test_the_plan_follows_the_active_profiles_and_defaults_to_the_file_s(doc: dict) -> None:
    assert [s.name for s in build_plan(doc, {}, OPTIONS)] == ["one-a-1", "two-1"]
    assert [s.name for s in build_plan(doc, {}, replace(OPTIONS, profiles=("b",)))] == [
        "one-b-1",
        "two-1",
    ]
    with pytest.raises(PlanError, match="no service has profile\\(s\\) c; profiles: a, b"):
        build_plan(doc, {}, replace(OPTIONS, profiles=("c",)))


def test_required_variables_that_only_feed_local_overrides_or_redis_are_not_needed_locally(doc: dict) -> None:
    # SECRET (Redis's password) and HOST (a bind address run replaces) are unset, as without deploy/.env
    plan = build_plan(doc, {"SYMBOLS": "SOLUSDT"}, OPTIONS)
    two = next(spec for spec in plan if spec.service == "two")
    assert two.environment["UNISTREAM_SYMBOLS"] == "SOLUSDT"
    assert two.environment["UNISTREAM_HTTP_HOST"] == "127.0.0.1"
    assert all(spec.environment["UNISTREAM_REDIS_URL"] == OPTIONS.redis_url for spec in plan)
    assert "redis" not in resolve(doc, {})["services"]


def test_a_required_variable_in_a_value_the_run_keeps_still_stops_the_plan(doc: dict) -> None:
    doc["services"]["two"]["environment"].append("UNISTREAM_TOKEN=${TOKEN:?set the token}")
    with pytest.raises(ComposeError, match="TOKEN is missing: set the token"):
        build_plan(doc, {}, OPTIONS)


@pytest.mark.parametrize("bad", ["a", [1]])
def test_profiles_that_are_not_a_list_of_names_are_refused(doc: dict, bad: object) -> None:
    doc["services"]["two"]["profiles"] = bad
    with pytest.raises(ComposeError, match="'profiles' must be a list of names"):
        compose.profiles(doc, "two")
    doc["x-unistream-default-profiles"] = bad
    with pytest.raises(ComposeError, match="must be a list of profile names"):
        compose.default_profiles(doc)


@pytest.mark.parametrize(
    ("policy", "returncode", "restarted"),
    [
        ("unless-stopped", 1, True),
        ("unless-stopped", 0, True),
        ("always", -9, True),
        ("on-failure", 1, True),
        ("on-failure", 0, False),
        ("no", 1, False),
        ("unless-stopped", EXIT_BAD_CONFIG, False),
        ("always", EXIT_BAD_CONFIG, False),
    ],
)
def test_restart_follows_the_compose_policy_but_never_repeats_bad_configuration(
    policy: str, returncode: int, restarted: bool
) -> None:
    reason = no_restart_reason(policy, returncode)
    assert (reason == "") is restarted
    if returncode == EXIT_BAD_CONFIG:
        assert "bad configuration" in reason
