"""Compile a device template's data points into a decoder once; decode frames many times.

The declaration (``registry.DataPoint``) stays the single source of truth. Compiling
turns it into precompiled ``struct.Struct`` objects:

- fast path: when every data point is a plain integer/float in one byte order and none
  overlap, the whole template becomes *one* ``Struct`` with pad bytes between the fields,
  so a frame is cut with a single ``unpack_from`` call (measured in bench/codecs.py; it
  beats construct's compiled parser about fourfold, see docs/performance.md, "Library costs");
- general path: bit fields, word-swapped values, mixed byte orders, overlaps, or a frame
  too short for every point: one precompiled reader per data point, so a short or bad
  point yields an error for that point while the others still decode.

Optional Modbus-RTU framing is checked before the points are read: CRC-16/MODBUS (little
endian, over everything before it), exception responses, and the byte count.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge.codecs.errors import CodecError, FrameError, ValueError_
from edge.codecs.registry import ENCODINGS, MODBUS_HEADER, DataPoint, DeviceTemplate

_ORDER = {"big": ">", "little": "<", "word-swapped": ">"}


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA005 reflected, init 0xFFFF), as sent little-endian."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def check_modbus(data: bytes) -> None:
    """Validate a Modbus-RTU response frame; raise ``FrameError`` naming the field."""
    if len(data) < 5:
        raise FrameError(f"Modbus frame of {len(data)} bytes is shorter than 5",
                         reason="short_frame", field="frame", offset=len(data))
    expected = crc16_modbus(data[:-2])
    found = int.from_bytes(data[-2:], "little")
    if expected != found:
        raise FrameError(f"CRC-16/MODBUS mismatch: frame has 0x{found:04X}, computed 0x{expected:04X}",
                         reason="bad_crc", field="crc", offset=len(data) - 2)
    if data[1] & 0x80:
        raise FrameError(f"Modbus exception response, code {data[2]}",
                         reason="modbus_exception", field="function", offset=1)
    if data[2] != len(data) - 5:
        raise FrameError(f"Modbus byte count says {data[2]}, frame carries {len(data) - 5}",
                         reason="bad_byte_count", field="byte_count", offset=2)


Reader = Callable[[bytes], int | float]


@dataclass(frozen=True, slots=True)
class _Point:
    """A data point with everything precomputed that turning raw into a value needs."""

    dp: DataPoint
    read: Reader
    divisor: float
    is_float: bool


def _reader(dp: DataPoint) -> Reader:
    offset, length = dp.offset, dp.length
    if dp.encoding == "Bits":
        end, mask, shift = offset + length, (1 << dp.bit_length) - 1, dp.bit_offset

        def bits(data: bytes) -> int:
            if len(data) < end:
                raise struct.error("frame too short")
            return (int.from_bytes(data[offset:end], "big") >> shift) & mask

        return bits
    code = ENCODINGS[dp.encoding][0]
    if dp.byte_order == "word-swapped":
        s = struct.Struct(">" + code)

        def swapped(data: bytes) -> int | float:
            chunk = data[offset:offset + 4]
            if len(chunk) < 4:
                raise struct.error("frame too short")
            return s.unpack(chunk[2:4] + chunk[0:2])[0]

        return swapped
    s = struct.Struct(_ORDER[dp.byte_order] + code)
    return lambda data: s.unpack_from(data, offset)[0]


class CompiledTemplate:
    """A template compiled for decoding and encoding. Thread-safe; build once, reuse.

    ``decode(data)`` returns ``(values, errors)``: ``values`` is a list of
    ``(label, value, unit)`` for every data point that decoded, ``errors`` a list of
    ``CodecError`` for those that did not. Framing errors raise instead: then no value of
    the frame can be trusted.
    """

    def __init__(self, template: DeviceTemplate) -> None:
        self.template = template
        self.modbus = template.framing == "modbus-rtu"
        self.points = tuple(
            _Point(dp, _reader(dp), float(10 ** dp.decimals), dp.encoding == "Float32")
            for dp in template.data_points
        )
        self.data_end = max(dp.offset + dp.length for dp in template.data_points)
        self.frame_size = (max(self.data_end, MODBUS_HEADER) + 2) if self.modbus else self.data_end
        self._fast, self._fast_points = self._compile_fast()

    def _compile_fast(self) -> tuple[struct.Struct | None, tuple[_Point, ...]]:
        points = sorted(self.points, key=lambda p: p.dp.offset)
        orders = {p.dp.byte_order for p in points}
        plain = all(p.dp.encoding != "Bits" for p in points)
        if not plain or len(orders) != 1 or "word-swapped" in orders:
            return None, ()
        fmt, position = _ORDER[orders.pop()], 0
        for p in points:
            if p.dp.offset < position:
                return None, ()  # overlapping points
            fmt += "x" * (p.dp.offset - position) + ENCODINGS[p.dp.encoding][0]
            position = p.dp.offset + p.dp.length
        return struct.Struct(fmt), tuple(points)

    def decode(self, data: bytes) -> tuple[list[tuple[str, float, str | None]], list[CodecError]]:
        if self.modbus:
            check_modbus(data)
        if self._fast is not None and len(data) >= self.data_end:
            raws = self._fast.unpack_from(data)
            pairs = zip(self._fast_points, raws, strict=True)
        else:
            pairs = self._read_each(data)
        values: list[tuple[str, float, str | None]] = []
        errors: list[CodecError] = []
        for point, raw in pairs:
            if isinstance(raw, CodecError):
                errors.append(raw)
                continue
            value = _value(point, raw)
            if isinstance(value, CodecError):
                errors.append(value)
            else:
                values.append((point.dp.label, value, point.dp.unit))
        return values, errors

    def _read_each(self, data: bytes) -> list[tuple[_Point, int | float | CodecError]]:
        out: list[tuple[_Point, int | float | CodecError]] = []
        for point in self.points:
            try:
                out.append((point, point.read(data)))
            except struct.error:
                dp = point.dp
                out.append((point, ValueError_(
                    f"needs bytes {dp.offset}..{dp.offset + dp.length - 1}, frame has {len(data)}",
                    reason="short_frame", field=dp.label, offset=dp.offset)))
        return out

    def encode(self, values: Mapping[str, float]) -> bytes:
        """Build a frame from values by label (the inverse of ``decode``)."""
        buf = bytearray(self.frame_size)
        for point in self.points:
            dp = point.dp
            value = values[dp.label]
            raw: int | float = value * point.divisor if point.is_float else round(value * point.divisor)
            if dp.encoding == "Bits":
                size = dp.length
                current = int.from_bytes(buf[dp.offset:dp.offset + size], "big")
                mask = ((1 << dp.bit_length) - 1) << dp.bit_offset
                current = (current & ~mask) | ((int(raw) << dp.bit_offset) & mask)
                buf[dp.offset:dp.offset + size] = current.to_bytes(size, "big")
                continue
            code = ENCODINGS[dp.encoding][0]
            try:
                packed = struct.pack(_ORDER[dp.byte_order] + code, raw)
            except (struct.error, OverflowError) as exc:
                raise ValueError_(f"value {value} does not fit {dp.encoding}: {exc}",
                                  field=dp.label, offset=dp.offset) from exc
            if dp.byte_order == "word-swapped":
                packed = packed[2:4] + packed[0:2]
            buf[dp.offset:dp.offset + dp.length] = packed
        if self.modbus:
            buf[0] = self.template.modbus_address
            buf[1] = self.template.modbus_function
            buf[2] = len(buf) - 5
            buf[-2:] = crc16_modbus(bytes(buf[:-2])).to_bytes(2, "little")
        return bytes(buf)


def _value(point: _Point, raw: int | float) -> float | CodecError:
    dp = point.dp
    if dp.enum and raw not in dp.enum:
        known = ", ".join(f"{k}={v}" for k, v in dp.enum.items())
        return ValueError_(f"raw value {raw} is not one of the enumeration ({known})",
                           reason="unknown_enum", field=dp.label, offset=dp.offset)
    if point.is_float and not math.isfinite(raw):
        return ValueError_(f"float value is {raw}", reason="bad_value", field=dp.label,
                           offset=dp.offset)
    value = raw / point.divisor if point.divisor != 1.0 else float(raw)
    return float(round(value)) if dp.whole_number else value
