"""The configuration table of docs/configuration.md, generated from the settings classes so the two cannot drift.

``python -m unistream_tools.config_table`` prints it; a test compares it with docs/configuration.md.
"""

from __future__ import annotations

import importlib

from pydantic_settings import BaseSettings

from unistream_common.settings import ENV_PREFIX, CommonSettings

# (service, module, class) in the order the table lists them; "all" is the shared base.
SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("all", "unistream_common.settings", "CommonSettings"),
    ("ingest", "unistream_ingest.settings", "IngestSettings"),
    ("aggregator", "unistream_aggregator.settings", "AggregatorSettings"),
    ("features", "unistream_features.settings", "FeaturesSettings"),
    ("trainer", "unistream_trainer.settings", "TrainerSettings"),
    ("dashboard", "unistream_dashboard.settings", "DashboardSettings"),
)


def _default(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value == "":
        return "(empty)"
    return str(value)


def rows() -> list[tuple[str, str, str, str]]:
    """(variable, used by, default, meaning) for every setting; shared ones once, under "all"."""
    seen: dict[str, list[str]] = {}
    out: dict[str, tuple[str, str, str]] = {}
    for service, module, name in SETTINGS:
        cls: type[BaseSettings] = getattr(importlib.import_module(module), name)
        for field, info in cls.model_fields.items():
            if service != "all" and field in CommonSettings.model_fields:
                continue
            var = ENV_PREFIX + field.upper()
            seen.setdefault(var, []).append(service)
            out.setdefault(var, (_default(info.default), info.description or "", service))
    return [(var, ", ".join(seen[var]), default, text) for var, (default, text, _) in out.items()]


def markdown() -> str:
    """The table as GitHub markdown."""
    lines = ["| variable | used by | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{var}` | {who} | `{default}` | {text} |" for var, who, default, text in rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
