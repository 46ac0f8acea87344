"""A tiny HTTP endpoint for Kubernetes probes and Prometheus: /healthz, /readyz, /metrics (edge and DC)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.http import HttpServer, Response, route

__all__ = ["HealthServer"]


class HealthServer:
    """``/healthz``: ``live()`` is true (work makes progress); ``/readyz``: ``ready()`` is true;
    ``/metrics``: the registry. Liveness is progress, not "the process answers HTTP": a wedged
    ack pipeline or worker must fail it so that Kubernetes restarts the pod."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool],
                 live: Callable[[], bool] | None = None) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._ready = ready
        self._live = live or (lambda: True)
        self._http = HttpServer(host, port, route({
            "/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics}))

    async def start(self) -> None:
        self.port = await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    def _healthz(self) -> Response:
        if self._live():
            return Response(200, b"ok\n")
        return Response(503, b"stalled: work pending, no progress\n")

    def _readyz(self) -> Response:
        return Response(200, b"ready\n") if self._ready() else Response(503, b"not ready\n")

    def _metrics(self) -> Response:
        return Response(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
