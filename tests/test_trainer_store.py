"""The DC sample store on SQLite and on a real PostgreSQL server: idempotent on the
hard-example key, stable train/holdout split, labels that may arrive before their sample."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_trainer.store import SampleStore, open_store, split_of
from topics.dc import HardExample, Label

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _example(seq: int, item: int = 0, model: str = "fer-mini-xception", device: str = "cam1") -> HardExample:
    return HardExample(device=device, model=model, model_version="v0", kind="face", seq=seq,
                       item=item, encoding="png", data=b"png-%d-%d" % (seq, item), result="happy",
                       confidences=(0.4, 0.6), reasons=("threshold",), node="edge-1",
                       captured_at_ms=1000 + seq)


async def _pg_store() -> tuple[SampleStore, str]:
    asyncpg = pytest.importorskip("asyncpg")
    schema = f"trainer_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_URL)
    except OSError as exc:  # no server: this test cannot say anything
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    return await open_store(f"{PG_URL}?search_path={schema}", holdout_percent=20), schema


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SampleStore]:
    if request.param == "sqlite":
        s = await open_store(f"sqlite:///{tmp_path}/samples.sqlite3", holdout_percent=20)
        yield s
        await s.close()
        return
    s, schema = await _pg_store()
    yield s
    await s.close()
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    await conn.close()


async def test_idempotent_on_key(store: SampleStore) -> None:
    assert await store.add(_example(1))
    assert not await store.add(_example(1))  # redelivered: kept once
    assert await store.add_many([_example(1), _example(2), _example(2, item=1), _example(2)]) == 2
    assert await store.keys() == [_example(1).key, _example(2).key, _example(2, item=1).key]
    got = await store.get(_example(1).key)
    assert got is not None and await store.get("nope") is None
    assert got.data == b"png-1-0" and got.confidences == (0.4, 0.6) and got.label is None
    assert got.edge_version == "v0" and got.split == split_of(got.key, 20)


async def test_concurrent_overlapping_writers_store_each_key_once(store: SampleStore) -> None:
    batches = [[_example(i) for i in range(start, start + 30)] for start in (0, 10, 20, 0)]
    added = await asyncio.gather(*(store.add_many(b) for b in batches))
    assert sum(added) == 50
    keys = await store.keys()
    assert len(keys) == len(set(keys)) == 50


async def test_labels_apply_now_or_when_the_sample_arrives(store: SampleStore) -> None:
    await store.add(_example(1))
    early = Label(key=_example(2).key, text="sad", source="op", labelled_at_ms=5)
    assert await store.set_labels([Label(_example(1).key, "angry", "teacher", 1), early]) == 1
    assert await store.count("fer-mini-xception", labelled=True) == 1
    await store.add(_example(2))  # the waiting label is applied
    labelled = {s.key: (s.label, s.label_source) for s in await store.samples("fer-mini-xception", labelled=True)}
    assert labelled == {_example(1).key: ("angry", "teacher"), _example(2).key: ("sad", "op")}
    await store.set_labels([Label(_example(1).key, "fear", "op", 9)])  # the last label wins
    assert (await store.samples("fer-mini-xception", labelled=True))[0].label == "fear"


async def test_an_operator_label_is_never_replaced_by_the_dc(store: SampleStore) -> None:
    await store.add(_example(1))
    key, late = _example(1).key, _example(3).key
    await store.set_labels([Label(key, "dc words", "dc:whisper-base", 1)])
    await store.set_labels([Label(key, "operator words", "operator:ana", 2)])  # operator over the DC
    assert await store.set_labels([Label(key, "dc again", "dc:whisper-base", 3)]) == 1
    await store.set_labels([Label(late, "operator early", "operator:ana", 4),
                            Label(late, "dc early", "dc:whisper-base", 5)])  # both before the sample
    await store.add(_example(3))
    got = {s.key: (s.label, s.label_source) for s in await store.samples("fer-mini-xception", labelled=True)}
    assert got == {key: ("operator words", "operator:ana"), late: ("operator early", "operator:ana")}


async def test_split_is_stable_and_near_the_share(store: SampleStore) -> None:
    await store.add_many([_example(i) for i in range(400)])
    holdout = await store.count("fer-mini-xception", split="holdout")
    assert 50 <= holdout <= 110  # 20 % of 400, give or take
    assert holdout + await store.count("fer-mini-xception", split="train") == 400
    assert all(s.split == split_of(s.key, 20) for s in await store.samples("fer-mini-xception", split="holdout"))
    assert await store.count("other-model") == 0


async def test_dead_letters_are_kept(store: SampleStore) -> None:
    await store.dead_letter("offload.hard-examples/0@7", "invalid_msgpack", "empty", b"\x00" * 70_000)
    assert await store.dead_letters() == [("offload.hard-examples/0@7", "invalid_msgpack")]
