"""W3C traceparent helpers and the headers every Kafka record carries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from common import tracing
from common.dc_settings import OutboxSettings
from edge_agent.outbox import Outbox
from topics.dc import Label, encode_label


def test_child_keeps_the_trace_and_takes_a_new_span() -> None:
    root = tracing.new_traceparent()
    assert tracing.valid(root) and root.startswith("00-") and root.endswith("-01")
    hop = tracing.child(root)
    assert tracing.trace_id(hop) == tracing.trace_id(root) and hop != root
    assert tracing.valid(tracing.child("garbage")) and tracing.trace_id(tracing.child(None)) is not None
    for bad in ("", "00-" + "0" * 32 + "-0123456789abcdef-01", "01-zz", "00-abc-def-01"):
        assert not tracing.valid(bad)


def test_derived_is_stable_in_a_process_and_differs_per_identity() -> None:
    a = tracing.derived("segment", "call-1", "a", 3)
    assert a == tracing.derived("segment", "call-1", "a", 3) and tracing.valid(a)
    assert tracing.trace_id(a) != tracing.trace_id(tracing.derived("segment", "call-1", "a", 4))


def test_kafka_headers_name_the_schema_and_carry_the_trace() -> None:
    payload = encode_label(Label("m|d|c.l|1|0", "text", "operator:x", 1))
    parent = tracing.new_traceparent()
    headers = dict(tracing.kafka_headers(payload, parent))
    assert headers["schema"] == b"label" and headers["schema-version"].isdigit()
    assert headers["traceparent"] == parent.encode()
    assert tracing.from_headers(list(headers.items())) == parent
    with tracing.use(parent):  # no explicit one: the current trace
        assert dict(tracing.kafka_headers(payload))["traceparent"] == parent.encode()
    fresh = dict(tracing.kafka_headers(b"not msgpack"))  # no schema to name, still a trace
    assert "schema" not in fresh and tracing.valid(fresh["traceparent"].decode())
    assert tracing.from_headers([("traceparent", b"\xff")]) is None and tracing.from_headers(None) is None


def test_mqtt_user_property_round_trip() -> None:
    parent = tracing.new_traceparent()
    props = tracing.mqtt_properties(parent)
    assert props is not None and tracing.from_mqtt(props) == parent
    assert tracing.mqtt_properties("nope") is None and tracing.from_mqtt(None) is None


def test_outbox_keeps_the_traceparent_and_migrates_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    db = sqlite3.connect(path)  # an outbox written before trace headers
    db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, "
               "topic TEXT NOT NULL, kafka_key BLOB, payload BLOB NOT NULL, created_ms INTEGER NOT NULL)")
    db.execute("INSERT INTO outbox (key, topic, kafka_key, payload, created_ms) VALUES ('old', 't', NULL, x'01', 1)")
    db.commit()
    db.close()
    box = Outbox(OutboxSettings(path=path))
    try:
        parent = tracing.new_traceparent()
        assert box.put("new", "t", b"\x02", b"k", parent)
        rows = box.peek(10)
    finally:
        box.close()
    assert [(r.key, r.traceparent) for r in rows] == [("old", None), ("new", parent)]
