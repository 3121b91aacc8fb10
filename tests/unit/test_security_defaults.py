"""Security defaults that hold for every service, checked on the settings, the plan and the sources.

- Local mode listens on loopback only: every service's default bind address, every process of
  `unistream run` (whatever the profile) and the dashboard's Streamlit flags.
- Nothing unpickles: no pickle-family import, no ``torch.load`` without ``weights_only=True``,
  no ``allow_pickle=True``, no unsafe YAML load, no ``eval``/``exec`` in libs/, services/ or
  scripts/. Model weights travel as safetensors checked against a sha256 (see
  test_features_cnn.py and test_trainer_* for the checks themselves).
- The dashboard renders no HTML taken from stream data: Streamlit escapes HTML in Markdown
  unless ``unsafe_allow_html=True``, so no call may pass it, and the raw-HTML elements
  (``st.html``, ``streamlit.components``) are not used at all.
- Passwords in Redis URLs are masked wherever a URL is shown.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from unistream_common.redisio import safe_url
from unistream_common.settings import is_loopback
from unistream_common.stats import Stats
from unistream_tools.supervisor import RunOptions, build_plan

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("libs", "services", "tools", "scripts")


# --------------------------------------------------------------------------- loopback


def settings_classes() -> list[type]:
    from unistream_aggregator.settings import AggregatorSettings
    from unistream_dashboard.settings import DashboardSettings
    from unistream_features.settings import FeaturesSettings
    from unistream_ingest.settings import IngestSettings
    from unistream_trainer.settings import TrainerSettings

    return [IngestSettings, AggregatorSettings, FeaturesSettings, TrainerSettings, DashboardSettings]


@pytest.mark.parametrize("cls", settings_classes(), ids=lambda cls: cls.__name__)
def test_every_service_binds_loopback_unless_told_otherwise(cls: type) -> None:
    assert cls().http_host == "127.0.0.1"


@pytest.mark.parametrize("profile", ["auto", "live", "replay"])
def test_every_process_of_a_local_run_binds_loopback_in_every_profile(profile: str) -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    options = RunOptions(redis_url="redis://127.0.0.1:6390/0", run_dir=Path("/r"), bin_dir=Path("/b"), python="/p")
    plan = build_plan(compose, {}, replace(options, profiles=(profile,), scale={"trainer": 2}))
    assert {spec.environment["UNISTREAM_HTTP_HOST"] for spec in plan} == {"127.0.0.1"}
    assert all(spec.health_url.startswith("http://127.0.0.1:") for spec in plan if spec.health_url)


def test_the_dashboard_serves_streamlit_on_loopback_by_default() -> None:
    from unistream_dashboard.__main__ import streamlit_argv
    from unistream_dashboard.settings import DashboardSettings

    argv = streamlit_argv(DashboardSettings())
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False),
     ("10.0.0.5", False), ("redis", False)],
)  # fmt: skip
def test_is_loopback_knows_which_addresses_only_this_machine_reaches(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", "", True), ("0.0.0.0", "s3cret", False), ("127.0.0.1", "", False)],
)
def test_an_open_door_beyond_loopback_is_warned_about_at_start(
    caplog: pytest.LogCaptureFixture, host: str, token: str, warned: bool
) -> None:
    from unistream_ingest.door import make_door_router
    from unistream_ingest.settings import IngestSettings

    settings = IngestSettings(source="external", http_host=host, ingest_token=token)
    with caplog.at_level(logging.WARNING, logger="unistream_ingest.door"):
        make_door_router(settings, Stats("ingest"))
    assert ("set UNISTREAM_INGEST_TOKEN" in caplog.text) is warned


# --------------------------------------------------------------------------- no unpickling


PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}


def _name(node: ast.AST) -> str:
    """Dotted name of a call's function (``torch.load``), "" when it is not a plain name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def unsafe_deserialisation(source: str) -> list[str]:
    """What in ``source`` could run code from data: pickle-family imports and loads, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name.endswith("torch.load") and not _keyword_is_true(node, "weights_only"):
                found.append(f"{name} without weights_only=True")
            elif _keyword_is_true(node, "allow_pickle"):
                found.append(f"{name}(allow_pickle=True)")
            elif name.endswith("read_pickle") or name in (
                "yaml.load",
                "yaml.load_all",
                "yaml.unsafe_load",
                "yaml.full_load",
            ):
                found.append(name)
            elif name in ("eval", "exec", "__import__"):
                found.append(f"{name}()")
    return found


def python_sources() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py") if ".venv" not in p.parts)


def test_the_scan_sees_the_sources() -> None:
    names = {p.name for p in python_sources()}
    assert {"redisio.py", "cnn.py", "replicas.py", "checkpoint.py", "app.py", "door.py"} <= names


def test_no_source_can_unpickle_or_evaluate_data() -> None:
    findings = {
        str(path.relative_to(REPO)): hits
        for path in python_sources()
        if (hits := unsafe_deserialisation(path.read_text()))
    }
    assert findings == {}


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import cloudpickle as cp",
        "from joblib import load",
        "torch.load(buf)",
        "torch.load(buf, weights_only=False)",
        "np.load(path, allow_pickle=True)",
        "pd.read_pickle(path)",
        "yaml.load(text, Loader=yaml.Loader)",
        "eval(text)",
    ],
)
def test_the_scan_flags_each_way_to_unpickle(snippet: str) -> None:
    assert unsafe_deserialisation(snippet)


@pytest.mark.parametrize(
    "snippet",
    ["torch.load(buf, weights_only=True)", "np.load(path)", "yaml.safe_load(text)", "redis.eval(script, 1, key)"],
)
def test_the_scan_lets_the_safe_forms_through(snippet: str) -> None:
    assert unsafe_deserialisation(snippet) == []


def test_model_weights_are_read_with_safetensors_only() -> None:
    for path in ("libs/model/unistream_model/cnn.py", "services/trainer/unistream_trainer/replicas.py"):
        text = (REPO / path).read_text()
        assert "safetensors" in text and "sha256" in text, path


# --------------------------------------------------------------------------- no HTML from stream data


def raw_html_uses(source: str) -> list[str]:
    """Places in a Streamlit script that would render raw HTML."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            if _keyword_is_true(node, "unsafe_allow_html"):
                found.append(f"{_name(node.func)}(unsafe_allow_html=True)")
            elif _name(node.func) in ("st.html", "streamlit.html", "components.html", "components.iframe"):
                found.append(_name(node.func))
            elif any(k.arg == "unsafe_allow_html" for k in node.keywords):
                found.append(f"{_name(node.func)}(unsafe_allow_html=<not a literal False>)")
        elif isinstance(node, ast.ImportFrom | ast.Import):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"import {m}" for m in modules if m.startswith("streamlit.components")]
            if isinstance(node, ast.ImportFrom) and node.module == "streamlit":
                found += [f"from streamlit import {a.name}" for a in node.names if a.name == "components"]
    return found


