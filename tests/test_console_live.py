"""The console's live feed hands each event only to viewers allowed to see it."""

from __future__ import annotations

import pytest

from archive.live import LiveHub, event_of
from archive.store import ALL
from common.settings import MqttSettings
from topics import names
from topics.codec import ContractError
from topics.status import EdgeStatus, encode_status
from topics.transcript import ModelRef, TranscriptSegment, encode_segment


def _segment(conv: str, case: str | None) -> dict[str, object]:
    return event_of(names.transcript(conv), encode_segment(TranscriptSegment(
        conversation=conv, leg="leg1", utterance=0, seq=0, speaker="S1", start_s=0.0, end_s=1.0, text="hi",
        confidence=0.9, words=(), model=ModelRef("w", "v"), latency_ms=1.0, case_id=case)))


def test_events_reach_only_viewers_of_their_case() -> None:
    hub = LiveHub(MqttSettings(), "test")
    ann, bob, admin = hub.join(frozenset({"case-a"})), hub.join(frozenset({"case-b"})), hub.join(ALL)
    one_call = hub.join(frozenset({"case-a"}), conversation="call-2")
    hub.publish(_segment("call-1", "case-a"))
    hub.publish(_segment("call-2", "case-a"))
    hub.publish(_segment("call-3", None))
    hub.publish(event_of(names.edge_status("edge-1"), encode_status(EdgeStatus("edge-1", True, 1))))

    def seen(viewer: object) -> list[str]:
        q = viewer.queue  # type: ignore[attr-defined]
        return [str(q.get_nowait().get("conversation") or "status") for _ in range(q.qsize())]

    assert seen(ann) == ["call-1", "call-2", "status"]
    assert seen(bob) == ["status"]
    assert seen(admin) == ["call-1", "call-2", "call-3", "status"]
    assert seen(one_call) == ["call-2", "status"]
    hub.leave(bob)
    assert bob not in hub.viewers
    with pytest.raises(ContractError):
        event_of(names.transcript("call-1"), b"\x00garbage")
