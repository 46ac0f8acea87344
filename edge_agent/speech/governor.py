"""The speech engine's answer to overload, in a fixed order, from two signals.

The signals are the process's **CPU use** (share of the node's CPUs, measured over the last
second or so) and **lag**: how long the packets a worker step takes have waited since they
arrived (``now - arrival`` of the oldest one), smoothed over steps. A leg that keeps up has a
lag of a few tens of milliseconds; a machine short of CPU lets it grow on every leg at once.

As load grows, the engine gives up work in this order (``DegradationConfig``):

1. **partials thin out**: a partial waits while a final is queued or decoding (finals first);
   with CPU use above ``cpu_target`` the speech between two partials grows with use / target
   (up to 4x), before any lag builds up; with lag above ``thin_above_s`` it grows in proportion
   to the lag; above ``partials_off_above_s`` partials stop. A partial whose own audio has
   waited more than ``stale_partial_s`` is not decoded either (a step behind shows no old text,
   at once, before the smoothed lag has grown). Each partial due and not decoded is counted
   (``partials_thinned``);
2. **finals wait**: an admitted leg's finals are always decoded and published; under load they
   come later, within their bound as long as partials have freed the CPU;
3. **new legs are refused** (lag above ``refuse_legs_above_s``) with the reason ``overloaded``,
   dead-lettered and counted (``legs_refused_overload``); legs already open carry on.

Pure and clock-free: the engine feeds it lags and CPU readings, tests feed it numbers.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

from common.speech_settings import DegradationConfig

__all__ = ["LoadGovernor", "MAX_THINNING", "available_cpus"]

MAX_THINNING = 4.0  # the longest partial cadence, as a multiple of the configured one, before partials stop
_CPU_WINDOW_S = 1.0  # CPU use is measured over intervals at least this long


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float:
    """CPUs this process may use: the CPUs it may run on, capped by a cgroup v2 CPU limit (a
    container's ``resources.limits.cpu``) when one is set."""
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    try:
        return max(0.01, min(cpus, int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return cpus


class LoadGovernor:
    """CPU use and smoothed lag -> partial cadence and leg admission. Safe to call from every
    worker thread."""

    def __init__(self, config: DegradationConfig | None = None) -> None:
        self.config = config or DegradationConfig()
        self.cpus = self.config.cpus or available_cpus()
        self._lock = threading.Lock()
        self._lag_s = 0.0
        self._cpu_use = 0.0
        self._cpu_mark: tuple[float, float] | None = None  # (process CPU s, wall s) at the interval's start
        self.partials_thinned = 0
        self.peak_lag_s = 0.0

    @property
    def lag_s(self) -> float:
        """The smoothed lag, seconds."""
        return self._lag_s

    @property
    def cpu_use(self) -> float:
        """The process's share of the node's CPUs over the last measured interval (0..1)."""
        return self._cpu_use

    def observe(self, lag_s: float) -> None:
        """One worker step's lag (``now - arrival`` of its oldest packet)."""
        lag = max(0.0, lag_s)
        with self._lock:
            a = self.config.smoothing
            self._lag_s = a * lag + (1.0 - a) * self._lag_s
            self.peak_lag_s = max(self.peak_lag_s, self._lag_s)

    def observe_cpu(self, process_cpu_s: float, wall_s: float) -> None:
        """A reading of the process's CPU time (all threads) and a monotonic wall clock; the use
        is updated once at least a second has passed since the previous update."""
        with self._lock:
            if self._cpu_mark is None:
                self._cpu_mark = (process_cpu_s, wall_s)
                return
            cpu0, wall0 = self._cpu_mark
            if wall_s - wall0 < _CPU_WINDOW_S:
                return
            self._cpu_use = min(1.0, max(0.0, (process_cpu_s - cpu0) / (wall_s - wall0) / self.cpus))
            self._cpu_mark = (process_cpu_s, wall_s)

    def partial_every_s(self, base_s: float) -> float:
        """Speech between two partials now: ``base_s`` while CPU use is under ``cpu_target`` and
        the engine keeps up; longer with CPU use over the target or with lag (the larger of the
        two stretches, at most 4x); infinite (no partials) above ``partials_off_above_s`` of lag."""
        c = self.config
        lag = self._lag_s
        if lag >= c.partials_off_above_s:
            return math.inf
        by_cpu = min(MAX_THINNING, max(1.0, self._cpu_use / c.cpu_target))
        by_lag = 1.0
        if lag > c.thin_above_s:
            share = (lag - c.thin_above_s) / (c.partials_off_above_s - c.thin_above_s)
            by_lag = 1.0 + (MAX_THINNING - 1.0) * share
        return base_s * max(by_cpu, by_lag)

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
