"""The device profile: compute speed, energy and link of a camera device (``[device_profile]``).

Defaults describe a Raspberry-Pi-4-class camera on Wi-Fi; sources in docs/offloading.md.
The compute times are ASSUMPTIONS (a Cortex-A72 core is taken as ``compute_slowdown`` times
slower than the edge's measured per-item service time) until measured on a real device.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["DeviceProfileSettings"]


class DeviceProfileSettings(BaseModel):
    """What a device's placement policy (``placement/device.py``) knows about the device itself."""

    compute_slowdown: float = Field(4.0, gt=0, description="device inference time / the edge's measured "
                                    "service time per item (assumption, see docs/offloading.md)")
    detect_ms: float = Field(60.0, gt=0, description="device: face detection of one frame, ms, until the "
                             "edge's service time is known (assumption)")
    fer_ms: float = Field(15.0, gt=0, description="device: FER of one face crop, ms (assumption)")
    active_power_w: float = Field(6.4, gt=0, description="device power while computing, W (Raspberry Pi 4 "
                                  "under full CPU load, see docs/offloading.md)")
    radio_j_per_byte: float = Field(0.007 / 1024, gt=0, description="Wi-Fi transfer energy, J/byte "
                                    "(0.007 J/KB, Balasubramanian et al., IMC 2009)")
    uplink_bps: float = Field(20e6, gt=0, description="device uplink bandwidth, bit/s")
    rtt_ms: float = Field(5.0, ge=0, description="device <-> edge round trip, ms")
    energy_budget_j: float = Field(1.0, gt=0, description="most energy the device may spend on one frame, J")
    deadline_ms: int = Field(500, ge=1, description="the device's deadline per frame (stamped on each frame)")
    crop_bytes: int = Field(6000, ge=1, description="typical JPEG bytes of the face crops of one frame")
    max_edge_overflow: float = Field(0.05, ge=0, le=1, description="auto: an edge that turned away more "
                                     "than this fraction of recent requests is not sent frames")
    parallelism: int = Field(4, ge=1, description="frames the device computes at once (its cores: a "
                             "Raspberry Pi 4 has 4 Cortex-A72 cores, see docs/offloading.md)")
    edge_room: float = Field(0.5, gt=0, le=1, description="auto: the edge share grows only while the edge's "
                             "published queue delay + service is below this fraction of the deadline "
                             "and it turned nothing away")
    edge_share_start: float = Field(0.25, gt=0, le=1, description="auto: the edge share a device starts "
                                    "with (a fleet that starts together does not land on the edge all at once)")
    case_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                description="the case (warrant) this device's frames and calls belong to "
                                "(travels in the frame envelope / the audio's MQTT user property)")
    status_max_age_s: float = Field(5.0, gt=0, description="an edge status older than this counts as unknown")
    status_wait_s: float = Field(3.0, ge=0, description="how long a device waits for its edge's first status "
                                 "before it says so; `auto` then serves frames on the device until one arrives "
                                 "(an edge that is down, or an ACL that withholds the status)")
