"""The DC loop's CLI: ``models list|promote|rollback`` and ``label set`` against a real broker."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from cli.brokers import TansuBroker
from cloud_trainer.cli import add_trainer_commands
from cloud_trainer.registry import Registry, Signer
from tests.kafka_helpers import read_topic
from topics.dc import ModelUpdate, decode_label, decode_model_update
from topics.names import KAFKA_LABELS, KAFKA_MODEL_UPDATES
from topics.signing import verify


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge-offload")
    add_trainer_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture()
def cli_env(tmp_path: Path, own_kafka: TansuBroker, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the trainer's default data dirs are relative
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__BOOTSTRAP_SERVERS", own_kafka.bootstrap_servers)
    monkeypatch.setenv("EDGE_OFFLOAD_TRAINER__REGISTRY_DIR", str(tmp_path / "trainer-data/registry"))
    return tmp_path / "trainer-data"


async def test_promote_and_rollback_announce_signed_versions(
    cli_env: Path, own_kafka: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(cli_env / "registry", Signer.load_or_create(cli_env / "keys"))
    registry.ensure_base("m", "base", b"weights-0", "fmt")
    registry.register("m", b"weights-2", "fmt", parent="base", metrics={"agreement_gain": 0.1}, lineage={})
    public_key = registry.signer.public_key
    registry.close()

    assert await asyncio.to_thread(_run, "models", "promote", "m", "v2") == 0
    assert await asyncio.to_thread(_run, "models", "rollback", "m") == 0
    assert await asyncio.to_thread(_run, "models", "promote", "m", "v9") == 1  # unknown: refused
    updates: list[ModelUpdate] = [decode_model_update(p) for p in
                                  await read_topic(own_kafka.bootstrap_servers, KAFKA_MODEL_UPDATES, 2)]
    assert [(u.version, u.action) for u in updates] == [("v2", "promote"), ("base", "rollback")]
    assert updates[0].artifact == b"weights-2"
    assert all(verify(public_key, u.signature, u.name, u.version, u.sha256) for u in updates)

    capsys.readouterr()
    assert await asyncio.to_thread(_run, "models", "list", "--json") == 0
    listed = {v["version"]: v for v in json.loads(capsys.readouterr().out)}
    assert listed["base"]["serving"] and not listed["v2"]["serving"]
    assert listed["v2"]["status"] == "rolled_back"


async def test_label_set_publishes_a_label(cli_env: Path, own_kafka: TansuBroker) -> None:
    key = "whisper-vocab|radio-1|conv-1.leg1|7|0"
    assert await asyncio.to_thread(_run, "label", "set", key, "convoy bravo report at checkpoint kilo",
                                   "--operator", "ana") == 0
    assert await asyncio.to_thread(_run, "label", "set", "not-a-key", "x") == 2  # a usage error
    (payload,) = await read_topic(own_kafka.bootstrap_servers, KAFKA_LABELS, 1)
    label = decode_label(payload)
    assert (label.key, label.text, label.source) == (key, "convoy bravo report at checkpoint kilo", "operator:ana")
