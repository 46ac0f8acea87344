"""The results store on SQLite (FTS5) and on a real PostgreSQL server (tsvector): idempotent
writes, full-text search with filters, case-scoped reads, the append-only audit log, retention."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from archive.store import ALL, SearchQuery, Store, open_store
from topics.clip import AudioClip
from topics.status import EdgeLoad, EdgeStatus
from topics.thumbnail import Thumbnail
from topics.transcript import ModelRef, TranscriptSegment, TranscriptWord
from topics.vision import Face, Timing, VisionResult

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _seg(utt: int, text: str, *, conv: str = "call-1", case: str | None = "case-a", rev: int = 0,
         speaker: str = "S1", device: str = "tap-1") -> TranscriptSegment:
    words = tuple(TranscriptWord(w, float(i), i + 0.5, 0.9) for i, w in enumerate(text.split()))
    return TranscriptSegment(conversation=conv, leg="leg1", utterance=utt, seq=utt, speaker=speaker,
                             start_s=float(utt), end_s=utt + 1.0, text=text, confidence=0.8, words=words,
                             model=ModelRef("whisper", "v1"), latency_ms=5.0, revision=rev,
                             source="edge" if rev == 0 else "dc", case_id=case, device=device)


def _result(device: str, seq: int, case: str | None) -> VisionResult:
    return VisionResult(device=device, seq=seq, captured_at_ms=1000 + seq, node="edge-1", model=ModelRef("fer", "v1"),
                        timing=Timing(1.0, 1, 1.0, 1.0, 3.0),
                        faces=(Face((1, 2, 30, 40), "happy", (0.0, 0.0, 0.0, 0.9, 0.1, 0.0, 0.0)),), case_id=case)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/archive.sqlite3")
        yield s
        s.close()
        return
    psycopg = pytest.importorskip("psycopg")
    schema = f"archive_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True)
    except psycopg.OperationalError as exc:  # no server: this test cannot say anything
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    admin.execute(f"CREATE SCHEMA {schema}")
    s = open_store(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        yield s
    finally:
        s.close()
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_writes_are_idempotent(store: Store) -> None:
    assert store.put_segment(_seg(1, "convoy leaves at noon"))
    assert not store.put_segment(_seg(1, "convoy leaves at noon"))  # redelivered
    assert store.put_segment(_seg(1, "convoy leaves at nine", rev=1))  # a revision is a new row
    assert store.put_result(_result("cam-1", 7, "case-a"))
    assert not store.put_result(_result("cam-1", 7, "case-a"))
    assert store.counts()["segments"] == 2 and store.counts()["results"] == 1


def test_search_finds_words_with_filters_and_the_latest_revision(store: Store) -> None:
    store.put_segment(_seg(1, "the convoy leaves at noon", speaker="S1"), at_ms=1000)
    store.put_segment(_seg(2, "roger that, bravo", speaker="S2"), at_ms=2000)
    store.put_segment(_seg(1, "the convoy leaves at nine", rev=1), at_ms=3000)
    store.put_segment(_seg(1, "convoy elsewhere", conv="call-2", case="case-b", device="tap-2"), at_ms=4000)
    hits = store.search(SearchQuery("convoy"), ALL)
    assert {(h.conversation, h.revision, h.text) for h in hits} == {
        ("call-1", 1, "the convoy leaves at nine"), ("call-2", 0, "convoy elsewhere")}
    assert [h.revision for h in store.search(SearchQuery("convoy", all_revisions=True, conversation="call-1"), ALL)] \
        == [1, 0]
    assert store.search(SearchQuery("noon"), ALL) == []  # revision 0 is superseded
    assert [h.text for h in store.search(SearchQuery("ROGER bravo!"), ALL)] == ["roger that, bravo"]
    assert [h.utterance for h in store.search(SearchQuery(speaker="S2"), ALL)] == [2]
    assert [h.conversation for h in store.search(SearchQuery("convoy", device="tap-2"), ALL)] == ["call-2"]
    assert [h.conversation for h in store.search(SearchQuery("convoy", case_id="case-b"), ALL)] == ["call-2"]
    assert [h.at_ms for h in store.search(SearchQuery(since_ms=2000, until_ms=3500), ALL)] == [3000, 2000]
    assert store.search(SearchQuery('" OR * NEAR('), ALL) == []  # query syntax is not passed through


def test_reads_are_scoped_to_the_operators_cases(store: Store) -> None:
    store.put_segment(_seg(1, "convoy at noon", case="case-a"))
    store.put_segment(_seg(1, "convoy at nine", conv="call-2", case="case-b"))
    store.put_segment(_seg(1, "convoy unassigned", conv="call-3", case=None))
    store.put_result(_result("cam-a", 1, "case-a"))
    store.put_result(_result("cam-b", 1, "case-b"))
    a = frozenset({"case-a"})
    assert [h.conversation for h in store.search(SearchQuery("convoy"), a)] == ["call-1"]
    assert store.search(SearchQuery("convoy", conversation="call-2"), a) == []
    assert store.search(SearchQuery("convoy"), frozenset()) == []
    assert store.conversation("call-2", a) == []
    assert [c["conversation"] for c in store.conversations(a)] == ["call-1"]
    assert [r.device for r in store.latest_results(a)] == ["cam-a"]
    assert {h.conversation for h in store.search(SearchQuery("convoy"), ALL)} == {"call-1", "call-2", "call-3"}


def test_operators_audit_status_and_retention(store: Store) -> None:
    store.add_operator("ann", "hash1", "operator", ["case-a", "case-b"])
    store.add_operator("ann", "hash2", "operator", ["case-b"])
    op = store.operator("ann")
    assert op is not None and op.password_hash == "hash2" and op.access == frozenset({"case-b"})
    assert store.operator("nobody") is None
    store.audit("ann", "login", remote="127.0.0.1")
    store.audit("ann", "search", target="convoy")
    assert [(r.operator, r.action) for r in store.audit_log()] == [("ann", "login"), ("ann", "search")]
    with pytest.raises(Exception, match="append-only"):
        store._execute("DELETE FROM audit")
    with pytest.raises(Exception, match="append-only"):
        store._execute("UPDATE audit SET operator = 'eve'")
    store.put_edge_status(EdgeStatus("edge-1", True, 1000, {"fer": "v1"}, EdgeLoad(1.0, {"fer": 2.0}, 0.5, 100.0)))
    store.put_edge_status(EdgeStatus("edge-1", False, 2000))
    store.put_status("device", "cam-1", True, 1500, {})
    assert [(s.kind, s.name, s.online) for s in store.inventory()] == [("device", "cam-1", True),
                                                                       ("edge", "edge-1", False)]
    assert [s.name for s in store.inventory(frozenset({"case-b"}))] == ["edge-1"]  # cam-1 has no case-b data
    store.put_result(_result("cam-1", 9, "case-b"))
    assert [s.name for s in store.inventory(frozenset({"case-b"}))] == ["cam-1", "edge-1"]
    store.put_segment(_seg(1, "old words"), at_ms=1000)
    store.put_segment(_seg(2, "new words"), at_ms=5000)
    store.put_result(_result("cam-1", 1, "case-a"), at_ms=1000)
    store.put_clip(AudioClip("call-1", "leg1", 1, 1.0, 2.0, b"\x01\x00" * 4, case_id="case-a"), at_ms=1000)
    store.put_clip(AudioClip("call-1", "leg1", 2, 2.0, 3.0, b"\x01\x00" * 4, case_id="case-a"), at_ms=5000)
    store.put_thumbnail(Thumbnail("cam-1", 1, 4, 4, 8, 8, b"\xff\xd8\xff", case_id="case-a"), at_ms=1000)
    assert store.purge({"transcripts": 2000, "face_results": 2000, "audio": 2000, "thumbnails": 2000}) == {
        "transcripts": 1, "face_results": 1, "audio": 1, "thumbnails": 1}
    assert store.clip_keys("call-1", ALL) == {("leg1", 2)}
    assert store.counts()["results"] == 1  # the newer case-b result stays
    assert [h.text for h in store.search(SearchQuery("words"), ALL)] == ["new words"]  # FTS index follows
    assert len(list(store.audit_log())) == 2


def test_audio_clips_are_idempotent_and_case_scoped(store: Store) -> None:
    pcm = bytes(range(256)) * 4
    clip = AudioClip("call-1", "caller", 0, 1.0, 1.032, pcm, case_id="case-a", device="tap-1")
    assert store.put_clip(clip)
    assert not store.put_clip(clip)  # redelivered
    store.put_clip(AudioClip("call-1", "callee", 0, 1.0, 1.001, b"\x00\x00" * 16))  # no case: admins only
    row = store.clip("call-1", "caller", 0, frozenset({"case-a"}))
    assert row is not None and row.pcm == pcm and row.case_id == "case-a" and row.sample_rate == 16000
    assert store.clip("call-1", "caller", 0, frozenset({"case-b"})) is None
    assert store.clip("call-1", "caller", 1, ALL) is None
    assert store.clip_keys("call-1", frozenset({"case-a"})) == {("caller", 0)}
    assert store.clip_keys("call-1", ALL) == {("caller", 0), ("callee", 0)}
    assert store.counts()["clips"] == 2


def test_thumbnails_are_idempotent_and_case_scoped(store: Store) -> None:
    t = Thumbnail("cam-1", 3, 160, 90, 1280, 720, b"\xff\xd8\xff" + bytes(range(256)), case_id="case-a")
    assert store.put_thumbnail(t)
    assert not store.put_thumbnail(t)  # redelivered
    row = store.thumbnail("cam-1", 3, frozenset({"case-a"}))
    assert row is not None and row.jpeg == t.jpeg and (row.frame_width, row.frame_height) == (1280, 720)
    assert store.thumbnail("cam-1", 3, frozenset({"case-b"})) is None
    assert store.thumbnail("cam-1", 4, ALL) is None
    assert store.counts()["thumbnails"] == 1
