"""The speech engine's answer to overload, in a fixed order, from one signal.

The signal is **lag**: how long the packets a worker step takes have waited since they
arrived (``now - arrival`` of the oldest one), smoothed over steps. A leg that keeps up has a
lag of a few tens of milliseconds; a machine short of CPU lets it grow on every leg at once.

As lag grows, the engine gives up work in this order (``DegradationConfig``):

1. **partials thin out**: a partial waits while a final is queued or decoding (finals first), and
   with lag above ``thin_above_s`` the speech between two partials grows in proportion; above
   ``partials_off_above_s`` partials stop. A partial whose own audio has waited more than
   ``stale_partial_s`` is not decoded either (a step behind shows no old text, at once, before
   the smoothed lag has grown). Each partial due and not decoded is counted (``partials_thinned``);
2. **finals wait**: an admitted leg's finals are always decoded and published; under load they
   come later, within their bound as long as partials have freed the CPU;
3. **new legs are refused** (lag above ``refuse_legs_above_s``) with the reason ``overloaded``,
   dead-lettered and counted (``legs_refused_overload``); legs already open carry on.

Pure and clock-free: the engine feeds it lags, tests feed it numbers.
"""

from __future__ import annotations

import math
import threading

from common.speech_settings import DegradationConfig

__all__ = ["LoadGovernor"]


class LoadGovernor:
    """Smoothed lag -> partial cadence and leg admission. Safe to call from every worker thread."""

    def __init__(self, config: DegradationConfig | None = None) -> None:
        self.config = config or DegradationConfig()
        self._lock = threading.Lock()
        self._lag_s = 0.0
        self.partials_thinned = 0
        self.peak_lag_s = 0.0

    @property
    def lag_s(self) -> float:
        """The smoothed lag, seconds."""
        return self._lag_s

    def observe(self, lag_s: float) -> None:
        """One worker step's lag (``now - arrival`` of its oldest packet)."""
        lag = max(0.0, lag_s)
        with self._lock:
            a = self.config.smoothing
            self._lag_s = a * lag + (1.0 - a) * self._lag_s
            self.peak_lag_s = max(self.peak_lag_s, self._lag_s)

    def partial_every_s(self, base_s: float) -> float:
        """Speech between two partials at the present lag: ``base_s`` while the engine keeps up,
        growing linearly to 4x at ``partials_off_above_s``, then infinite (no partials)."""
        c = self.config
        lag = self._lag_s
        if lag <= c.thin_above_s:
            return base_s
        if lag >= c.partials_off_above_s:
            return math.inf
        share = (lag - c.thin_above_s) / (c.partials_off_above_s - c.thin_above_s)
        return base_s * (1.0 + 3.0 * share)

    def partial_is_stale(self, waited_s: float) -> bool:
        """A partial whose newest audio has waited ``waited_s`` is not worth decoding."""
        return waited_s > self.config.stale_partial_s

    def note_thinned(self) -> None:
        """A partial due at the base cadence was not decoded."""
        with self._lock:
            self.partials_thinned += 1

    def admits_new_leg(self) -> bool:
        """False while the lag is above ``refuse_legs_above_s``: a new leg would be refused."""
        return self._lag_s < self.config.refuse_legs_above_s