def test_the_dashboard_renders_no_raw_html() -> None:
    pages = sorted((REPO / "services" / "dashboard").rglob("*.py"))
    assert len(pages) >= 5
    findings = {str(p.relative_to(REPO)): hits for p in pages if (hits := raw_html_uses(p.read_text()))}
    assert findings == {}


@pytest.mark.parametrize(
    "snippet",
    [
        "st.markdown(name, unsafe_allow_html=True)",
        "st.markdown(name, unsafe_allow_html=flag)",
        "st.html(text)",
        "import streamlit.components.v1 as components",
        "from streamlit import components",
    ],
)
def test_the_html_scan_flags_each_way_to_render_raw_html(snippet: str) -> None:
    assert raw_html_uses(snippet)


# --------------------------------------------------------------------------- passwords in URLs


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:se@cr:et@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://ingest:secret@redis:6380/1?ssl_cert_reqs=none", "rediss://ingest:***@redis:6380/1?ssl_cert_reqs=none"),
        ("redis://host:6379/0?password=secret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock?password=secret", "unix:///run/redis.sock?password=***"),
        ("redis://[::1:6379/0", "<a Redis URL that does not parse>"),
    ],
)  # fmt: skip
def test_safe_url_masks_the_password_wherever_the_url_carries_it(url: str, shown: str) -> None:
    assert safe_url(url) == shown
    assert "secret" not in safe_url(url)
