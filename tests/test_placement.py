"""The placement decision: every outcome of ``decide`` from plain data (no clock, broker or service)."""

from __future__ import annotations

import pytest

from placement import Request, Return, Serve, Shed, Spill, View, decide
from placement.edge import on_dc_failure, on_overload

NOW = 1_000_000.0  # epoch ms; every deadline below is relative to it


def test_serve_when_the_edge_meets_the_deadline() -> None:
    assert decide(Request(int(NOW) + 100), View(60.0, 10.0, margin_ms=20.0), NOW) == Serve(60.0, 100.0)


def test_serve_without_a_deadline_with_admission_off_or_before_any_measurement() -> None:
    assert decide(Request(None), View(9e9), NOW) == Serve(9e9)
    off = View(9e9, 1.0, admission=False)
    assert decide(Request(int(NOW) - 50), off, NOW) == Serve(9e9), "admission off: no deadline is checked"
    assert decide(Request(int(NOW) + 100), View(None, 1.0), NOW) == Serve(None, 100.0)


def test_spill_when_only_the_dc_meets_the_deadline() -> None:
    assert decide(Request(int(NOW) + 100), View(150.0, 70.0, margin_ms=20.0), NOW) == Spill(150.0, 100.0)
    # the margin applies to the DC as well
    assert decide(Request(int(NOW) + 100), View(150.0, 85.0, margin_ms=20.0), NOW) == Shed("deadline", 150.0, 100.0)


def test_a_fallback_request_is_returned_never_spilled() -> None:
    late = Request(int(NOW) + 100, fallback=True)
    assert decide(late, View(150.0, 10.0), NOW) == Return("deadline", 150.0, 100.0)
    assert decide(late, View(50.0, 10.0), NOW) == Serve(50.0, 100.0)


def test_shed_when_nothing_meets_the_deadline_or_it_has_passed() -> None:
    assert decide(Request(int(NOW) + 100), View(150.0, None), NOW) == Shed("deadline", 150.0, 100.0)
    assert decide(Request(int(NOW) + 100), View(150.0, 300.0), NOW) == Shed("deadline", 150.0, 100.0)
    passed = decide(Request(int(NOW) - 1, fallback=True), View(1.0, 1.0), NOW)
    assert passed == Shed("deadline_passed", 1.0, -1.0), "a passed deadline is shed, even for a fallback request"


@pytest.mark.parametrize(("fallback", "want"), [(True, Return("overload")), (False, Shed("overload"))])
def test_overload_returns_a_fallback_request_and_sheds_any_other(fallback: bool, want: Return | Shed) -> None:
    assert on_overload(Request(None, fallback)) == want


def test_a_spill_that_failed_is_shed() -> None:
    assert on_dc_failure(Spill(150.0, 100.0)) == Shed("dc_failed", 150.0, 100.0)


def test_the_decision_is_plain_data() -> None:
    """Frozen: a decision or a view cannot be changed on its way through the service."""
    view = View(1.0)
    with pytest.raises(AttributeError):
        view.edge_predicted_ms = 2.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Serve().predicted_ms = 1.0  # type: ignore[misc]
