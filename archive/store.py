"""The results store: transcript segments (every revision), vision results, status history,
operator accounts and the append-only audit log, behind one small synchronous interface.

:func:`open_store` picks the back end from a URL: ``sqlite:///PATH`` (embedded, full text by
FTS5) or ``postgresql://...`` (psycopg 3, full text by a generated ``tsvector`` column with a GIN
index, ``simple`` configuration: words match as written, like FTS5's default tokenizer).

Writes are idempotent: a segment is keyed by (conversation, leg, utterance, revision), a vision
result and a frame thumbnail by (device, seq), an audio clip by (conversation, leg, utterance), a status by
(kind, name, at_ms); a redelivered message changes nothing.

Access: every read takes an :data:`Access` - ``ALL`` (an administrator) or the set of case ids an
operator is assigned to. The SQL itself filters on ``case_id``, so an operator's query can never
return a row of another case; a row without a case is visible to ``ALL`` only.

Times: ``at_ms`` is the archive's wall clock when it stored a row (the time axis of search
filters and of retention); segment ``start_s``/``end_s`` stay on the conversation clock.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from topics.clip import AudioClip
from topics.status import EdgeStatus
from topics.thumbnail import Thumbnail
from topics.transcript import TranscriptSegment
from topics.vision import VisionResult

__all__ = ["ALL", "Access", "is_all", "SegmentRow", "ResultRow", "StatusRow", "AuditRow", "Operator", "SearchQuery",
           "ClipRow", "ThumbnailRow", "Store", "SqliteStore", "PostgresStore", "StoreUnavailable", "open_store",
           "fts_words", "DATA_CLASSES"]


class _All:
    """Access to every case (an administrator)."""

    def __repr__(self) -> str:
        return "ALL"


ALL: Final = _All()
Access = _All | frozenset[str]


def is_all(access: Access) -> bool:
    """True for :data:`ALL` (every case)."""
    return isinstance(access, _All)
DATA_CLASSES = ("transcripts", "face_results", "audio", "thumbnails", "status")
_WORD = re.compile(r"\w+", re.UNICODE)


def fts_words(text: str) -> list[str]:
    """The words of a user's query (punctuation and query operators dropped)."""
    return _WORD.findall(text.lower())[:32]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class SegmentRow:
    conversation: str
    leg: str
    utterance: int
    revision: int
    seq: int
    case_id: str | None
    device: str | None
    speaker: str
    start_s: float
    end_s: float
    text: str
    confidence: float
    words: list[list[Any]]
    model: str
    model_version: str
    source: str
    at_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "segment", **asdict(self)}


@dataclass(frozen=True, slots=True)
class ResultRow:
    device: str
    seq: int
    case_id: str | None
    node: str
    captured_at_ms: int
    model: str
    model_version: str
    outcome: str
    served_by: str
    faces: list[dict[str, Any]]
    total_ms: float
    at_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "vision_result", **asdict(self)}


@dataclass(frozen=True, slots=True)
class ClipRow:
    """A segment's audio (``pcm``: 16 kHz mono int16 little-endian, see :mod:`topics.clip`)."""

    conversation: str
    leg: str
    utterance: int
    case_id: str | None
    device: str | None
    start_s: float
    end_s: float
    sample_rate: int
    pcm: bytes
    at_ms: int


@dataclass(frozen=True, slots=True)
class ThumbnailRow:
    """A small JPEG of a camera frame whose result is stored (see :mod:`topics.thumbnail`)."""

    device: str
    seq: int
    case_id: str | None
    width: int
    height: int
    frame_width: int
    frame_height: int
    jpeg: bytes
    at_ms: int


@dataclass(frozen=True, slots=True)
class StatusRow:
    kind: str  # "edge" or "device"
    name: str
    online: bool
    at_ms: int
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at_ms: int
    operator: str
    action: str
    target: str
    remote: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    password_hash: str
    role: str  # "operator" (its cases only) or "admin" (every case)
    cases: frozenset[str]

    @property
    def access(self) -> Access:
        return ALL if self.role == "admin" else self.cases


@dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str = ""
    conversation: str | None = None
    speaker: str | None = None
    device: str | None = None
    case_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    all_revisions: bool = False  # else only each segment's latest revision
    limit: int = 100


_SEG_COLS = ("conversation, leg, utterance, revision, seq, case_id, device, speaker, start_s, end_s, text, "
             "confidence, words, model, model_version, source, at_ms")
_RES_COLS = ("device, seq, case_id, node, captured_at_ms, model, model_version, outcome, served_by, faces, "
             "total_ms, at_ms")

_SCHEMA_COMMON = [
    """CREATE TABLE IF NOT EXISTS segments (
        id {id}, conversation TEXT NOT NULL, leg TEXT NOT NULL, utterance INTEGER NOT NULL,
        revision INTEGER NOT NULL, seq INTEGER NOT NULL, case_id TEXT, device TEXT, speaker TEXT NOT NULL,
        start_s DOUBLE PRECISION NOT NULL, end_s DOUBLE PRECISION NOT NULL, text TEXT NOT NULL,
        confidence DOUBLE PRECISION NOT NULL, words TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT NOT NULL,
        source TEXT NOT NULL, at_ms BIGINT NOT NULL {tsv},
        UNIQUE (conversation, leg, utterance, revision))""",
    "CREATE INDEX IF NOT EXISTS segments_conv ON segments (conversation, leg, utterance)",
    "CREATE INDEX IF NOT EXISTS segments_case ON segments (case_id, at_ms)",
    """CREATE TABLE IF NOT EXISTS results (
        id {id}, device TEXT NOT NULL, seq BIGINT NOT NULL, case_id TEXT, node TEXT NOT NULL,
        captured_at_ms BIGINT NOT NULL, model TEXT NOT NULL, model_version TEXT NOT NULL, outcome TEXT NOT NULL,
        served_by TEXT NOT NULL, faces TEXT NOT NULL, total_ms DOUBLE PRECISION NOT NULL, at_ms BIGINT NOT NULL,
        UNIQUE (device, seq))""",
    "CREATE INDEX IF NOT EXISTS results_case ON results (case_id, at_ms)",
    """CREATE TABLE IF NOT EXISTS thumbnails (
        id {id}, device TEXT NOT NULL, seq BIGINT NOT NULL, case_id TEXT, width INTEGER NOT NULL,
        height INTEGER NOT NULL, frame_width INTEGER NOT NULL, frame_height INTEGER NOT NULL, jpeg {blob} NOT NULL,
        at_ms BIGINT NOT NULL, UNIQUE (device, seq))""",
    """CREATE TABLE IF NOT EXISTS clips (
        id {id}, conversation TEXT NOT NULL, leg TEXT NOT NULL, utterance INTEGER NOT NULL, case_id TEXT,
        device TEXT, start_s DOUBLE PRECISION NOT NULL, end_s DOUBLE PRECISION NOT NULL,
        sample_rate INTEGER NOT NULL, pcm {blob} NOT NULL, at_ms BIGINT NOT NULL,
        UNIQUE (conversation, leg, utterance))""",
    """CREATE TABLE IF NOT EXISTS status (
        id {id}, kind TEXT NOT NULL, name TEXT NOT NULL, online BOOLEAN NOT NULL, at_ms BIGINT NOT NULL,
        detail TEXT NOT NULL, UNIQUE (kind, name, at_ms))""",
    """CREATE TABLE IF NOT EXISTS operators (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL, created_at_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS operator_cases (
        name TEXT NOT NULL, case_id TEXT NOT NULL, PRIMARY KEY (name, case_id))""",
    """CREATE TABLE IF NOT EXISTS audit (
        id {id}, at_ms BIGINT NOT NULL, operator TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
        remote TEXT NOT NULL, detail TEXT NOT NULL)""",
]

