"""Edge admission control: serve a request here, spill it to the DC, or shed it with a reason.

The rule (README "Offloading"): predict the completion time at the edge
(``edge_agent.load.LoadEstimator.predict_s``: the running batch, the batches ahead and its own,
each ``fixed + per_item x items`` as measured) + margin. If it meets the request's deadline, serve
at the edge. Otherwise, if a DC path is given and its predicted latency (WAN round trip + DC
queue + DC service) fits, spill to the DC. Otherwise shed with reason ``deadline`` (or
``deadline_passed`` when the deadline was already behind us on arrival); the edge hands a
``fallback`` frame back to its device instead of shedding it, and gives such frames no DC path
(``edge_agent.vision.service``). A request without a deadline, or before the first service time
is measured, is always served at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from topics.vision import Frame, VisionResult

__all__ = ["DcPath", "Decision", "deadline_of", "decide"]

Placement = Literal["edge", "dc", "shed"]


class DcPath(Protocol):
    """The edge's way to the DC inference workers (see :mod:`edge_agent.dc_spill`)."""

    def latency_ms(self) -> float | None:
        """Measured end-to-end latency of a spilled frame (None: unknown, do not spill)."""

    async def submit(self, frame: Frame) -> VisionResult | None:
        """Serve ``frame`` in the DC; its result (``served_by="dc"``) or None if it did not come back in time."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes; ``reason`` is set iff it is shed. Times in ms."""

    placement: Placement
    reason: str | None = None
    predicted_ms: float | None = None  # predicted completion at the edge, from now
    budget_ms: float | None = None  # time left until the deadline, from now


def deadline_of(frame_deadline_ms: int | None, captured_at_ms: int, default_deadline_ms: int) -> int | None:
    """The absolute deadline (epoch ms) of a frame: its own, else capture + the default, else none."""
    if frame_deadline_ms is not None:
        return frame_deadline_ms
    if default_deadline_ms > 0:
        return captured_at_ms + default_deadline_ms
    return None


def decide(now_ms: float, deadline_ms: int | None, edge_predicted_ms: float | None,
           dc_latency_ms: float | None = None, margin_ms: float = 0.0) -> Decision:
    """Place one request (see the module docstring for the rule)."""
    if deadline_ms is None:
        return Decision("edge", predicted_ms=edge_predicted_ms)
    budget = deadline_ms - now_ms
    if budget <= 0:
        return Decision("shed", "deadline_passed", edge_predicted_ms, budget)
    if edge_predicted_ms is None:
        return Decision("edge", None, None, budget)
    if edge_predicted_ms + margin_ms <= budget:
        return Decision("edge", None, edge_predicted_ms, budget)
    if dc_latency_ms is not None and dc_latency_ms + margin_ms <= budget:
        return Decision("dc", None, edge_predicted_ms, budget)
    return Decision("shed", "deadline", edge_predicted_ms, budget)
