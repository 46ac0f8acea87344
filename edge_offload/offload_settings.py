"""Settings of offloading: deadlines, the edge's load report and its admission control.

A section of :class:`edge_offload.settings.Settings` (``EDGE_OFFLOAD_OFFLOAD__*``, TOML ``[offload]``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["OffloadSettings"]


class OffloadSettings(BaseModel):
    """Where each request runs: the edge predicts completion time against the request's deadline."""

    admission: bool = Field(True, description="shed (with a published reason) a frame predicted to miss "
                            "its deadline instead of serving it late; off: serve every frame")
    default_deadline_ms: int = Field(0, ge=0, description="deadline of a frame that carries none, counted "
                                     "from its capture time; 0: such frames have no deadline")
    margin_ms: float = Field(5.0, ge=0, description="safety margin added to the predicted completion time")
    status_interval_s: float = Field(1.0, gt=0, description="how often the retained edge status carries "
                                     "fresh load figures")
    load_alpha: float = Field(0.2, gt=0, le=1, description="EWMA weight of the newest batch in the "
                              "service-time estimate")
    load_window_s: float = Field(5.0, gt=0, description="window of the utilisation estimate")
