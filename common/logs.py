"""Logging set-up of the console script: plain or JSON lines, context fields, rate-limited warnings.

Context fields (``node``, ``device``, ``conversation``, ...) live in a :class:`~contextvars.ContextVar`:
:func:`log_context` adds them for a block (and every asyncio task started inside it, which copies
the context), and every record logged there carries them: as keys of the JSON object, or as
``key=value`` after the text line.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType

__all__ = ["JsonFormatter", "TextFormatter", "ContextFilter", "log_context", "bind_context", "current_context",
           "setup_logging", "RateLimitedLog"]

_CONTEXT: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "edge_offload_log_context", default=MappingProxyType({}))


def current_context() -> dict[str, str]:
    """The context fields in force here."""
    return dict(_CONTEXT.get())


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add ``fields`` (None values are left out) to every record logged inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_context(**fields: object) -> None:
    """Add ``fields`` for the rest of the current context (a task, or a thread): no block to close."""
    _CONTEXT.set({**_CONTEXT.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record as ``record.context`` (a dict)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = _CONTEXT.get()
        return True


def _context_of(record: logging.LogRecord) -> Mapping[str, str]:
    context = getattr(record, "context", None)
    return context if isinstance(context, Mapping) else _CONTEXT.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the context fields (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _context_of(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` (the context fields, sorted)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context_of(record)
        if not context:
            return line
        fields = " ".join(f"{k}={v}" for k, v in sorted(context.items()))
        head, sep, rest = line.partition("\n")  # a traceback goes below the fields
        return f"{head} {fields}{sep}{rest}"


def setup_logging(level: int | str = logging.WARNING, *, as_json: bool = False) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RateLimitedLog:
    """At most one line per ``interval_s`` per key; the next line says how many were suppressed.

    For events that can flood (shed frames, refused legs): the counter metric counts every one,
    the log shows that it happens.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval_s`` ago; True if logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg = f"{msg} (%d similar suppressed)"
            args = (*args, skipped)
        self._logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
