"""The README and docs/ state what the code does: the generated references are the code's own."""

from __future__ import annotations

import re
from pathlib import Path

from unistream_tools.config_table import markdown, rows

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"


def test_docs_configuration_table_matches_the_settings_classes() -> None:
    text = (DOCS / "configuration.md").read_text()
    block = re.search(r"<!-- config-table:start[^>]*-->\n(.*?)\n<!-- config-table:end -->", text, re.DOTALL)
    assert block, "docs/configuration.md lost its configuration table markers"
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


def test_docs_state_layout_table_is_the_default_layout() -> None:
    from unistream_model.layout import make_layout

    table = make_layout().table_markdown()
    text = (DOCS / "state-layout.md").read_text()
    assert table in text, "regenerate with: .venv/bin/unistream features layout (into docs/state-layout.md)"


def test_readme_stays_a_map_of_at_most_200_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move details to docs/ and link them"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_in_the_readme_and_docs_points_at_an_existing_file_and_heading() -> None:
    broken = []
    for doc in [README, *sorted(DOCS.glob("*.md"))]:
        for target in _relative_links(doc):
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.is_file():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.MULTILINE)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken
