"""Results-store benchmark: ``python -m bench.archive --json`` prints one JSON object.

- ``store_ingest_per_s``: transcript segments written straight into the store (one writer,
  one statement per segment, as the archive service writes them).
- ``e2e_ingest_per_s``: segments per second through Mosquitto and the archive service
  (a backlog of ``--e2e`` segments is published with QoS 1 while the service is down, then the
  service is started; rate from its start to the last one stored: persistent session, one
  store write and one PUBACK per message).
- ``search_p50_ms`` / ``search_p99_ms``: full-text search of one or two words over ``--rows``
  segments (random words from a 2,000-word vocabulary, 12 words a segment), ``ALL`` access and
  an operator with 1 of 10 cases, newest 100 hits.

Data: synthetic segments (``seeded``). ``--store``: another store URL (e.g. PostgreSQL);
default: a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from archive.service import ArchiveService
from archive.store import ALL, SearchQuery, Store, open_store
from cli.brokers import MosquittoBroker
from common.archive_settings import ArchiveSettings
from common.settings import MqttSettings, Settings
from topics import names
from topics.transcript import ModelRef, TranscriptSegment, TranscriptWord, encode_segment

VOCAB_SIZE = 2000


def _segments(n: int, seed: int, conv_prefix: str) -> list[TranscriptSegment]:
    rng = random.Random(seed)
    vocab = [f"w{i:04d}" for i in range(VOCAB_SIZE)]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(vocab) for _ in range(12))
        words = tuple(TranscriptWord(w, k * 0.3, k * 0.3 + 0.25, 0.9) for k, w in enumerate(text.split()))
        out.append(TranscriptSegment(
            conversation=f"{conv_prefix}-{i // 50}", leg="leg1", utterance=i % 50, seq=i % 50, speaker=f"S{i % 3}",
            start_s=float(i % 50), end_s=i % 50 + 3.0, text=text, confidence=0.8, words=words,
            model=ModelRef("whisper", "v1"), latency_ms=300.0, case_id=f"case-{i % 10}", device=f"tap-{i % 7}"))
    return out


def bench_store(store: Store, rows: int, queries: int, seed: int) -> dict[str, Any]:
    segments = _segments(rows, seed, "bench")
    t0 = time.perf_counter()
    for seg in segments:
        store.put_segment(seg)
    ingest = rows / (time.perf_counter() - t0)
    rng = random.Random(seed + 1)
    times: dict[str, list[float]] = {"all": [], "one_case": []}
    for i in range(queries):
        words = " ".join(f"w{rng.randrange(VOCAB_SIZE):04d}" for _ in range(1 + i % 2))
        for name, access in (("all", ALL), ("one_case", frozenset({"case-3"}))):
            t = time.perf_counter()
            store.search(SearchQuery(words), access)
            times[name].append((time.perf_counter() - t) * 1000)
    return {"rows": rows, "store_ingest_per_s": round(ingest, 1),
            "search_p50_ms": round(float(np.percentile(times["all"], 50)), 2),
            "search_p99_ms": round(float(np.percentile(times["all"], 99)), 2),
            "search_one_case_p50_ms": round(float(np.percentile(times["one_case"], 50)), 2),
            "queries": queries}


async def bench_e2e(n: int, work: Path) -> dict[str, Any]:
    url = f"sqlite:///{work}/e2e.sqlite3"
    payloads = [(names.transcript(s.conversation), encode_segment(s)) for s in _segments(n, 7, "e2e")]
    with MosquittoBroker(max_queued_messages=n + 100) as broker:
        settings = Settings(mqtt=MqttSettings(host="127.0.0.1", port=broker.port, receive_maximum=64),
                            archive=ArchiveSettings(store_url=url, client_id="bench-archive"))
        service = ArchiveService(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))  # registers the persistent session
        await asyncio.wait_for(service.ready.wait(), 15)
        stop.set()
        await task
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-pub") as client:
            for topic, payload in payloads:
                await client.publish(topic, payload, qos=1)
        service = ArchiveService(settings)
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(service.run(stop))
        while service.counts.stored.get("segment", 0) < n:
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - t0
        stop.set()
        await task
    return {"e2e_segments": n, "e2e_ingest_per_s": round(n / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--e2e", type=int, default=2000, help="segments through MQTT + the archive service (0: skip)")
    p.add_argument("--store", help="store URL (default: a temporary SQLite file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or f"sqlite:///{tmp}/bench.sqlite3"
        with open_store(url) as store:
            out = {"store": url.split("://")[0], **bench_store(store, args.rows, args.queries, args.seed)}
        if args.e2e:
            out.update(asyncio.run(bench_e2e(args.e2e, Path(tmp))))
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
