"""Per-request cost of a placement: device energy, edge share, DC GPU seconds and WAN bytes.

Prices come from ``offload`` settings (knobs, not measurements); the quantities they multiply
are measured (edge and DC busy seconds, bytes) or, for device energy, modelled from the device
profile (:mod:`placement.device`).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.offload_settings import OffloadSettings

__all__ = ["Cost", "request_cost"]


@dataclass(frozen=True, slots=True)
class Cost:
    device_j: float
    edge_s: float
    dc_s: float
    wan_bytes: int
    total: float  # in the price unit of the settings


def request_cost(prices: OffloadSettings, *, device_j: float = 0.0, edge_s: float = 0.0, dc_s: float = 0.0,
                 wan_bytes: int = 0) -> Cost:
    """The cost of one request (or the sum over many: every term is additive)."""
    total = (prices.device_cost_per_j * device_j + prices.edge_cost_per_s * edge_s
             + prices.dc_gpu_cost_per_s * dc_s + prices.wan_cost_per_gb * wan_bytes / 1e9)
    return Cost(device_j, edge_s, dc_s, wan_bytes, total)
