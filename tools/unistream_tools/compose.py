"""Read deploy/docker-compose.yml the way Docker Compose does, for ``unistream run``.

Only what the local supervisor needs: variable interpolation, a service's ``command`` and
``environment``, its replica count, ``restart`` policy, ``profiles`` and ``depends_on``. YAML
anchors and merge keys are resolved by the YAML loader; ``x-`` extension fields (the shared
``logging`` block) are ignored except the ``x-unistream-*`` ones read here. Everything here is
pure (a dict and an environment in, values out) so the supervisor's plan can be unit-tested
against the real file.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_COMPOSE = Path("deploy") / "docker-compose.yml"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOCAL_URL_RE = re.compile(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[^\s'\"]*)?")


class ComposeError(ValueError):
    """The compose file cannot be used as written; the message says where and why."""


class ComposeLoader(yaml.SafeLoader):
    """YAML read as Compose reads it (Go's yaml.v3, YAML 1.2): only true/false are booleans.

    PyYAML follows YAML 1.1, where yes/no/on/off are booleans too: a Redis ACL rule ``on`` would
    read as True here and as the word "on" in Compose, and an environment ``X: yes`` would pass
    "true" locally and "yes" in a container.
    """


_BOOL = "tag:yaml.org,2002:bool"
ComposeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ComposeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load(path: Path) -> dict[str, Any]:
    """The compose file at ``path`` as a dict (YAML anchors and merge keys resolved; :class:`ComposeLoader`)."""
    try:
        text = path.read_text()
        loader = ComposeLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except OSError as exc:
        raise ComposeError(f"cannot read compose file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ComposeError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ComposeError(f"{path} has no 'services' mapping")
    return data


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables in ``text`` with Compose's rules.

    Supported: ``$$`` (a literal ``$``), ``$VAR``, ``${VAR}``, ``${VAR:-default}`` (default when
    unset or empty), ``${VAR-default}`` (default when unset), ``${VAR:?message}`` and
    ``${VAR?message}`` (error), ``${VAR:+replacement}`` and ``${VAR+replacement}``. Defaults
    may themselves hold variables. An unset variable without a default becomes "" (as in
    Compose, which only warns).
    """
    out, _ = _interpolate(text, 0, env, closing=False)
    return out


def _interpolate(text: str, pos: int, env: Mapping[str, str], closing: bool) -> tuple[str, int]:
    """Expand from ``pos``; with ``closing`` stop at the unmatched ``}`` and return past it."""
    out: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if closing and ch == "}":
            return "".join(out), pos + 1
        if ch != "$":
            out.append(ch)
            pos += 1
            continue
        nxt = text[pos + 1 : pos + 2]
        if nxt == "$":
            out.append("$")
            pos += 2
        elif nxt == "{":
            value, pos = _braced(text, pos + 2, env)
            out.append(value)
        elif m := _NAME_RE.match(text, pos + 1):
            out.append(env.get(m.group(0), ""))
            pos = m.end()
        else:
            raise ComposeError(f"invalid interpolation in {text!r} at position {pos}: use $$ for a literal $")
    if closing:
        raise ComposeError(f"unterminated ${{...}} in {text!r}")
    return "".join(out), pos


def _braced(text: str, pos: int, env: Mapping[str, str]) -> tuple[str, int]:
    """Expand the body of ``${...}`` that starts at ``pos`` (just after the brace)."""
    m = _NAME_RE.match(text, pos)
    if not m:
        raise ComposeError(f"invalid variable name in {text!r} at position {pos}")
    name, pos = m.group(0), m.end()
    value = env.get(name)
    if text[pos : pos + 1] == "}":
        return value or "", pos + 1
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if text.startswith(op, pos):
            break
    else:
        raise ComposeError(f"invalid modifier after ${{{name} in {text!r}")
    arg, pos = _interpolate(text, pos + len(op), env, closing=True)
    unset_or_empty = not value if op.startswith(":") else value is None
    kind = op[-1]
    if kind == "-":
        return (arg if unset_or_empty else value or ""), pos
    if kind == "?":
        if unset_or_empty:
            raise ComposeError(f"required variable {name} is missing: {arg or 'set it in the environment'}")
        return value or "", pos
    return ("" if unset_or_empty else arg), pos  # "+": replacement when set


_VARIABLE_RE = re.compile(r"\$\$|\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def variables(node: Any) -> set[str]:
    """Names of the variables that string values in ``node`` refer to (``$$`` is not one)."""
    if isinstance(node, str):
        return {m.group(1) for m in _VARIABLE_RE.finditer(node) if m.group(1)}
    if isinstance(node, Mapping):
        return set().union(*(variables(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(variables(item) for item in node))
    return set()


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """``node`` with every string value interpolated (mapping keys are left as written)."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, Mapping):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    return node


def _word(value: Any, name: str) -> str:
    """A word of a list ``command``: Compose accepts strings only (its schema refuses ``true`` or ``8``)."""
    if not isinstance(value, str):
        raise ComposeError(
            f"service {name!r}: 'command' item {value!r} must be a string (quote it; Compose refuses it too)"
        )
    return value


def _value(value: Any) -> str:
    """An environment value as Compose passes it: booleans lower-case, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def service(compose: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The definition of service ``name``."""
    services = compose.get("services") or {}
    if name not in services:
        raise ComposeError(f"no service {name!r} in the compose file (it has: {', '.join(services)})")
    return services[name] or {}


# Outside these, Compose's word splitting (go-shellwords) and a POSIX shell part ways: it honours
# quotes and backslashes its own way, and at an unquoted ; & | < > it stops and silently drops every
# word after it (a redis `--user NAME on >PASSWORD` lost 46 of its 62 words that way).
_SHELL_SPECIAL = frozenset(";&|<>()$`'\"\\")


def split_command(text: str, name: str = "?") -> list[str]:
    """A string ``command`` (already interpolated) as the argv Compose runs, or ComposeError.

    Only plain words separated by white space are accepted: for them every shell-word splitter
    agrees (whitespace splitting). A quote, backslash, ``$``, parenthesis, backtick or one of
    ``; & | < >`` is refused with a message to write the command as a YAML list, which Compose
    passes through word for word; so ``unistream run`` and Compose can never run different argv.
    """
    special = "".join(sorted({ch for ch in text if ch in _SHELL_SPECIAL}))
    if special:
        raise ComposeError(
            f"service {name!r}: 'command' is a string holding {special!r}; Compose splits strings with "
            "shell-word rules of its own (it drops every word after an unquoted ; & | < >): "
            "write the command as a YAML list, one word per item"
        )
    return [word for word in re.split(r"[ \t\r\n]+", text) if word]


def command(compose: Mapping[str, Any], name: str) -> list[str]:
    """Service ``name``'s ``command`` as an argv list (a string form: see :func:`split_command`)."""
    svc = service(compose, name)
    if "entrypoint" in svc:
        raise ComposeError(f"service {name!r} sets 'entrypoint': unistream run runs 'command' only")
    cmd = svc.get("command")
    if cmd is None:
        raise ComposeError(f"service {name!r} has no 'command'; unistream run needs one")
    argv = split_command(cmd, name) if isinstance(cmd, str) else [_word(x, name) for x in cmd]
    if not argv:
        raise ComposeError(f"service {name!r} has an empty 'command'")
    return argv


def environment(compose: Mapping[str, Any], name: str, env: Mapping[str, str]) -> dict[str, str]:
    """Service ``name``'s ``environment`` (list or mapping form).

    A variable given without a value (``- FOO`` or ``FOO:``) passes through from ``env`` and is
    left out when ``env`` lacks it, as Compose does.
    """
    svc = service(compose, name)
    if "env_file" in svc:
        raise ComposeError(
            f"service {name!r} uses 'env_file': unistream run reads only 'environment'; move the settings there"
        )
    raw = svc.get("environment") or {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    else:
        for item in raw:
            key, sep, value = str(item).partition("=")
            pairs.append((key, value if sep else None))
    out: dict[str, str] = {}
    for key, value in pairs:
        if value is None:
            if key in env:
                out[key] = env[key]
        else:
            out[key] = _value(value)
    return out


def replicas(compose: Mapping[str, Any], name: str) -> int:
    """Replica count that Compose starts by default: ``scale`` or ``deploy.replicas``, else 1."""
    svc = service(compose, name)
    value = svc.get("scale", (svc.get("deploy") or {}).get("replicas", 1))
    return int(value)


RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")


def restart_policy(compose: Mapping[str, Any], name: str) -> str:
    """Service ``name``'s ``restart`` policy: no, always, on-failure or unless-stopped.

    ``on-failure:N`` reads as on-failure (``unistream run`` does not count attempts). Unlike
    Compose, an absent ``restart`` reads as unless-stopped: ``unistream run`` has always restarted
    every process, and every service in deploy/docker-compose.yml sets its policy anyway.
    """
    value = str(service(compose, name).get("restart", "unless-stopped"))
    policy = value.split(":", 1)[0] if value.startswith("on-failure:") else value
    if policy not in RESTART_POLICIES:
        raise ComposeError(f"service {name!r}: restart {value!r} is not one of {', '.join(RESTART_POLICIES)}")
    return policy


ORPHAN_SIGNAL_KEY = "x-unistream-orphan-signal"
_ORPHAN_SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


def orphan_signal(compose: Mapping[str, Any], name: str) -> signal.Signals:
    """The signal a local replica of ``name`` gets when ``unistream run`` dies without stopping it.

    ``x-unistream-orphan-signal`` (an extension field, ignored by Compose): SIGTERM (the default)
    or SIGKILL, for a program whose SIGTERM handling needs the supervisor's end of its output
    pipe (Streamlit's shutdown logs, and stalls when that pipe is broken).
    """
    value = service(compose, name).get(ORPHAN_SIGNAL_KEY, "SIGTERM")
    try:
        return _ORPHAN_SIGNALS[str(value)]
    except KeyError:
        raise ComposeError(
            f"service {name!r}: {ORPHAN_SIGNAL_KEY} is {value!r}; use one of {', '.join(_ORPHAN_SIGNALS)}"
        ) from None


def healthcheck_url(compose: Mapping[str, Any], name: str) -> tuple[int, str] | None:
    """(port, path) of the local URL that service ``name``'s healthcheck probes, or None.

    Only healthchecks that fetch ``http://127.0.0.1:PORT/PATH`` (or localhost) are understood;
    a service without one is ready once started, as for compose's ``service_started``.
    """
    check = service(compose, name).get("healthcheck") or {}
    if check.get("disable"):
        return None
    test = check.get("test") or []
    text = test if isinstance(test, str) else " ".join(str(x) for x in test)
    m = _LOCAL_URL_RE.search(text)
    return (int(m.group(1)), m.group(2) or "/") if m else None


DEFAULT_PROFILES_KEY = "x-unistream-default-profiles"


def profiles(compose: Mapping[str, Any], name: str) -> list[str]:
    """The profiles service ``name`` belongs to ([] when it has none: always enabled)."""
    value = service(compose, name).get("profiles") or []
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise ComposeError(f"service {name!r}: 'profiles' must be a list of names, got {value!r}")
    return list(value)


def default_profiles(compose: Mapping[str, Any]) -> list[str]:
    """The profiles ``unistream run`` enables when neither --profile nor COMPOSE_PROFILES names any.

    ``x-unistream-default-profiles`` (a top-level extension field, ignored by Compose), which should
    match ``COMPOSE_PROFILES`` in the project's ``.env`` (deploy/.env.example), Compose's default.
    """
    value = compose.get(DEFAULT_PROFILES_KEY) or []
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise ComposeError(f"{DEFAULT_PROFILES_KEY} must be a list of profile names, got {value!r}")
    return list(value)


def enabled(compose: Mapping[str, Any], name: str, active: Iterable[str]) -> bool:
    """Whether Compose starts service ``name`` with the ``active`` profiles (as ``--profile``)."""
    wanted = profiles(compose, name)
    active = set(active)
    return not wanted or "*" in active or bool(active.intersection(wanted))


def depends_on(compose: Mapping[str, Any], name: str) -> list[str]:
    """Services that ``name`` depends on (list or mapping form of ``depends_on``)."""
    deps = service(compose, name).get("depends_on") or []
    return list(deps)


def start_order(compose: Mapping[str, Any], names: list[str]) -> list[str]:
    """``names`` ordered so that each comes after the services it depends on.

    Dependencies outside ``names`` are ignored; ties keep the compose file's order.
    """
    wanted = set(names)
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ComposeError(f"depends_on cycle: {' -> '.join((*path, name))}")
        state[name] = "visiting"
        for dep in depends_on(compose, name):
            if dep in wanted:
                visit(dep, (*path, name))
        state[name] = "done"
        order.append(name)

    for name in names:
        visit(name, ())
    return order
