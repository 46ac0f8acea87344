"""Process-level tuning for the long-running services."""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_loaded_objects"]

log = logging.getLogger(__name__)


def freeze_loaded_objects() -> int:
    """Collect once, then move every object alive now into the permanent generation.

    Call it when a service has loaded its models and is about to serve. Python's full
    (generation 2) collection walks every tracked object; with torch, the models and the
    clients loaded that is about 250k objects and took 126 ms in the edge agent here
    (2-core machine), every thread held up meanwhile, at an unpredictable moment under
    traffic. Frozen objects are skipped by later collections. Returns how many were frozen.
    """
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d start-up objects out of the garbage collector's scans (%.0f ms)",
             frozen, (time.perf_counter() - t0) * 1e3)
    return frozen
