"""The README's settings reference is the one `edge-offload config reference` prints."""

from __future__ import annotations

from pathlib import Path

from common.settings import reference_table

README = Path(__file__).resolve().parents[1] / "README.md"
START = "<details><summary>Every setting"


def test_readme_settings_table_matches_the_settings_object() -> None:
    text = README.read_text()
    block = text[text.index(START):]
    block = block[block.index("\n| variable"):block.index("</details>")].strip()
    assert block == reference_table(), "README settings table is stale: paste `edge-offload config reference`"
