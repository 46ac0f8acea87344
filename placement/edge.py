"""Where the edge runs a request: serve it here, spill it to the DC, return it to its device, or shed it.

The rule (docs/placement.md): predict the completion time at the edge
(:meth:`placement.load.LoadEstimator.predict_s`: the running batch, the batches ahead and its own,
each ``fixed + per_item x items`` as measured) + margin. If it meets the request's deadline, serve
at the edge. Otherwise, if the DC's predicted latency (:class:`placement.dc.DcLatency`: WAN round
trip + DC queue + DC service) + margin fits, spill to the DC. Otherwise a ``fallback`` request
(its device can serve it itself) is returned to its device, any other is shed with reason
``deadline``. A request whose deadline was already behind us on arrival is shed
(``deadline_passed``). A ``fallback`` request is never spilled: its device knows its own compute
time, the DC's is an estimate over the WAN, and the device costs no DC time nor WAN bytes.
A request without a deadline, with admission off, or before the first service time is measured,
is served at the edge.

:func:`decide` is pure: the request and the view of the world are plain frozen data and ``now``
is an argument, so the rule is tested without clocks, brokers or a running service.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Request", "View", "Serve", "Spill", "Return", "Shed", "Placement", "deadline_of", "decide",
           "on_overload", "on_dc_failure"]


@dataclass(frozen=True, slots=True)
class Request:
    """What the decision needs of a request: its absolute deadline (epoch ms; None: none) and
    whether its device can serve it itself (``fallback``)."""

    deadline_ms: int | None
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class View:
    """The world as the edge sees it now. Times in ms from now; None: unknown."""

    edge_predicted_ms: float | None  # predicted completion at the edge (bias-corrected)
    dc_latency_ms: float | None = None  # predicted latency of a spilled request; None: no DC path
    margin_ms: float = 0.0
    admission: bool = True  # off: every request is served at the edge, no deadline is checked


@dataclass(frozen=True, slots=True)
class Serve:
    """Serve at the edge. ``budget_ms`` is None when no deadline was checked."""

    predicted_ms: float | None = None
    budget_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Spill:
    """Serve in the DC."""

    predicted_ms: float | None
    budget_ms: float


@dataclass(frozen=True, slots=True)
class Return:
    """Hand the request back to its device, which serves it and publishes its outcome."""

    reason: str
    predicted_ms: float | None = None
    budget_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Shed:
    """Not served: the request's outcome is ``shed`` with ``reason``."""

    reason: str
    predicted_ms: float | None = None
    budget_ms: float | None = None


Placement = Serve | Spill | Return | Shed


def deadline_of(frame_deadline_ms: int | None, captured_at_ms: int, default_deadline_ms: int) -> int | None:
    """The absolute deadline (epoch ms) of a frame: its own, else capture + the default, else none."""
    if frame_deadline_ms is not None:
        return frame_deadline_ms
    if default_deadline_ms > 0:
        return captured_at_ms + default_deadline_ms
    return None


def decide(request: Request, view: View, now_ms: float) -> Placement:
    """Place one request (see the module docstring for the rule). A placement with ``budget_ms``
    set was checked against the request's deadline (an admission decision: counted in the load)."""
    if request.deadline_ms is None or not view.admission:
        return Serve(view.edge_predicted_ms)
    predicted, margin = view.edge_predicted_ms, view.margin_ms
    budget = request.deadline_ms - now_ms
    if budget <= 0:
        return Shed("deadline_passed", predicted, budget)
    if predicted is None:
        return Serve(None, budget)
    if predicted + margin <= budget:
        return Serve(predicted, budget)
    dc = None if request.fallback else view.dc_latency_ms
    if dc is not None and dc + margin <= budget:
        return Spill(predicted, budget)
    if request.fallback:
        return Return("deadline", predicted, budget)
    return Shed("deadline", predicted, budget)


def on_overload(request: Request) -> Return | Shed:
    """The edge's queue is full: a ``fallback`` request goes back to its device, any other is shed."""
    return Return("overload") if request.fallback else Shed("overload")


def on_dc_failure(spilled: Spill) -> Shed:
    """A spilled request did not come back from the DC in time (or the DC failed it): shed. A
    ``fallback`` request is never spilled, so there is no device to return it to."""
    return Shed("dc_failed", spilled.predicted_ms, spilled.budget_ms)
