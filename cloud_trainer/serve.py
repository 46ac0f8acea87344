"""A minimal HTTP server for registry artifacts: ``GET /artifacts/<model>/<version>``.

Used when an artifact is too large to ride inside its Kafka announcement. It serves only
versions the registry signed, whose bytes still match their recorded sha256, not rejected,
and no larger than ``max_bytes``; anything else is a 404 (413 for too large). It binds to
the configured interface (``trainer.serve_host``, loopback by default). Edges still check
sha256 and signature themselves.
"""

from __future__ import annotations

import asyncio
import logging

from cloud_trainer.registry import Registry, RegistryError
from topics.names import check_id

__all__ = ["ArtifactServer"]

log = logging.getLogger(__name__)
_MAX_REQUEST_LINE = 4096


class ArtifactServer:
    """Serves ``registry``'s artifact files over HTTP/1.0 (one request per connection)."""

    def __init__(self, registry: Registry, host: str, port: int, max_bytes: int = 256 << 20) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.max_bytes = max_bytes
        self._server: asyncio.base_events.Server | None = None
        self.served = 0
        self.refused = 0

    async def start(self) -> int:
        """Listen; return the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            status, body = await asyncio.to_thread(
                self._respond, line[:_MAX_REQUEST_LINE].decode("latin-1", "replace"))
            head = (f"HTTP/1.0 {status}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("artifact request failed: %s", exc)
        finally:
            writer.close()

    def _respond(self, request_line: str) -> tuple[str, bytes]:
        parts = request_line.split()
        if len(parts) < 2 or parts[0] != "GET":
            return "405 Method Not Allowed", b""
        segments = parts[1].split("/")
        if len(segments) != 4 or segments[:2] != ["", "artifacts"]:
            return "404 Not Found", b""
        try:
            rec = self.registry.find(check_id(segments[2], "model"), check_id(segments[3], "version"))
        except ValueError:
            rec = None
        if rec is None or not rec.signature or rec.status == "rejected":
            self.refused += 1
            return "404 Not Found", b""
        if rec.size > self.max_bytes:
            self.refused += 1
            return "413 Content Too Large", b""
        try:
            body = self.registry.artifact(rec)  # checked against its recorded sha256
        except (RegistryError, OSError) as exc:
            log.warning("artifact %s %s not served: %s", rec.name, rec.version, exc)
            self.refused += 1
            return "404 Not Found", b""
        self.served += 1
        return "200 OK", body
