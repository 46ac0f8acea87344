"""The edge's probe and metrics endpoint: :class:`common.health.HealthServer` (shared with the DC)."""

from __future__ import annotations

from common.health import HealthServer

__all__ = ["HealthServer"]
