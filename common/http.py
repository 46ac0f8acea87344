"""One small asyncio HTTP/1.x server for probes, metrics and artifact downloads.

One request per connection, GET/HEAD only. The request head is read with a size bound and a
timeout; a malformed request line gets 400, another method 405, a path the handler does not
know 404. Every answer carries Content-Length and ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["HttpServer", "Response", "Handler", "route"]

log = logging.getLogger(__name__)

_REASONS = {413: "Content Too Large"}  # RFC 9110 wording on every Python version


@dataclass(frozen=True)
class Response:
    """One answer: status code, body and its content type."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"


Handler = Callable[[str], Response]
"""Maps a request path to its answer."""


def route(routes: Mapping[str, Callable[[], Response]]) -> Handler:
    """A handler answering exact paths from ``routes``, 404 otherwise."""

    def handle(path: str) -> Response:
        fn = routes.get(path)
        return fn() if fn is not None else Response(404, b"not found\n")

    return handle


class HttpServer:
    """Serves ``handler(path)`` on ``host:port``; ``blocking`` handlers run in a worker thread."""

    def __init__(self, host: str, port: int, handler: Handler, *, protocol: str = "HTTP/1.1",
                 read_timeout_s: float = 5.0, max_head_bytes: int = 8192, blocking: bool = False) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.protocol = protocol
        self.read_timeout_s = read_timeout_s
        self.max_head_bytes = max_head_bytes
        self.blocking = blocking
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; return the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=self.max_head_bytes)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        """The request line; the header lines are read (bounded) and dropped."""
        line = await reader.readline()
        total = len(line)
        while True:
            header = await reader.readline()
            total += len(header)
            if total > self.max_head_bytes:
                raise ValueError("request head too large")
            if header in (b"\r\n", b"\n", b""):
                return line

    async def _answer(self, line: bytes) -> tuple[Response, bool]:
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[1].startswith("/") or not parts[2].startswith("HTTP/"):
            return Response(400, b"bad request\n"), False
        method, path = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n"), False
        if self.blocking:
            return await asyncio.to_thread(self.handler, path), method == "HEAD"
        return self.handler(path), method == "HEAD"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(self._read_head(reader), self.read_timeout_s)
            except (asyncio.LimitOverrunError, ValueError):
                line = b""  # too long: answered 400
            if not line and reader.at_eof():
                return  # closed without a request
            response, head_only = await self._answer(line)
            reason = _REASONS.get(response.status) or HTTPStatus(response.status).phrase
            head = (f"{self.protocol} {response.status} {reason}\r\n"
                    f"Content-Type: {response.content_type}\r\n"
                    f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + (b"" if head_only else response.body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("http request dropped: %s", exc)
        finally:
            writer.close()
