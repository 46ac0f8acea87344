"""``edge-offload operator add | search | audit`` on a real SQLite store."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from archive.cli import verify_password
from archive.store import open_store
from cli.brokers import MosquittoBroker, free_port
from cli.main import main
from topics.transcript import ModelRef, TranscriptSegment

ROOT = Path(__file__).resolve().parents[1]


def _fill(url: str) -> None:
    with open_store(url) as store:
        for i, (case, text) in enumerate([("case-a", "the convoy leaves at noon"), ("case-b", "convoy at nine")]):
            store.put_segment(TranscriptSegment(
                conversation=f"call-{i}", leg="leg1", utterance=1, seq=1, speaker="S1", start_s=0.0, end_s=1.0,
                text=text, confidence=0.9, words=(), model=ModelRef("w", "v"), latency_ms=1.0, case_id=case))


def test_operator_search_and_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/s.sqlite3"
    _fill(url)
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    assert main(["operator", "add", "ann", "--case", "case-a", "--password-stdin", "--store", url]) == 0
    with open_store(url) as store:
        op = store.operator("ann")
    assert op is not None and op.cases == frozenset({"case-a"})
    assert op.password_hash.startswith("$argon2id$") and "correct horse" not in op.password_hash
    assert verify_password(op.password_hash, "correct horse battery")
    assert not verify_password(op.password_hash, "wrong")
    capsys.readouterr()

    assert main(["search", "convoy", "--store", url, "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {h["conversation"] for h in hits} == {"call-0", "call-1"} and all(h["kind"] == "segment" for h in hits)
    assert main(["search", "convoy", "--store", url, "--json", "--operator", "ann"]) == 0
    assert [json.loads(line)["case_id"] for line in capsys.readouterr().out.splitlines()] == ["case-a"]
    assert main(["search", "noon", "--store", url, "--case", "case-b"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["search", "x", "--store", url, "--operator", "nobody"]) == 1

    assert main(["audit", "--store", url, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["action"] for r in rows] == ["operator_add", "search", "search", "search"]
    assert rows[2]["operator"] == "ann" and json.loads(rows[2]["detail"])["hits"] == 1


def test_usage_and_runtime_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/s.sqlite3"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["operator", "add", "bob", "--case", "c1", "--password-stdin", "--store", url]) == 1
    assert "8 characters" in capsys.readouterr().err
    assert main(["operator", "add", "bob", "--password-stdin", "--store", url]) == 2
    assert "needs --case" in capsys.readouterr().err
    assert main(["search", "x", "--store", "postgresql://nobody@127.0.0.1:1/x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edge-offload: error: PostgreSQL store") and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--since", "yesterday", "x", "--store", url])
    assert exit_.value.code == 2


@pytest.mark.integration
def test_archive_and_console_processes_serve_and_stop_cleanly(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    env = dict(os.environ, EDGE_OFFLOAD_MQTT__PORT=str(mosquitto.port), EDGE_OFFLOAD_ARCHIVE__HTTP_PORT="0",
               EDGE_OFFLOAD_ARCHIVE__STORE_URL=f"sqlite:///{tmp_path}/a.sqlite3")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "archive"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True),
             subprocess.Popen([sys.executable, "-m", "cli.main", "console", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)]
    try:
        assert procs[0].stdout is not None and procs[1].stdout is not None
        assert procs[0].stdout.readline().startswith("archive: health and metrics on port ")  # SIGTERM handled
        assert procs[1].stdout.readline().strip() == f"console on http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90  # a loaded CI box
        while True:  # the console answers once its live feed is subscribed
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "console not healthy"
                time.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=30) for p in procs] == [0, 0]
