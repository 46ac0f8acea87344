"""The console's login throttle (archive.throttle) on a fake clock: the window slides, success clears the name."""

from __future__ import annotations

from archive.throttle import LoginThrottle


def test_the_window_slides_and_a_success_clears_only_the_name() -> None:
    now = [0.0]
    t = LoginThrottle(2, 60.0, clock=lambda: now[0])
    t.failed("ann", "10.0.0.1")
    now[0] = 10.0
    t.failed("ann", "10.0.0.2")
    assert t.retry_after_s("ann", "10.0.0.3") == ("name", 50.0)  # until the first failure leaves the window
    assert t.retry_after_s("bob", "10.0.0.3") is None
    now[0] = 60.5
    assert t.retry_after_s("ann", "10.0.0.3") is None  # one failure left in the window
    t.failed("cy", "10.0.0.9")
    t.failed("dee", "10.0.0.9")
    assert t.retry_after_s("eve", "10.0.0.9") == ("address", 60.0)
    t.succeeded("dee")
    assert t.retry_after_s("eve", "10.0.0.9") is not None  # a success does not clear the address


def test_memory_is_bounded() -> None:
    t = LoginThrottle(3, 60.0, clock=lambda: 0.0, max_keys=100)
    for i in range(1000):
        t.failed(f"user{i}", f"10.0.{i // 256}.{i % 256}")
    assert len(t._failures) <= 100
