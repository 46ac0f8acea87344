"""Settings of offloading: deadlines, the edge's load report and its admission control.

A section of :class:`common.settings.Settings` (``EDGE_OFFLOAD_OFFLOAD__*``, TOML ``[offload]``).
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

    dc_spill: bool = Field(False, description="spill frames that would miss their deadline at the edge to "
                           "the DC inference workers over Kafka (offload.dc-frames / offload.dc-results)")
    dc_wan_delay_ms: float = Field(0.0, ge=0, description="SIMULATED one-way WAN delay edge <-> DC, added by "
                                   "the edge to each spilled frame and to its reply (tests and bench)")
    dc_initial_latency_ms: float = Field(200.0, gt=0, description="assumed DC round trip until one is "
                                         "measured (EWMA of replies, timeouts count as their timeout)")
    dc_timeout_ms: float = Field(2000.0, gt=0, description="longest wait for a DC reply; then the frame is "
                                 "shed with reason dc_timeout")
    dc_group: str = Field("dc-inference", description="Kafka consumer group of the DC inference workers")
    dc_partitions: int = Field(4, ge=1, description="partitions of offload.dc-frames: the most DC "
                               "workers that share the load")
    dc_max_batch: int = Field(16, ge=1, description="frames one DC worker serves in one batch")
    dc_http_host: str = Field("0.0.0.0", description="interface of the DC worker's /metrics, /healthz, /readyz")
    dc_http_port: int = Field(9110, ge=0, description="/metrics, /healthz, /readyz of `dc-worker`; 0 picks a "
                              "free port")
    dc_liveness_stall_s: float = Field(60.0, gt=0, description="/healthz of a DC worker fails when its poll "
                                       "loop finished no step (poll, batch, reconnect attempt) for this long")

    # cost model (placement/cost.py): prices are knobs, not measurements
    edge_cost_per_s: float = Field(0.0000139, ge=0, description="cost of one second of the edge's worker "
                                   "(a 2-vCPU node at ~0.05/h)")
    dc_gpu_cost_per_s: float = Field(0.00083, ge=0, description="cost of one DC GPU second (~3/h for a "
                                     "data-centre GPU on demand)")
    wan_cost_per_gb: float = Field(0.09, ge=0, description="cost of one GB over the WAN edge <-> DC")
    device_cost_per_j: float = Field(0.0, ge=0, description="cost of one joule of device energy (0: "
                                     "energy is reported, not priced)")
