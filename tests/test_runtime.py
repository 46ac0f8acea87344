"""common.runtime: start-up objects leave the garbage collector's scans."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from common.runtime import freeze_loaded_objects


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_garbage_is_collected_and_live_objects_are_frozen(unfrozen: None) -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle only the collector can free
    dead = weakref.ref(a)
    del a, b
    kept = [_Node() for _ in range(1000)]
    before = gc.get_freeze_count()
    frozen = freeze_loaded_objects()
    assert dead() is None  # collected before the freeze, not frozen with the live objects
    assert frozen == gc.get_freeze_count() >= before + len(kept)
    gc.collect()
    assert all(isinstance(k, _Node) for k in kept)
