"""Structured logging: one line per event, as ``key=value`` pairs or as JSON.

Call sites pass an event name and fields::

    log = edge.runtime.log.get(__name__)
    log.info("actor_started", actor="buffer", took_ms=3.1)

and ``setup()`` (called once by the CLI) picks the format. Secrets never reach a log line
because config values print masked (``edge.config.Secret``).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Literal, TextIO

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class EventLogger(logging.LoggerAdapter):
    """A logger whose keyword arguments become the event's fields."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("exc_info", "stack_info")}
        kwargs["extra"] = {"fields": fields}
        return msg, kwargs


def get(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name), {})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, "fields", {}) or {})
    for key, value in record.__dict__.items():  # plain logging calls' `extra=` too
        if key not in _RESERVED and key != "fields":
            fields[key] = value
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


class _EventFormatter(logging.Formatter):
    """One event as a dict: time, level, logger, event name, its fields, the exception."""

    def event(self, record: logging.LogRecord) -> dict[str, Any]:
        doc = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return doc


class KeyValueFormatter(_EventFormatter):
    """``ts=... level=info logger=edge.runtime.graph event=actor_started actor=buffer``."""

    def format(self, record: logging.LogRecord) -> str:
        return _printable(" ".join(f"{k}={_kv(v)}" for k, v in self.event(record).items()))


class JsonFormatter(_EventFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return _printable(json.dumps(self.event(record), default=str, ensure_ascii=False))


def _printable(line: str) -> str:
    """A line the stream can write: a field that came from a sender may hold lone surrogates
    (a JSON key "\\ud800"), which no encoder takes; they are escaped, never a logging error."""
    try:
        line.encode()
        return line
    except UnicodeEncodeError:
        return line.encode("utf-8", "backslashreplace").decode()


def _kv(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


def setup(
    level: str = "info", fmt: Literal["kv", "json"] = "kv", stream: TextIO | None = None
) -> None:
    """Configure the root logger once, for a process started from the CLI."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python logs every failed reconnect, metadata refresh and request as an error:
    # 3,573 lines in the 2.5 minutes of a 60 s Kafka outage. The runtime reports that state
    # once per change itself (the "kafka (...)" health conditions, commit_failed, stalls),
    # so the library speaks only at debug, or when it reports something CRITICAL.
    logging.getLogger("kafka").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)


class Throttle:
    """At most ``per`` lines for each key within ``interval_s``; the lines held back are
    counted and reported by the next one that goes out (``suppressed=N``). For events whose
    rate a sender controls (a quarantined message, a dead letter): a device flooding garbage
    must not flood the log, nor spend the gateway's CPU writing it. Thread-safe."""

    def __init__(self, per: int = 10, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per, self.interval_s, self.clock = per, interval_s, clock
        self._lock = threading.Lock()
        self._windows: dict[Hashable, list[float | int]] = {}  # key -> [window start, lines, held back]

    def allow(self, key: Hashable) -> int | None:
        """None: hold this line back. Else log it, with this many held back before it."""
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval_s:
                if len(self._windows) > 10_000:
                    self._windows.clear()
                held = int(window[2]) if window is not None else 0
                self._windows[key] = [now, 1, 0]
                return held
            if window[1] < self.per:
                window[1] += 1
                return 0
            window[2] += 1
            return None
