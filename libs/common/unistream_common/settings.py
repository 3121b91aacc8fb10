"""Settings from ``UNISTREAM_*`` environment variables, refused at start-up when wrong.

Each service subclasses :class:`CommonSettings` and loads it with :func:`load_settings`,
which prints what to change and exits with status 2 on bad configuration.
"""

from __future__ import annotations

import ast
import inspect
import ipaddress
import socket
import sys
import textwrap
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from unistream_common.containers import compose_replica
from unistream_common.keys import check_symbol
from unistream_common.redisio import is_cluster, parse_cluster_url, safe_url

ENV_PREFIX = "UNISTREAM_"

# Exit status of a process stopped by configuration that restarting cannot fix (argparse uses
# it too): `unistream run` does not restart a process that exits with it.
EXIT_BAD_CONFIG = 2


class ConfigError(SystemExit):
    """Bad configuration: the message says which variable to change and how."""


class CommonSettings(BaseSettings):
    """Settings shared by every service."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis server, redis://host:port/db; a Redis Cluster: redis+cluster://host:port,host:port",
    )
    symbols: Annotated[tuple[str, ...], NoDecode] = Field(
        ("ETHUSDT", "BTCUSDT"), description="Comma-separated venue symbols"
    )
    http_host: str = Field("127.0.0.1", description="Address of the service's HTTP probes")
    http_port: int = Field(0, ge=0, le=65535, description="Port of the HTTP probes (0: the service's default)")
    consumer_name: str = Field(
        "",
        description="Stable consumer name in the group (default: <service>-<replica number> in a Compose container, "
        "else <service>-<hostname>)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")
    seed: int = Field(7, description="Seed of every random generator (simulator, model initialisation)")

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [s.strip().upper() for s in value.split(",") if s.strip()]
        items = tuple(value)  # type: ignore[arg-type]
        if not items:
            raise ValueError("no symbols given; set e.g. ETHUSDT,BTCUSDT")
        for s in items:
            check_symbol(s)
        if len(set(items)) != len(items):
            raise ValueError("a symbol is listed twice")
        return items

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if is_cluster(value):
            try:
                parse_cluster_url(value)
            except ValueError as exc:
                raise ValueError(f"{safe_url(value)!r}: {exc}") from None
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"{value!r} is not a Redis URL; use redis://host:port/db, or "
                "redis+cluster://host:port,host:port for a Redis Cluster"
            )
        if parsed.scheme != "unix" and not parsed.hostname:
            raise ValueError(f"{value!r} has no host; use redis://host:port/db")
        return value

    def consumer(self, service: str) -> str:
        """Stable consumer name: the configured one, else ``<service>-<n>`` in replica ``n`` of a
        Compose service (:func:`containers.compose_replica`), else ``<service>-<hostname>``."""
        if self.consumer_name:
            return self.consumer_name
        replica = compose_replica()
        return f"{service}-{replica}" if replica is not None else f"{service}-{socket.gethostname()}"


def attribute_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a class whose fields carry a string literal right below them (the
    house style of a hyperparameter dataclass), whitespace folded to single spaces.

    Settings generated from such a class (:func:`pydantic.create_model`) take their descriptions
    from here, so the configuration table documents each field with the words the code keeps.
    """
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    docs: dict[str, str] = {}
    for node, after in zip(body.body, body.body[1:], strict=False):  # type: ignore[attr-defined]
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def is_loopback(host: str) -> bool:
    """True when a server bound to ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


S = TypeVar("S", bound=BaseSettings)


def describe_errors(cls: type[BaseSettings], exc: ValidationError) -> str:
    """One line per bad variable, naming the environment variable and what to change."""
    prefix = cls.model_config.get("env_prefix", "")
    lines = ["bad configuration:"]
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule across several variables: its message names them
            lines.append(f"  {msg}")
            continue
        var = (prefix + str(err["loc"][0])).upper()
        got = err.get("input")
        if isinstance(got, str) and "://" in got:
            got = safe_url(got)  # a URL may carry a password
        shown = f" (got {got!r})" if isinstance(got, (str, int, float)) else ""
        lines.append(f"  {var}: {msg}{shown}")
    return "\n".join(lines)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Settings from the environment; on bad configuration print what to change and exit 2."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        print(describe_errors(cls, exc), file=sys.stderr)
        raise ConfigError(EXIT_BAD_CONFIG) from None
