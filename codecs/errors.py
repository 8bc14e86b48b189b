"""Codec errors: every failure names its reason, the topic, the field and the byte offset.

    CodecError (edge.errors.EdgeError)
    ├── TopicError      the topic matches no codec, or its segments are wrong
    ├── PayloadError    the payload is not what the codec expects (JSON, hex, fields, size)
    ├── FrameError      binary framing: too short, bad CRC, bad byte count, Modbus exception
    ├── ValueError_     one data point or measurement could not be turned into a value
    ├── RegistryError   the device registry is invalid or does not know the device
    └── UplinkFrameError the gateway's batch frame is corrupt, truncated or of another version

Actors quarantine the raw message with ``reason`` (a stable, short code for metrics and
dead-letter records) and ``str(error)`` (for people).
"""

from __future__ import annotations

from edge.errors import EdgeError


class CodecError(EdgeError):
    """A message or frame could not be decoded. ``reason`` is a stable short code."""

    reason = "invalid"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        topic: str | None = None,
        field: str | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.topic = topic
        self.field = field
        self.offset = offset

    def at(self, topic: str) -> CodecError:
        """Attach the topic once the dispatcher knows it; returns self for ``raise``."""
        if self.topic is None:
            self.topic = topic
        return self

    def describe(self) -> str:
        """One line for people: reason, message, then field, byte offset and topic."""
        where = [f"{k}={v}" for k, v in (("field", self.field), ("offset", self.offset),
                                         ("topic", self.topic)) if v is not None]
        return f"{self.reason}: {self.message}" + (f" ({', '.join(where)})" if where else "")

    def __str__(self) -> str:
        return self.describe()

    def as_dict(self) -> dict[str, object]:
        return {"reason": self.reason, "message": self.message, "field": self.field,
                "offset": self.offset, "topic": self.topic}


class TopicError(CodecError):
    reason = "bad_topic"


class PayloadError(CodecError):
    reason = "bad_payload"


class FrameError(CodecError):
    reason = "bad_frame"


class ValueError_(CodecError):  # noqa: N801 - the builtin's name is taken
    reason = "bad_value"


class RegistryError(CodecError):
    reason = "bad_registry"


class UplinkFrameError(CodecError):
    """``frame``: (gateway id, boot epoch, first seq, count) when the frame's CRC held, so
    its header can be trusted and the sender told that this frame is refused for good."""

    reason = "bad_uplink_frame"
    frame: tuple[str, int, int, int] | None = None
