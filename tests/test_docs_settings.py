"""docs/settings.md is the page `edge-offload config reference` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from common.settings_reference import render_page

PAGE = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_docs_settings_page_is_the_generated_reference() -> None:
    assert PAGE.read_text() == render_page(), (
        "docs/settings.md is stale: run `edge-offload config reference > docs/settings.md`")


def test_config_reference_prints_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "reference"]) == 0
    out = capsys.readouterr().out
    assert out == render_page()
    assert "| `EDGE_OFFLOAD_MQTT__PORT` | int | `1883` |" in out
