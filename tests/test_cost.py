"""The cost model adds its terms at the configured prices."""

from __future__ import annotations

import pytest

from common.offload_settings import OffloadSettings
from placement.cost import request_cost


def test_cost_terms_add_up() -> None:
    prices = OffloadSettings(edge_cost_per_s=1.0, dc_gpu_cost_per_s=10.0, wan_cost_per_gb=100.0,
                             device_cost_per_j=0.5)
    c = request_cost(prices, device_j=2.0, edge_s=0.5, dc_s=0.25, wan_bytes=10**7)
    assert c.total == pytest.approx(1.0 + 0.5 + 2.5 + 1.0)
    assert request_cost(prices).total == 0.0
