"""Edge model updates: only artifacts with the right sha256 and a trusted ed25519 signature
are swapped in; everything else is refused, counted and reported, and the old version serves on."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud_trainer.publish import UpdatePublisher
from cloud_trainer.registry import Registry, Signer
from cloud_trainer.serve import ArtifactServer
from edge_agent.dc_settings import UpdateSettings
from edge_agent.model_handlers import fer_handler
from edge_agent.model_slot import Loaded, ModelSlot
from edge_agent.updates import ModelUpdater, Refusal
from edge_offload.brokers import TansuBroker
from edge_offload.settings import KafkaSettings
from models.fer_artifact import FER_FORMAT, fer_to_bytes
from models.fer_edge import FerClassifier, MiniXception

NAME = "fer-mini-xception"


def _model(seed: int) -> MiniXception:
    torch.manual_seed(seed)
    return MiniXception().eval()


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry", Signer.load_or_create(tmp_path / "dc-keys"))


def _updater(tmp_path: Path, registry: Registry, kafka: str = "127.0.0.1:1",
             **kw: object) -> tuple[ModelUpdater, ModelSlot[FerClassifier], list[Refusal]]:
    slot: ModelSlot[FerClassifier] = ModelSlot(Loaded(FerClassifier(_model(0), "cpu", NAME, "base"), NAME, "base"))
    refusals: list[Refusal] = []
    settings = UpdateSettings(trusted_key_files=[tmp_path / "dc-keys" / "signing.pub"], warmup_batches=1, **kw)  # type: ignore[arg-type]
    updater = ModelUpdater(settings, KafkaSettings(bootstrap_servers=kafka), "edge-1",
                           {NAME: fer_handler(slot, "cpu", max_batch_size=4)}, on_refused=refusals.append)
    return updater, slot, refusals


def _inputs() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32)


async def test_bad_updates_are_refused_and_a_good_one_swapped_in(tmp_path: Path, registry: Registry) -> None:
    updater, slot, refusals = _updater(tmp_path, registry)
    candidate = _model(1)
    rec = registry.register(NAME, fer_to_bytes(candidate), FER_FORMAT, parent="base", metrics={}, lineage={})
    good = registry.announcement(rec, "promote", inline_max_bytes=1 << 30, base_url=None)
    rogue = Signer.load_or_create(tmp_path / "rogue-keys")
    rogue_sig = rogue.sign(b"whatever")
    assert good.artifact is not None
    tampered_bytes = bytearray(good.artifact)
    tampered_bytes[-100] ^= 0xFF
    garbage = registry.register(NAME, b"not a state dict", FER_FORMAT, parent="base", metrics={}, lineage={})
    bad = [
        (dataclasses.replace(good, signature=b""), "unsigned"),
        (dataclasses.replace(good, signature=rogue_sig, key_id=rogue.key_id), "bad_signature"),
        (dataclasses.replace(good, version="v9"), "bad_signature"),  # v1's signature replayed for v9
        (dataclasses.replace(good, artifact=bytes(tampered_bytes)), "hash_mismatch"),
        (dataclasses.replace(good, format="onnx"), "wrong_format"),
        (registry.announcement(garbage, "promote", inline_max_bytes=1 << 30, base_url=None), "load_failed"),
    ]
    for update, _ in bad:
        assert not await updater.apply(update)
    assert [r.reason for r in refusals] == [reason for _, reason in bad]
    assert updater.stats.refused == {"unsigned": 1, "bad_signature": 2, "hash_mismatch": 1,
                                     "wrong_format": 1, "load_failed": 1}
    assert slot.current().version == "base" and slot.swaps == 0

    assert await updater.apply(good)
    loaded = slot.current()
    assert (loaded.name, loaded.version, loaded.model.version) == (NAME, rec.version, rec.version)
    expected = FerClassifier(candidate, "cpu").predict(_inputs())
    np.testing.assert_allclose(loaded.model.predict(_inputs()), expected, atol=1e-5)
    assert not await updater.apply(good)  # already serving it: a no-op
    assert updater.stats.already_serving == 1 and slot.swaps == 1


async def test_untrusting_edge_refuses_everything(tmp_path: Path, registry: Registry) -> None:
    slot: ModelSlot[FerClassifier] = ModelSlot(Loaded(FerClassifier(_model(0), "cpu", NAME, "base"), NAME, "base"))
    updater = ModelUpdater(UpdateSettings(), KafkaSettings(), "edge-1", {NAME: fer_handler(slot, "cpu")})
    rec = registry.register(NAME, fer_to_bytes(_model(1)), FER_FORMAT, parent="base", metrics={}, lineage={})
    assert not await updater.apply(registry.announcement(rec, "promote", inline_max_bytes=1 << 30, base_url=None))
    assert updater.stats.refused == {"no_trusted_key": 1} and slot.current().version == "base"


async def test_artifact_by_url_is_fetched_and_checked(tmp_path: Path, registry: Registry) -> None:
    updater, slot, refusals = _updater(tmp_path, registry)
    rec = registry.register(NAME, fer_to_bytes(_model(2)), FER_FORMAT, parent="base", metrics={}, lineage={})
    update = registry.announcement(rec, "promote", inline_max_bytes=0, base_url="http://unused")
    local = dataclasses.replace(update, url=registry.artifact_path(NAME, rec.version).as_uri())
    missing = dataclasses.replace(update, url=(tmp_path / "nope").as_uri())
    assert not await updater.apply(missing)
    assert await updater.apply(local)
    assert [r.reason for r in refusals] == ["fetch_failed"] and slot.current().version == rec.version


async def test_large_artifact_is_served_over_http_and_checked(tmp_path: Path, registry: Registry) -> None:
    updater, slot, refusals = _updater(tmp_path, registry)
    server = ArtifactServer(registry, "127.0.0.1", 0)
    port = await server.start()
    try:
        first = registry.register(NAME, fer_to_bytes(_model(4)), FER_FORMAT, parent="base", metrics={}, lineage={})
        second = registry.register(NAME, fer_to_bytes(_model(5)), FER_FORMAT, parent=first.version,
                                   metrics={}, lineage={})
        announce = lambda rec: registry.announcement(  # noqa: E731
            rec, "promote", inline_max_bytes=0, base_url=f"http://127.0.0.1:{port}")
        assert announce(first).url == f"http://127.0.0.1:{port}/artifacts/{NAME}/{first.version}"
        assert await updater.apply(announce(first))
        registry.artifact_path(NAME, second.version).write_bytes(b"swapped on the server")
        assert not await updater.apply(announce(second))
        assert [r.reason for r in refusals] == ["size_mismatch"]
        assert slot.current().version == first.version and server.served == 2
    finally:
        await server.stop()


async def test_updates_arrive_over_kafka(tmp_path: Path, registry: Registry, kafka: TansuBroker) -> None:
    updater, slot, refusals = _updater(tmp_path, registry, kafka.bootstrap_servers)
    publisher = UpdatePublisher(KafkaSettings(bootstrap_servers=kafka.bootstrap_servers))
    await publisher.start()
    stop = asyncio.Event()
    task = asyncio.create_task(updater.run(stop))
    try:
        rec = registry.register(NAME, fer_to_bytes(_model(3)), FER_FORMAT, parent="base", metrics={}, lineage={})
        good = registry.announcement(rec, "promote", inline_max_bytes=1 << 30, base_url=None)
        await publisher.announce(dataclasses.replace(good, signature=bytes(64)))
        await asyncio.wait_for(updater.wait_until(lambda: len(refusals) == 1), 20)
        await publisher.announce(good)
        await asyncio.wait_for(updater.wait_until(lambda: updater.stats.applied == 1), 20)
        assert slot.current().version == rec.version
        assert refusals[0].reason == "bad_signature"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await publisher.stop()
