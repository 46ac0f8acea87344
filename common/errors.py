"""Errors shared by the parts that the console script reports as one line."""

from __future__ import annotations

__all__ = ["BrokerUnreachable"]


class BrokerUnreachable(ConnectionError):
    """A broker (MQTT or Kafka) could not be reached or refused us; the message names host:port."""

    def __init__(self, kind: str, endpoint: str, cause: BaseException | str) -> None:
        detail = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(f"{kind} {endpoint}: {detail}")
        self.kind = kind
        self.endpoint = endpoint
