"""The console script: mosquitto_sub-style `tail`, `config show`, one-line errors, strict config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli import tail
from cli.main import parse_args
from common.settings import ConfigError, MqttSettings, load_settings
from topics import names

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_OFFLOAD_")}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], capture_output=True, text=True,
                          env=full_env, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("argv", [
    ["tail", "--json"],
    ["tail", "--host", "H", "--port", "1884"],
    ["tail", "-h", "H", "-p", "1884", "-t", "offload/v1/results/#", "-t", "offload/v1/deadletter/#", "--json"],
    ["tail", "-u", "operator", "-P", "pw", "--cafile", "/ca.crt", "-C", "3", "offload/v1/results/vision/+"],
    ["--config", "x.toml", "tail", "--no-timestamps", "-q", "0"],
])
def test_tail_forms_parse(argv: list[str]) -> None:
    args = parse_args(argv)
    assert args.command == "tail"
    targs = tail.build_parser().parse_args(args.rest)
    mqtt = tail.mqtt_from_args(targs, MqttSettings())
    if "-h" in argv or "--host" in argv:
        assert mqtt.host == "H" and mqtt.port == 1884
    if "-P" in argv:
        assert mqtt.username == "operator" and mqtt.password is not None
        assert mqtt.password.get_secret_value() == "pw" and mqtt.use_tls
        assert targs.filters == ["offload/v1/results/vision/+"] and targs.count == 3
    if "-t" in argv:
        assert targs.topic == ["offload/v1/results/#", "offload/v1/deadletter/#"]
    assert targs.json == ("--json" in argv)


def test_compose_operator_argv_goes_through_the_real_parser() -> None:
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    argv = compose["services"]["operator"]["command"]
    args = parse_args(argv)
    assert args.command == "tail"
    targs = tail.build_parser().parse_args(args.rest)
    mqtt = tail.mqtt_from_args(targs, MqttSettings())
    assert mqtt.host == "mosquitto"
    assert mqtt.port == 8883 and mqtt.use_tls  # the production listener: TLS only


def test_tail_help_and_version_exit_zero() -> None:
    help_run = _run("tail", "--help")
    assert help_run.returncode == 0, help_run.stderr
    assert "-h HOST" in help_run.stdout and "-t FILTER" in help_run.stdout
    version = _run("--version")
    assert version.returncode == 0 and version.stdout.startswith("edge-offload ")
    assert _run("tail", "--version").returncode == 0


def test_default_filters_cover_results_dead_letters_and_status() -> None:
    assert names.RESULTS_FILTER in tail.DEFAULT_FILTERS
    assert names.DEAD_LETTER_FILTER in tail.DEFAULT_FILTERS
    assert any(names.matches(f, names.edge_status("n1")) for f in tail.DEFAULT_FILTERS)


def test_tail_never_prints_raw_bytes() -> None:
    import msgpack

    payload = msgpack.packb({"type": "camera_frame", "data": b"\xff\xd8" + b"x" * 5000})
    line = tail.format_line(names.frames("cam-1"), payload)
    assert "xxxx" not in line and "'bytes': 5002" in line


def test_config_show_masks_secrets() -> None:
    run = _run("config", "show", env={"EDGE_OFFLOAD_MQTT__PASSWORD": "hunter2-secret",
                                      "EDGE_OFFLOAD_KAFKA__SASL_PASSWORD": "kafka-secret"})
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert "hunter2-secret" not in run.stdout and "kafka-secret" not in run.stdout
    assert shown["mqtt"]["password"] == "**********"


def test_unreachable_broker_is_one_line_and_nonzero(tmp_path: Path) -> None:
    from cli.brokers import free_port

    run = _run("tail", "-p", str(free_port()), "-C", "1")
    assert run.returncode == 1
    assert run.stderr.startswith("edge-offload: error: broker:")
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_empty_image_folder_and_missing_wav_are_one_line(tmp_path: Path) -> None:
    run = _run("device", "camera", "--images", str(tmp_path), "--count", "1")
    assert run.returncode == 1
    assert "no readable images" in run.stderr and "Traceback" not in run.stderr
    run = _run("device", "audio", "--leg", f"a={tmp_path / 'missing.wav'}")
    assert run.returncode == 1 and "missing.wav" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_missing_config_file_and_unknown_keys_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = _run("--config", str(tmp_path / "nope.toml"), "config", "show")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    typo = tmp_path / "edge.toml"
    typo.write_text('[mqtt]\nhots = "broker"\n[mining.models.fer-mini-xception]\nfilters = []\nrate = 1\n')
    monkeypatch.setenv("EDGE_OFFLOAD_CONFIG", str(typo))
    with pytest.raises(ConfigError, match=r"mqtt\.hots.*mining\.models\.fer-mini-xception\.rate"):
        load_settings()
    monkeypatch.delenv("EDGE_OFFLOAD_CONFIG")
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__BOOTSTRAP_SERVER", "x:9092")
    with pytest.raises(ConfigError, match="EDGE_OFFLOAD_KAFKA__BOOTSTRAP_SERVER"):
        load_settings()


def test_pki_init_writes_private_keys_0600(tmp_path: Path) -> None:
    run = _run("pki", "init", str(tmp_path / "pki"), "--host", "mosquitto", "--host", "127.0.0.1",
               "--client", "cam-1")
    assert run.returncode == 0, run.stderr
    for key in ("ca.key", "server.key", "cam-1.key"):
        assert (tmp_path / "pki" / key).stat().st_mode & 0o777 == 0o600
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mosquitto" in sans.get_values_for_type(x509.DNSName)


async def test_outbox_and_sample_store_files_are_owner_only(tmp_path: Path) -> None:
    from cloud_trainer.store import open_store
    from common.dc_settings import OutboxSettings
    from edge_agent.outbox import Outbox

    outbox = Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3"))
    store = await open_store(f"sqlite:///{tmp_path / 'samples.sqlite3'}")
    try:
        for name in ("outbox.sqlite3", "samples.sqlite3"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    finally:
        outbox.close()
        await store.close()
