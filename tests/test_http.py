"""The shared HTTP server: routing, method and request-line checks, bounded reads."""

from __future__ import annotations

import asyncio

from common.http import HttpServer, Response, route


def _server(read_timeout_s: float = 5.0) -> HttpServer:
    return HttpServer("127.0.0.1", 0, route({"/x": lambda: Response(200, b"hello\n")}),
                      read_timeout_s=read_timeout_s)


async def _ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()  # the server closes after one answer
    writer.close()
    return data


async def test_answers_routes_404_405_400_and_head() -> None:
    server = _server()
    port = await server.start()
    try:
        ok = await _ask(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 6\r\n" in ok
        assert ok.endswith(b"\r\n\r\nhello\n")
        head = await _ask(port, b"HEAD /x HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 6\r\n" in head
        assert head.endswith(b"\r\n\r\n")
        assert (await _ask(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert (await _ask(port, b"POST /x HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 405 Method Not Allowed\r\n")
        assert (await _ask(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    finally:
        await server.stop()


async def test_silent_client_is_dropped_after_the_read_timeout() -> None:
    server = _server(read_timeout_s=0.2)
    port = await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server, no answer
        writer.close()
    finally:
        await server.stop()
