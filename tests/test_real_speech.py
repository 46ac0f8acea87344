"""The real-speech set: pinned sources, a dev part and a held-out part that share no recording."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from models.artifacts import ArtifactError, check_pin
from sim import real_speech
from sim.real_speech import CATEGORIES, SPLITS, build_set, load_clips


@pytest.fixture(scope="module")
def clips(cache_dir: Path) -> dict[str, real_speech.Clip]:
    return load_clips(cache_dir)


def test_dev_and_heldout_share_no_recording() -> None:
    used = {split: {c for parts in real_speech._PLAN[split].values() for group in parts for c in group}
            for split in SPLITS}
    assert used["dev"] and used["heldout"]
    assert not used["dev"] & used["heldout"]


@pytest.mark.parametrize("split", SPLITS)
def test_set_layout(split: str, cache_dir: Path, clips: dict[str, real_speech.Clip]) -> None:
    scenarios = build_set(split, cache_dir, clips=clips)
    assert {s.category for s in scenarios} == set(CATEGORIES)
    for sc in scenarios:
        turns = sc.conversation.turns
        assert all(t.text.strip() or t.end_s - t.start_s < 1.0 for t in turns)
        assert 0.0 <= sc.loss <= 0.02 and sc.codec == "pcmu"
        if sc.category == "call":  # one party per leg
            assert len(sc.conversation.legs) == 2
            assert all(len({t.speaker for t in turns if t.leg == leg}) == 1 for leg in sc.conversation.legs)
            assert len({t.speaker for t in turns}) == 2
        elif sc.category == "conference":
            assert len(sc.conversation.legs) == 1 and len({t.speaker for t in turns}) in (2, 3)
        else:
            assert len(sc.conversation.legs) == 1 and len({t.speaker for t in turns}) == 1
    calls = [t for sc in scenarios if sc.category == "call" for t in sc.conversation.turns]
    assert any(t.end_s - t.start_s < 1.0 for t in calls)  # backchannel-length turns
    overlaps = [(u, t) for sc in scenarios if sc.category == "call" for t in sc.conversation.turns
                for u in sc.conversation.turns if u.leg != t.leg and u.start_s < t.end_s and t.start_s < u.end_s]
    assert overlaps


def test_a_wrong_pin_is_refused(tmp_path: Path) -> None:
    src = real_speech.SOURCES["pocketsphinx"]
    archive = tmp_path / src.filename
    archive.write_bytes(b"not the pinned archive")
    with pytest.raises(ArtifactError, match="does not match the pin"):
        check_pin(src, archive)
    archive.write_bytes(b"x")
    check_pin(dataclasses.replace(src, sha256=hashlib.sha256(b"x").hexdigest()), archive)  # the right pin passes
