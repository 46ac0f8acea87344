"""Edge model updates: only artifacts with the right sha256 and a trusted ed25519 signature
are swapped in; everything else is refused, counted and reported, and the old version serves on."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.brokers import TansuBroker
from cloud_trainer.publish import UpdatePublisher
from cloud_trainer.registry import Registry, Signer
from cloud_trainer.serve import ArtifactServer
from common.dc_settings import UpdateSettings
from common.settings import KafkaSettings
from edge_agent.model_handlers import fer_handler
from edge_agent.updates import ModelUpdater, Refusal
from inference.model_slot import Loaded, ModelSlot
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
        announce = lambda rec: registry.announcement(
            rec, "promote", inline_max_bytes=0, base_url=f"http://127.0.0.1:{port}")
        assert announce(first).url == f"http://127.0.0.1:{port}/artifacts/{NAME}/{first.version}"
        assert await updater.apply(announce(first))
        registry.artifact_path(NAME, second.version).write_bytes(b"swapped on the server")
        assert not await updater.apply(announce(second))  # the server no longer serves it: 404
        assert [r.reason for r in refusals] == ["fetch_failed"] and "404" in refusals[0].detail
        assert slot.current().version == first.version and (server.served, server.refused) == (1, 1)
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


async def test_replayed_old_announcement_is_refused_and_a_signed_rollback_accepted(
        tmp_path: Path, registry: Registry) -> None:
    state = tmp_path / "edge-state" / "updates.json"
    updater, slot, refusals = _updater(tmp_path, registry, state_file=state)
    v1 = registry.register(NAME, fer_to_bytes(_model(1)), FER_FORMAT, parent="base", metrics={}, lineage={})
    v2 = registry.register(NAME, fer_to_bytes(_model(2)), FER_FORMAT, parent=v1.version, metrics={}, lineage={})
    announce = lambda rec, action="promote": registry.announcement(
        rec, action, inline_max_bytes=1 << 30, base_url=None)
    old = announce(v1)
    assert await updater.apply(old)
    assert await updater.apply(announce(v2))
    assert slot.current().version == v2.version

    # the old promote of v1 replayed: its signatures are valid, but it is older than what serves
    assert not await updater.apply(old)
    assert refusals[-1].reason == "stale" and slot.current().version == v2.version
    # a forged "rollback" label on the old announcement breaks the announcement signature
    assert not await updater.apply(dataclasses.replace(old, action="rollback"))
    assert refusals[-1].reason == "bad_announcement_signature"
    # a fresh serial on the old promote (not signed by the DC) is refused too
    assert not await updater.apply(dataclasses.replace(old, serial=old.serial + 100))
    assert refusals[-1].reason == "bad_announcement_signature"
    # a newly signed promote of an older version is a downgrade: only a rollback may go back
    assert not await updater.apply(announce(v1))
    assert refusals[-1].reason == "downgrade"
    assert updater.stats.refused == {"stale": 1, "bad_announcement_signature": 2, "downgrade": 1}

    assert await updater.apply(announce(v1, "rollback"))  # the DC's signed rollback
    assert slot.current().version == v1.version and slot.swaps == 3
    assert state.stat().st_mode & 0o777 == 0o600

    # a restarted edge remembers the serial: the replay is still refused
    again, again_slot, again_refusals = _updater(tmp_path, registry, state_file=state)
    assert not await again.apply(old)
    assert again_refusals[-1].reason == "stale" and again_slot.current().version == "base"


async def test_replay_after_a_newer_announcement_in_one_batch_is_skipped(tmp_path: Path, registry: Registry) -> None:
    from topics.dc import encode_model_update

    updater, slot, refusals = _updater(tmp_path, registry)
    v1 = registry.register(NAME, fer_to_bytes(_model(1)), FER_FORMAT, parent="base", metrics={}, lineage={})
    v2 = registry.register(NAME, fer_to_bytes(_model(2)), FER_FORMAT, parent=v1.version, metrics={}, lineage={})
    first = registry.announcement(v1, "promote", inline_max_bytes=1 << 30, base_url=None)
    second = registry.announcement(v2, "promote", inline_max_bytes=1 << 30, base_url=None)
    await updater.apply_batch([encode_model_update(u) for u in (first, second, first)])
    assert slot.current().version == v2.version and slot.swaps == 1
    assert [r.reason for r in refusals] == ["stale"]


async def test_artifact_server_serves_only_signed_registered_artifacts_within_limit(
        tmp_path: Path, registry: Registry) -> None:
    import urllib.error
    import urllib.request

    rec = registry.register(NAME, fer_to_bytes(_model(6)), FER_FORMAT, parent="base", metrics={}, lineage={})
    rejected = registry.register(NAME, fer_to_bytes(_model(7)), FER_FORMAT, parent="base", metrics={}, lineage={})
    registry.reject(NAME, rejected.version, {}, "gate")
    stray = registry.artifact_path(NAME, "v99")
    stray.write_bytes(b"dropped into the folder, never registered or signed")
    server = ArtifactServer(registry, "127.0.0.1", 0, max_bytes=rec.size)
    small = ArtifactServer(registry, "127.0.0.1", 0, max_bytes=rec.size - 1)
    port, small_port = await server.start(), await small.start()

    def status(p: int, version: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{p}/artifacts/{NAME}/{version}", timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert await asyncio.to_thread(status, port, rec.version) == 200
        assert await asyncio.to_thread(status, port, "v99") == 404
        assert await asyncio.to_thread(status, port, rejected.version) == 404
        assert await asyncio.to_thread(status, small_port, rec.version) == 413
        assert (server.served, server.refused, small.refused) == (1, 2, 1)
    finally:
        await server.stop()
        await small.stop()
    from common.trainer_settings import TrainerSettings

    assert TrainerSettings().serve_host == "127.0.0.1"  # not every interface unless configured
