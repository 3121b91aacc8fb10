"""The README states what the code does: its configuration table is the settings classes'."""

from __future__ import annotations

import re
from pathlib import Path

from unistream_tools.config_table import markdown, rows

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_matches_the_settings_classes() -> None:
    text = README.read_text()
    block = re.search(r"<!-- config-table:start[^>]*-->\n(.*?)\n<!-- config-table:end -->", text, re.DOTALL)
    assert block, "README.md lost its configuration table markers"
    assert block.group(1) == markdown(), "regenerate with: .venv/bin/python -m unistream_tools.config_table"


def test_every_setting_has_a_description_and_the_required_ones_exist() -> None:
    table = {var: (who, default, text) for var, who, default, text in rows()}
    for var in ("UNISTREAM_REDIS_URL", "UNISTREAM_SYMBOLS"):
        assert table[var][0] == "all"
    assert table["UNISTREAM_SOURCE"][0] == "ingest"
    assert table["UNISTREAM_SYMBOLS"][1] == "ETHUSDT,BTCUSDT"
    assert all(text for _, _, text in table.values()), [v for v, (_, _, t) in table.items() if not t]


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text


def test_readme_state_layout_table_is_the_default_layout() -> None:
    from unistream_model.layout import make_layout

    table = make_layout().table_markdown()
    assert table in README.read_text(), "regenerate with: .venv/bin/unistream features layout"
