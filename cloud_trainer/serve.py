"""A minimal HTTP server for registry artifacts: ``GET /artifacts/<model>/<version>``.

Used when an artifact is too large to ride inside its Kafka announcement. It serves only
versions the registry signed, whose bytes still match their recorded sha256, not rejected,
and no larger than ``max_bytes``; anything else is a 404 (413 for too large). It binds to
the configured interface (``trainer.serve_host``, loopback by default). Edges still check
sha256 and signature themselves.
"""

from __future__ import annotations

import logging

from cloud_trainer.registry import Registry, RegistryError
from common.http import HttpServer, Response
from topics.names import check_id

__all__ = ["ArtifactServer"]

log = logging.getLogger(__name__)


class ArtifactServer:
    """Serves ``registry``'s artifact files over HTTP/1.0 (one request per connection)."""

    def __init__(self, registry: Registry, host: str, port: int, max_bytes: int = 256 << 20) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.max_bytes = max_bytes
        self.served = 0
        self.refused = 0
        self._http = HttpServer(host, port, self._respond, protocol="HTTP/1.0", read_timeout_s=10,
                                blocking=True)

    async def start(self) -> int:
        """Listen; return the bound port (useful with port 0)."""
        self.port = await self._http.start()
        return self.port

    async def stop(self) -> None:
        await self._http.stop()

    def _respond(self, path: str) -> Response:
        segments = path.split("/")
        if len(segments) != 4 or segments[:2] != ["", "artifacts"]:
            return _answer(404)
        try:
            rec = self.registry.find(check_id(segments[2], "model"), check_id(segments[3], "version"))
        except ValueError:
            rec = None
        if rec is None or not rec.signature or rec.status == "rejected":
            self.refused += 1
            return _answer(404)
        if rec.size > self.max_bytes:
            self.refused += 1
            return _answer(413)
        try:
            body = self.registry.artifact(rec)  # checked against its recorded sha256
        except (RegistryError, OSError) as exc:
            log.warning("artifact %s %s not served: %s", rec.name, rec.version, exc)
            self.refused += 1
            return _answer(404)
        self.served += 1
        return _answer(200, body)


def _answer(status: int, body: bytes = b"") -> Response:
    return Response(status, body, "application/octet-stream")
