"""unistream_tools.compose: Compose's interpolation and the service fields `unistream run` reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from unistream_tools import compose
from unistream_tools.compose import ComposeError

ENV = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("${SET}", "value"),
        ("$SET", "value"),
        ("a-$SET-b", "a-value-b"),
        ("${MISSING}", ""),
        ("${SET:-default}", "value"),
        ("${MISSING:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${MISSING-default}", "default"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${MISSING+alt}", ""),
        ("$$SET", "$SET"),
        ("cost $$5", "cost $5"),
        ("${MISSING:-ETHUSDT,BTCUSDT}", "ETHUSDT,BTCUSDT"),
        ("${MISSING:-${SET}}", "value"),
        ("${MISSING:-a${OTHER:-b}c}", "abc"),
        ("redis://${MISSING:-redis}:6379/0", "redis://redis:6379/0"),
    ],
)
def test_interpolation_follows_compose_rules(text: str, expected: str) -> None:
    assert compose.interpolate(text, ENV) == expected


def test_required_variable_that_is_missing_stops_with_its_message() -> None:
    with pytest.raises(ComposeError, match="MISSING is missing: set the symbols"):
        compose.interpolate("${MISSING:?set the symbols}", ENV)
    assert compose.interpolate("${SET:?unused}", ENV) == "value"
    with pytest.raises(ComposeError):
        compose.interpolate("${EMPTY:?empty is not enough}", ENV)
    assert compose.interpolate("${EMPTY?set is enough}", ENV) == ""


@pytest.mark.parametrize("text", ["${", "${SET", "${SET:-x", "${1X}", "${SET!x}", "$ alone"])
def test_malformed_interpolation_is_refused(text: str) -> None:
    with pytest.raises(ComposeError):
        compose.interpolate(text, ENV)


def test_interpolate_tree_expands_values_but_not_keys() -> None:
    tree = {"${SET}": ["${SET}", 1, None, {"k": "$SET"}]}
    assert compose.interpolate_tree(tree, ENV) == {"${SET}": ["value", 1, None, {"k": "value"}]}


def doc(**service: object) -> dict:
    return {"services": {"svc": service}}


def test_environment_list_and_mapping_forms_agree() -> None:
    as_list = doc(environment=["A=1", "B=x=y", "PASS", "ABSENT"])
    as_map = doc(environment={"A": 1, "B": "x=y", "PASS": None, "ABSENT": None})
    env = {"PASS": "through"}
    expected = {"A": "1", "B": "x=y", "PASS": "through"}
    assert compose.environment(as_list, "svc", env) == expected
    assert compose.environment(as_map, "svc", env) == expected


def test_environment_booleans_are_passed_lower_case() -> None:
    assert compose.environment(doc(environment={"FLAG": True, "OFF": False}), "svc", {}) == {
        "FLAG": "true",
        "OFF": "false",
    }


def test_env_file_and_entrypoint_are_refused_because_run_would_not_see_them() -> None:
    with pytest.raises(ComposeError, match="env_file"):
        compose.environment(doc(env_file=".env"), "svc", {})
    with pytest.raises(ComposeError, match="entrypoint"):
        compose.command(doc(entrypoint=["sh"], command=["x"]), "svc")


def test_command_string_of_plain_words_is_split_at_white_space() -> None:
    assert compose.command(doc(command="redis-server  --appendonly yes\n--port\t7"), "svc") == [
        "redis-server", "--appendonly", "yes", "--port", "7",
    ]  # fmt: skip
    assert compose.command(doc(command=["unistream", "ingest"]), "svc") == ["unistream", "ingest"]
    with pytest.raises(ComposeError, match="no 'command'"):
        compose.command(doc(), "svc")


@pytest.mark.parametrize(
    "text",
    [
        # Compose (go-shellwords) stops at an unquoted > and silently drops the rest: 2 words, not 4
        "redis-server --user ingest on >secret ~md:*",
        "sh -c 'exit 0'",  # quotes: go-shellwords and POSIX shells disagree on escapes inside them
        'echo "a b"',
        "a\\ b",
        "a;b",
        "a && b",
        "a | b",
        "a $(b)",
        "a `b`",
        "cat <in",
    ],
)
def test_command_string_with_shell_syntax_is_refused_with_the_list_form_as_the_fix(text: str) -> None:
    with pytest.raises(ComposeError, match="write the command as a YAML list"):
        compose.command(doc(command=text), "svc")


@pytest.mark.parametrize("item", [True, 8, 1.5, None])
def test_command_list_items_must_be_strings_as_compose_requires(item: object) -> None:
    with pytest.raises(ComposeError, match="must be a string"):
        compose.command(doc(command=["x", item]), "svc")


def test_yaml_is_read_as_compose_reads_it_only_true_and_false_are_booleans(tmp_path: Path) -> None:
    # what `docker compose config` 2.26 printed for this file (environment values as strings):
    # command ['a', 'on', 'yes', 'no', 'off'], environment A=true B=yes C=on D=1.5
    path = tmp_path / "compose.yml"
    path.write_text(
        "services:\n  svc:\n    command: [a, on, yes, no, off]\n    environment: {A: true, B: yes, C: on, D: 1.50}\n"
    )
    loaded = compose.load(path)
    assert compose.command(loaded, "svc") == ["a", "on", "yes", "no", "off"]
    assert compose.environment(loaded, "svc", {}) == {"A": "true", "B": "yes", "C": "on", "D": "1.5"}


def test_replicas_come_from_scale_or_deploy_replicas() -> None:
    assert compose.replicas(doc(), "svc") == 1
    assert compose.replicas(doc(deploy={"replicas": 3}), "svc") == 3
    assert compose.replicas(doc(scale=2), "svc") == 2


def test_start_order_puts_dependencies_first_and_keeps_file_order_otherwise() -> None:
    services = {
        "dashboard": {"depends_on": ["redis"]},
        "trainer": {"depends_on": {"features": {"condition": "service_started"}}},
        "features": {"depends_on": {"redis": {"condition": "service_healthy"}}},
        "redis": {},
    }
    order = compose.start_order({"services": services}, ["dashboard", "trainer", "features"])
    assert order == ["dashboard", "features", "trainer"]


def test_start_order_reports_a_cycle() -> None:
    services = {"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}}
    with pytest.raises(ComposeError, match="cycle"):
        compose.start_order({"services": services}, ["a", "b"])


def test_unknown_service_and_unreadable_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="no service 'nope'"):
        compose.service(doc(), "nope")
    with pytest.raises(ComposeError, match="cannot read"):
        compose.load(tmp_path / "missing.yml")
    (tmp_path / "bad.yml").write_text("services: [")
    with pytest.raises(ComposeError, match="not valid YAML"):
        compose.load(tmp_path / "bad.yml")
    (tmp_path / "empty.yml").write_text("version: '3'\n")
    with pytest.raises(ComposeError, match="no 'services'"):
        compose.load(tmp_path / "empty.yml")


def test_healthcheck_url_is_read_from_an_urlopen_probe() -> None:
    probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=3)"
    assert compose.healthcheck_url(doc(healthcheck={"test": ["CMD", "python", "-c", probe]}), "svc") == (
        8501,
        "/_stcore/health",
    )
    assert compose.healthcheck_url(doc(healthcheck={"test": "curl -f http://localhost:8001"}), "svc") == (8001, "/")


def test_services_without_an_http_healthcheck_have_no_healthcheck_url() -> None:
    assert compose.healthcheck_url(doc(), "svc") is None
    assert compose.healthcheck_url(doc(healthcheck={"test": ["CMD", "redis-cli", "ping"]}), "svc") is None
    disabled = {"test": ["CMD", "curl", "http://127.0.0.1:1/"], "disable": True}
    assert compose.healthcheck_url(doc(healthcheck=disabled), "svc") is None
