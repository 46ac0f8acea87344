"""Where a camera device sends its work: the full frame, its face crops, or nothing (FER on the device).

The rule (``auto``): estimate, for each placement, the latency and the device energy of one
frame from the device profile, the link and the edge's published load (``topics.status``):

- ``edge``: send the frame; latency = upload + RTT + edge queue delay + edge service;
  energy = radio energy of the frame bytes.
- ``crops``: detect faces on the device, send only the crops; latency = device detection +
  upload of the crops + RTT + edge queue delay + edge service; energy = detection + radio.
- ``local``: detection and FER on the device; latency = device compute; energy = compute.

Keep the placements within the energy budget that meet the deadline and take the one with the
least device energy; if none meets the deadline, the fastest within the budget; if none is
within the budget, ``edge``. An unknown or stale edge status counts as an idle edge; an edge
whose ``overflow`` (requests it recently shed or spilled) exceeds ``max_edge_overflow`` counts as
one that will not answer in time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.device_settings import DeviceProfileSettings
from topics.status import EdgeLoad

__all__ = ["PLACEMENTS", "POLICIES", "EdgeShare", "Estimate", "DevicePlacement", "choose", "estimates"]

DevicePlacement = Literal["edge", "crops", "local"]
PLACEMENTS: tuple[DevicePlacement, ...] = ("edge", "crops", "local")
POLICIES: tuple[str, ...] = ("edge", "crops", "local", "auto")


@dataclass(frozen=True, slots=True)
class Estimate:
    placement: DevicePlacement
    latency_ms: float
    energy_j: float
    bytes_sent: int


def _edge_figures(load: EdgeLoad | None, profile: DeviceProfileSettings) -> tuple[float, float]:
    """(queue delay, service time per item) at the edge in ms; an unknown edge counts as idle."""
    if load is None or not load.service_ms:
        return 0.0, profile.detect_ms / profile.compute_slowdown
    return load.queue_delay_ms, max(load.service_ms.values())


def estimates(
    frame_bytes: int,
    load: EdgeLoad | None,
    profile: DeviceProfileSettings,
    faces: int = 1,
    respect_overflow: bool = True,
    device_queue_ms: float = 0.0,
) -> list[Estimate]:
    """Latency and device energy of each placement for one frame of ``frame_bytes``;
    ``device_queue_ms``: how long the frame would wait for one of the device's own cores."""
    p = profile
    queue_ms, service_ms = _edge_figures(load, p)
    detect_ms = p.detect_ms if load is None or not load.service_ms else service_ms * p.compute_slowdown
    local_ms = detect_ms + faces * p.fer_ms

    def upload_ms(n: int) -> float:
        return 1000.0 * 8 * n / p.uplink_bps

    def compute_j(ms: float) -> float:
        return p.active_power_w * ms / 1000.0

    crop_bytes = faces * p.crop_bytes
    if (
        respect_overflow and load is not None and load.overflow > p.max_edge_overflow
    ):  # the edge is turning requests away
        queue_ms = float("inf")
    return [
        Estimate(
            "edge",
            upload_ms(frame_bytes) + p.rtt_ms + queue_ms + service_ms,
            p.radio_j_per_byte * frame_bytes,
            frame_bytes,
        ),
        Estimate(
            "crops",
            device_queue_ms + detect_ms + upload_ms(crop_bytes) + p.rtt_ms + queue_ms + service_ms,
            compute_j(detect_ms) + p.radio_j_per_byte * crop_bytes,
            crop_bytes,
        ),
        Estimate("local", device_queue_ms + local_ms, compute_j(local_ms), 0),
    ]


def choose(
    policy: str,
    frame_bytes: int,
    load: EdgeLoad | None,
    profile: DeviceProfileSettings,
    deadline_ms: float | None = None,
    faces: int = 1,
    respect_overflow: bool = True,
    device_queue_ms: float = 0.0,
) -> DevicePlacement:
    """The placement of one frame under ``policy`` (a fixed placement, or ``auto``: the rule above)."""
    if policy != "auto":
        if policy not in PLACEMENTS:
            raise ValueError(f"policy {policy!r} not in {POLICIES}")
        return policy
    deadline = profile.deadline_ms if deadline_ms is None else deadline_ms
    options = [
        e
        for e in estimates(frame_bytes, load, profile, faces, respect_overflow, device_queue_ms)
        if e.energy_j <= profile.energy_budget_j
    ]
    if not options:
        return "edge"
    in_time = [e for e in options if e.latency_ms <= deadline]
    if in_time:
        return min(in_time, key=lambda e: (e.energy_j, e.latency_ms)).placement
    return min(options, key=lambda e: e.latency_ms).placement


class EdgeShare:
    """The share of its edge-bound frames an ``auto`` device still sends to the edge (AIMD).

    On each shed reply to one of its own frames (:meth:`on_shed`) and on each fresh edge status
    showing an edge turning requests away (``overflow`` above the profile's
    ``max_edge_overflow``) halves the share. It grows by ``increase`` only on a status that shows
    room: nothing turned away and queue delay + service within ``room_ms`` (the profile's
    ``edge_room`` x the deadline); otherwise it holds. An unknown edge counts as idle. Frames are let
    through by a deterministic credit (share 0.25: every fourth frame), the rest run on the device.
    Many devices thus split the load with the edge instead of all leaving and all coming back.
    ``start``: the share before any status (below 1: a slow start, so devices that start together
    do not all send everything to an edge that looked idle to each of them).
    """

    def __init__(self, decrease: float = 0.5, increase: float = 0.1, shed_hold_s: float = 0.25,
                 start: float = 1.0) -> None:
        self.share = start
        self.decrease = decrease
        self.increase = increase
        self.shed_hold_s = shed_hold_s
        self._credit = 0.0
        self._seen: int | None = None
        self._shed_at: float | None = None

    def on_shed(self, now_s: float) -> None:
        """The edge shed one of this device's frames: halve the share now, without waiting for the
        next status (at most once per ``shed_hold_s``: the frames sent before the cut are in flight)."""
        if self._shed_at is None or now_s - self._shed_at >= self.shed_hold_s:
            self._shed_at = now_s
            self.share = max(self.share * self.decrease, 0.02)

    def update(self, load: EdgeLoad | None, at_ms: int, max_overflow: float,
               room_ms: float = float("inf")) -> None:
        """Fold in the status published at ``at_ms`` (each status once)."""
        if at_ms == self._seen:
            return
        self._seen = at_ms
        if load is not None and load.overflow > max_overflow:
            self.share = max(self.share * self.decrease, 0.02)
        elif load is None or (load.overflow == 0 and load.queue_delay_ms + max(load.service_ms.values(), default=0.0)
                                                           <= room_ms):
            self.share = min(self.share + self.increase, 1.0)

    def admit(self) -> bool:
        """Whether this edge-bound frame goes to the edge."""
        self._credit += self.share
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False