_SQLITE_EXTRA = [
    """CREATE VIRTUAL TABLE IF NOT EXISTS segments_fts USING fts5(text, content='segments', content_rowid='id')""",
    """CREATE TRIGGER IF NOT EXISTS segments_ai AFTER INSERT ON segments BEGIN
        INSERT INTO segments_fts(rowid, text) VALUES (new.id, new.text); END""",
    """CREATE TRIGGER IF NOT EXISTS segments_ad AFTER DELETE ON segments BEGIN
        INSERT INTO segments_fts(segments_fts, rowid, text) VALUES ('delete', old.id, old.text); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
]

_PG_EXTRA = [
    "CREATE INDEX IF NOT EXISTS segments_tsv ON segments USING GIN (tsv)",
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    """CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
]


def _cases_clause(access: Access, column: str = "case_id") -> tuple[str, list[Any]]:
    """SQL that admits only rows of ``access``'s cases."""
    if isinstance(access, _All):
        return "1=1", []
    if not access:
        return "1=0", []
    cases = sorted(access)
    return f"{column} IN ({', '.join('?' for _ in cases)})", cases


class Store:
    """The store interface; the SQL is shared, the dialect (placeholders, full text) is not."""

    url: str
    _lock: threading.Lock

    # -- dialect ---------------------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _fts_clause(self, words: list[str]) -> tuple[str, list[Any]]:
        """SQL (over ``segments s``) that admits rows containing every word."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------------
    def put_segment(self, seg: TranscriptSegment, at_ms: int | None = None) -> bool:
        """Store one segment revision; False if that revision was stored already."""
        words = json.dumps([[w.word, w.start_s, w.end_s, w.confidence] for w in seg.words])
        return self._execute(
            f"INSERT INTO segments ({_SEG_COLS}) VALUES ({', '.join('?' * 17)}) "
            "ON CONFLICT (conversation, leg, utterance, revision) DO NOTHING",
            (seg.conversation, seg.leg, seg.utterance, seg.revision, seg.seq, seg.case_id, seg.device, seg.speaker,
             seg.start_s, seg.end_s, seg.text, seg.confidence, words, seg.model.name, seg.model.version,
             seg.source, _now_ms() if at_ms is None else at_ms)) == 1

    def put_result(self, res: VisionResult, at_ms: int | None = None) -> bool:
        """Store one vision result; False if (device, seq) was stored already."""
        faces = json.dumps([{"box": list(f.box), "label": f.label, "confidence": round(f.confidence, 4)}
                            for f in res.faces])
        return self._execute(
            f"INSERT INTO results ({_RES_COLS}) VALUES ({', '.join('?' * 12)}) "
            "ON CONFLICT (device, seq) DO NOTHING",
            (res.device, res.seq, res.case_id, res.node, res.captured_at_ms, res.model.name, res.model.version,
             res.outcome, res.served_by, faces, res.timing.total_ms, _now_ms() if at_ms is None else at_ms)) == 1

    def put_clip(self, clip: AudioClip, at_ms: int | None = None) -> bool:
        """Store one segment's audio clip; False if (conversation, leg, utterance) has one already."""
        return self._execute(
            "INSERT INTO clips (conversation, leg, utterance, case_id, device, start_s, end_s, sample_rate, pcm, "
            "at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (conversation, leg, utterance) DO NOTHING",
            (clip.conversation, clip.leg, clip.utterance, clip.case_id, clip.device, clip.start_s, clip.end_s,
             clip.sample_rate, clip.pcm, _now_ms() if at_ms is None else at_ms)) == 1

    def put_thumbnail(self, t: Thumbnail, at_ms: int | None = None) -> bool:
        """Store one frame thumbnail; False if (device, seq) has one already."""
        return self._execute(
            "INSERT INTO thumbnails (device, seq, case_id, width, height, frame_width, frame_height, jpeg, at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, seq) DO NOTHING",
            (t.device, t.seq, t.case_id, t.width, t.height, t.frame_width, t.frame_height, t.jpeg,
             _now_ms() if at_ms is None else at_ms)) == 1

    def put_status(self, kind: str, name: str, online: bool, at_ms: int, detail: dict[str, Any]) -> bool:
        """Store one edge or device status (kept as history for the inventory)."""
        return self._execute(
            "INSERT INTO status (kind, name, online, at_ms, detail) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, name, at_ms) DO NOTHING",
            (kind, name, online, at_ms, json.dumps(detail))) == 1

    def put_edge_status(self, status: EdgeStatus) -> bool:
        load = status.load
        detail: dict[str, Any] = {"models": dict(status.models)}
        if load is not None:
            detail["load"] = {"queue_delay_ms": load.queue_delay_ms, "utilisation": load.utilisation,
                              "capacity_per_s": load.capacity_per_s, "queue_depth": load.queue_depth,
                              "overflow": load.overflow}
        return self.put_status("edge", status.node, status.online, status.at_ms, detail)

    def add_operator(self, name: str, password_hash: str, role: str, cases: Iterable[str]) -> None:
        """Create or replace an operator account and its case assignments."""
        if role not in ("operator", "admin"):
            raise ValueError(f"role {role!r} not operator or admin")
        with self._lock:
            self._execute_unlocked(
                "INSERT INTO operators (name, password_hash, role, created_at_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role",
                (name, password_hash, role, _now_ms()))
            self._execute_unlocked("DELETE FROM operator_cases WHERE name = ?", (name,))
            for case in sorted(set(cases)):
                self._execute_unlocked("INSERT INTO operator_cases (name, case_id) VALUES (?, ?)", (name, case))

    def _execute_unlocked(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise NotImplementedError

    def audit(self, operator: str, action: str, target: str = "", remote: str = "", detail: str = "",
              at_ms: int | None = None) -> None:
        """Append one record to the audit log (who, what, when, from where)."""
        self._execute("INSERT INTO audit (at_ms, operator, action, target, remote, detail) VALUES (?, ?, ?, ?, ?, ?)",
                      (_now_ms() if at_ms is None else at_ms, operator, action, target[:500], remote[:200],
                       detail[:2000]))

    def purge(self, older_than_ms: dict[str, int]) -> dict[str, int]:
        """Delete rows of each data class stored before its cut-off; rows deleted per class."""
        tables = {"transcripts": "segments", "face_results": "results", "audio": "clips", "thumbnails": "thumbnails",
                  "status": "status"}
        done: dict[str, int] = {}
        for data_class, cutoff in older_than_ms.items():
            if data_class not in DATA_CLASSES:
                raise ValueError(f"data class {data_class!r} not in {DATA_CLASSES}")
            done[data_class] = self._execute(f"DELETE FROM {tables[data_class]} WHERE at_ms < ?", (cutoff,))
        return done

    # -- reads -----------------------------------------------------------------------------------
    def operator(self, name: str) -> Operator | None:
        rows = self._query("SELECT name, password_hash, role FROM operators WHERE name = ?", (name,))
        if not rows:
            return None
        cases = frozenset(r[0] for r in self._query("SELECT case_id FROM operator_cases WHERE name = ?", (name,)))
        return Operator(rows[0][0], rows[0][1], rows[0][2], cases)

    def search(self, q: SearchQuery, access: Access) -> list[SegmentRow]:
        """Segments matching every word of ``q.text`` (all segments if none) and each filter, newest first."""
        where: list[str] = ["1=1"]
        params: list[Any] = []
        words = fts_words(q.text)
        if words:
            clause, p = self._fts_clause(words)
            where.append(clause)
            params += p
        for column, value in (("conversation", q.conversation), ("speaker", q.speaker), ("device", q.device),
                              ("case_id", q.case_id)):
            if value is not None:
                where.append(f"s.{column} = ?")
                params.append(value)
        if q.since_ms is not None:
            where.append("s.at_ms >= ?")
            params.append(q.since_ms)
        if q.until_ms is not None:
            where.append("s.at_ms < ?")
            params.append(q.until_ms)
        if not q.all_revisions:
            where.append("s.revision = (SELECT MAX(m.revision) FROM segments m WHERE m.conversation = s.conversation "
                         "AND m.leg = s.leg AND m.utterance = s.utterance)")
        cases, p = _cases_clause(access, "s.case_id")
        where.append(cases)
        params += p
        cols = ", ".join(f"s.{c.strip()}" for c in _SEG_COLS.split(","))
        rows = self._query(f"SELECT {cols} FROM segments s WHERE {' AND '.join(where)} "
                           f"ORDER BY s.at_ms DESC, s.id DESC LIMIT {max(1, min(int(q.limit), 10000))}", params)
        return [_segment_row(r) for r in rows]

    def conversation(self, conversation: str, access: Access) -> list[SegmentRow]:
        """Every revision of every segment of one conversation, in order (empty if not the operator's)."""
        cases, p = _cases_clause(access)
        rows = self._query(f"SELECT {_SEG_COLS} FROM segments WHERE conversation = ? AND {cases} "
                           "ORDER BY start_s, leg, utterance, revision", [conversation, *p])
        return [_segment_row(r) for r in rows]

    def clip(self, conversation: str, leg: str, utterance: int, access: Access) -> ClipRow | None:
        """One segment's audio clip, or None (none kept, or not of ``access``'s cases)."""
        cases, p = _cases_clause(access)
        rows = self._query("SELECT conversation, leg, utterance, case_id, device, start_s, end_s, sample_rate, pcm, "
                           f"at_ms FROM clips WHERE conversation = ? AND leg = ? AND utterance = ? AND {cases}",
                           [conversation, leg, utterance, *p])
        if not rows:
            return None
        values = list(rows[0])
        values[8] = bytes(values[8])
        return ClipRow(*values)

    def thumbnail(self, device: str, seq: int, access: Access) -> ThumbnailRow | None:
        """The thumbnail of one frame, or None (none kept, or not of ``access``'s cases)."""
        cases, p = _cases_clause(access)
        rows = self._query("SELECT device, seq, case_id, width, height, frame_width, frame_height, jpeg, at_ms "
                           f"FROM thumbnails WHERE device = ? AND seq = ? AND {cases}", [device, seq, *p])
        if not rows:
            return None
        values = list(rows[0])
        values[7] = bytes(values[7])
        return ThumbnailRow(*values)

    def clip_keys(self, conversation: str, access: Access) -> set[tuple[str, int]]:
        """(leg, utterance) of every clip kept of one conversation (of ``access``'s cases)."""
        cases, p = _cases_clause(access)
        return {(r[0], int(r[1])) for r in self._query(
            f"SELECT leg, utterance FROM clips WHERE conversation = ? AND {cases}", [conversation, *p])}

    def conversations(self, access: Access, limit: int = 200) -> list[dict[str, Any]]:
        """The operator's conversations, most recent first: id, case, segments, last stored."""
        cases, p = _cases_clause(access)
        rows = self._query(f"SELECT conversation, MAX(case_id), COUNT(*), MAX(at_ms) FROM segments WHERE {cases} "
                           f"GROUP BY conversation ORDER BY MAX(at_ms) DESC LIMIT {int(limit)}", p)
        return [{"conversation": r[0], "case_id": r[1], "segments": r[2], "last_ms": r[3]} for r in rows]

    def latest_results(self, access: Access) -> list[ResultRow]:
        """The newest stored result of each of the operator's cameras."""
        cases, p = _cases_clause(access)
        rows = self._query(f"SELECT {_RES_COLS} FROM results WHERE id IN (SELECT MAX(id) FROM results WHERE {cases} "
                           "GROUP BY device) ORDER BY device", p)
        return [_result_row(r) for r in rows]

    def inventory(self, access: Access = ALL) -> list[StatusRow]:
        """The newest status of each edge, and of each device ``access`` may know of (a device of
        another case is not shown to an operator: only devices with results or segments of their cases)."""
        where, params = "1=1", []
        if not isinstance(access, _All):
            cases, p = _cases_clause(access)
            where = (f"(kind = 'edge' OR name IN (SELECT device FROM results WHERE {cases}) "
                     f"OR name IN (SELECT device FROM segments WHERE {cases} AND device IS NOT NULL))")
            params = p + p
        rows = self._query("SELECT kind, name, online, at_ms, detail FROM status WHERE id IN "
                           f"(SELECT MAX(id) FROM status GROUP BY kind, name) AND {where} ORDER BY kind, name", params)
        return [StatusRow(r[0], r[1], bool(r[2]), r[3], json.loads(r[4])) for r in rows]

    def audit_log(self, since_ms: int | None = None, operator: str | None = None) -> Iterator[AuditRow]:
        where: list[str] = ["1=1"]
        params: list[Any] = []
        if since_ms is not None:
            where.append("at_ms >= ?")
            params.append(since_ms)
        if operator is not None:
            where.append("operator = ?")
            params.append(operator)
        for r in self._query(f"SELECT id, at_ms, operator, action, target, remote, detail FROM audit "
                             f"WHERE {' AND '.join(where)} ORDER BY id", params):
            yield AuditRow(*r)

    def counts(self) -> dict[str, int]:
        """Rows per table (for the demo summary and metrics)."""
        return {t: int(self._query(f"SELECT COUNT(*) FROM {t}")[0][0])
                for t in ("segments", "results", "clips", "thumbnails", "status", "audit")}


def _segment_row(r: Sequence[Any]) -> SegmentRow:
    values = list(r)
    values[12] = json.loads(values[12])
    return SegmentRow(*values)


def _result_row(r: Sequence[Any]) -> ResultRow:
    values = list(r)
    values[9] = json.loads(values[9])
    return ResultRow(*values)


class SqliteStore(Store):
    """The embedded store: one SQLite file (WAL), full text by FTS5. Thread-safe (one lock)."""

    def __init__(self, path: Path | str) -> None:
        self.url = f"sqlite:///{path}"
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            for sql in _SCHEMA_COMMON:
                self._db.execute(sql.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", tsv="", blob="BLOB"))
            for sql in _SQLITE_EXTRA:
                self._db.execute(sql)

    def _execute_unlocked(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, tuple(params)).rowcount

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._execute_unlocked(sql, params)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def _fts_clause(self, words: list[str]) -> tuple[str, list[Any]]:
        match = " ".join('"' + w.replace('"', '""') + '"' for w in words)
        return "s.id IN (SELECT rowid FROM segments_fts WHERE segments_fts MATCH ?)", [match]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresStore(Store):
    """PostgreSQL (psycopg 3, one autocommit connection): full text by a generated tsvector column."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._lock = threading.Lock()
        self._db = psycopg.connect(url, autocommit=True)
        with self._lock:
            for sql in _SCHEMA_COMMON:
                self._db.execute(sql.format(
                    id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", blob="BYTEA",
                    tsv=", tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED"))
            for sql in _PG_EXTRA:
                self._db.execute(sql)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def _execute_unlocked(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(self._sql(sql), tuple(params)).rowcount

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._execute_unlocked(sql, params)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(self._sql(sql), tuple(params)).fetchall()

    def _fts_clause(self, words: list[str]) -> tuple[str, list[Any]]:
        return "s.tsv @@ plainto_tsquery('simple', ?)", [" ".join(words)]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class StoreUnavailable(OSError):
    """The store could not be opened (no server, bad credentials, unreadable file)."""


def open_store(url: str) -> Store:
    """``sqlite:///PATH`` (or a plain path) -> :class:`SqliteStore`; ``postgresql://`` -> :class:`PostgresStore`.

    Raises :class:`StoreUnavailable` (an ``OSError``) when it cannot be opened."""
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        try:
            return PostgresStore(url)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL store: {' '.join(str(exc).split())}") from None
    if "://" in url and not url.startswith("sqlite:///"):
        raise ValueError(f"store URL {url!r}: give sqlite:///PATH or postgresql://user@host/db")
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    try:
        return SqliteStore(path)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"SQLite store {path}: {exc}") from None
