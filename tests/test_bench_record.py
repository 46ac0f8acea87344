"""bench/record.py writes a dated page with the figures, the machine and the load (no bench is run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.record import RESULTS_DIR, add_record_flag, finish, machine, start


def _figures(page: Path) -> dict[str, object]:
    text = page.read_text()
    return json.loads(text[text.index("```json\n") + 8:text.rindex("\n```")])


def test_record_writes_figures_machine_and_load(tmp_path: Path) -> None:
    run = start("bench.vision", ["--json", "--frames", "600"])
    page = finish(run, {"e2e_fps": 141.0, "faces_found": {"t1.jpg": 6}}, tmp_path)

    assert page == tmp_path / f"{run.started:%Y-%m-%d}-vision.md"
    text = page.read_text()
    assert text.startswith(f"# bench.vision, {run.started:%Y-%m-%d}\n")
    assert "`python -m bench.vision --json --frames 600`" in text
    assert f"{os.cpu_count()} cores" in text
    assert run.machine.cpu_model in text
    load = " / ".join(f"{x:.2f}" for x in run.load_before)
    assert f"**Load average (1 / 5 / 15 min):** {load} before" in text
    assert _figures(page) == {"e2e_fps": 141.0, "faces_found": {"t1.jpg": 6}}


def test_second_record_of_a_day_gets_its_own_page_and_the_index_lists_both(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Benchmarks\n\n## Results\n\n| date | bench | machine | file |\n"
                                        "|---|---|---|---|\n| 2026-11-26 | bench.vision | old | [old](old.md) |\n")
    first = finish(start("bench.speech", []), {"wer": 0.03}, tmp_path)
    second = finish(start("bench.speech", ["--quick"]), {"wer": 0.04}, tmp_path)

    assert second.name == first.name.replace(".md", "-2.md")
    assert _figures(first) == {"wer": 0.03} and _figures(second) == {"wer": 0.04}
    rows = [line for line in (tmp_path / "README.md").read_text().splitlines() if line.startswith("| 20")]
    assert [r.rsplit("(", 1)[1] for r in rows] == [f"{second.name}) |", f"{first.name}) |", "old.md) |"]


def test_machine_names_cpu_and_cores() -> None:
    m = machine()
    assert m.cores == os.cpu_count() and m.cpu_model
    assert m.summary().startswith(m.cpu_model)


def test_record_flag_defaults_to_docs_benchmarks(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_record_flag(parser)
    assert parser.parse_args([]).record is None
    assert parser.parse_args(["--record"]).record == RESULTS_DIR
    assert parser.parse_args(["--record", str(tmp_path)]).record == tmp_path
