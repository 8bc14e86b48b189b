"""The batch frame a gateway sends upstream on ``edge/<gateway>/up``.

Layout (big-endian), declared once below as ``HEADER``::

    magic      2 bytes  b"EG"
    version    u8       1
    flags      u8       bit 0: body is zlib-compressed
    boot_epoch u32      increments at every gateway start (persisted by the buffer)
    first_seq  u64      sequence number of the first record; record i has first_seq + i
    count      u32      number of records
    body_len   u32      bytes of body that follow the gateway id
    gw_len     u8       length of the gateway id
    gateway    gw_len bytes, UTF-8
    body       body_len bytes: msgpack ``[deltas, records]``: ``records`` as in ``_to_wire``;
               ``deltas`` nil when record i has sequence first_seq + i, else each record's
               sequence minus first_seq (priority records make a batch non-contiguous)
    crc32      u32      CRC-32 of every byte before it

(gateway id, boot epoch, sequence) is every record's stable identity, so a resent
batch is recognised downstream. A corrupt, truncated or other-version frame raises
``UplinkFrameError`` naming the field and byte offset; so does a frame whose CRC is right
but one of whose records is not what every later hop can carry (``edge.codecs.limits``):
``decode`` returns only records the receiver can produce and the sink can insert.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from edge.codecs.errors import CodecError, UplinkFrameError
from edge.codecs.limits import INT8, check_wire_record
from edge.codecs.records import EVENT_TYPES, Event, Gap, Measurement, Quarantined

MAGIC = b"EG"
VERSION = 1
FLAG_ZLIB = 0x01
HEADER = struct.Struct(">2sBBIQIIB")
CRC = struct.Struct(">I")
MAX_BODY = 64 * 1024 * 1024  # also the bound on a decompressed body
KIND_MEASUREMENT, KIND_EVENT, KIND_QUARANTINED, KIND_GAP = 0, 1, 2, 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

Record = Measurement | Event | Quarantined | Gap


@dataclass(frozen=True, slots=True)
class Batch:
    gateway_id: str
    boot_epoch: int
    first_seq: int
    records: list[Record]
    seqs: list[int]
    compressed: bool = False


def _us(t: datetime) -> int:
    return (t - _EPOCH) // _US


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _to_wire(record: Record, cache: dict[datetime, int]) -> list[Any]:
    t = record.time
    us = cache.get(t)
    if us is None:
        us = cache[t] = _us(t)
    if type(record) is Measurement:
        return [KIND_MEASUREMENT, us, *record[1:]]
    if type(record) is Quarantined:
        return [KIND_QUARANTINED, us, *record[1:]]
    if type(record) is Gap:
        return [KIND_GAP, us, *record[1:]]
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "time"}
    return [KIND_EVENT, us, record.type, fields]


def encode(gateway_id: str, boot_epoch: int, first_seq: int, records: list[Record],
           compress: bool = False, seqs: list[int] | None = None) -> bytes:
    """Encode records with their sequences (``seqs``; default first_seq, first_seq+1, ...)."""
    cache: dict[datetime, int] = {}
    return encode_wire(gateway_id, boot_epoch, first_seq,
                       [_to_wire(r, cache) for r in records], compress, seqs)


def to_wire(record: Record, times: dict[datetime, int] | None = None) -> list[Any]:
    """One record in its wire form (what the gateway's buffer stores, packed). ``times``:
    a cache of converted timestamps, for records that share them (a batch)."""
    return _to_wire(record, {} if times is None else times)


def encode_packed(gateway_id: str, boot_epoch: int, seqs: list[int] | tuple[int, ...],
                  packed: list[bytes] | tuple[bytes, ...], compress: bool = False) -> bytes:
    """Encode records the buffer keeps already msgpack-packed, without unpacking them."""
    first = seqs[0]
    deltas = None if seqs[-1] - first == len(seqs) - 1 else [q - first for q in seqs]
    packer = msgpack.Packer(use_bin_type=True)
    body = (packer.pack_array_header(2) + packer.pack(deltas) + packer.pack_array_header(len(packed))
            + b"".join(packed))
    return _frame(gateway_id, boot_epoch, first, len(packed), body, compress)


def encode_wire(gateway_id: str, boot_epoch: int, first_seq: int, wire: list[Any],
                compress: bool = False, seqs: list[int] | None = None) -> bytes:
    """Encode records already in wire form."""
    deltas = None
    if seqs is not None:
        if len(seqs) != len(wire) or (seqs and seqs[0] != first_seq):
            raise UplinkFrameError("seqs must start at first_seq, one per record", field="seqs")
        if seqs != list(range(first_seq, first_seq + len(seqs))):
            deltas = [q - first_seq for q in seqs]
    body = msgpack.packb([deltas, wire], use_bin_type=True)
    return _frame(gateway_id, boot_epoch, first_seq, len(wire), body, compress)


def _frame(gateway_id: str, boot_epoch: int, first_seq: int, count: int, body: bytes,
           compress: bool) -> bytes:
    gw = gateway_id.encode()
    if not 1 <= len(gw) <= 255:
        raise UplinkFrameError(f"gateway id must be 1..255 bytes, got {len(gw)}", field="gateway")
    if compress:
        body = zlib.compress(body, 6)
    if len(body) > MAX_BODY:
        raise UplinkFrameError(f"body of {len(body)} bytes exceeds {MAX_BODY}", field="body")
    head = HEADER.pack(MAGIC, VERSION, FLAG_ZLIB if compress else 0, boot_epoch, first_seq,
                       count, len(body), len(gw))
    frame = head + gw + body
    return frame + CRC.pack(zlib.crc32(frame))


def decode(frame: bytes) -> Batch:
    size = len(frame)
    if size < HEADER.size + CRC.size:
        raise UplinkFrameError(f"frame of {size} bytes is shorter than its header",
                               reason="truncated", field="header", offset=size)
    magic, version, flags, boot, first, count, body_len, gw_len = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise UplinkFrameError(f"magic is {magic!r}, expected {MAGIC!r}", reason="bad_magic",
                               field="magic", offset=0)
    if version != VERSION:
        raise UplinkFrameError(f"frame version {version}, this decoder reads version {VERSION}",
                               reason="bad_version", field="version", offset=2)
    body_at = HEADER.size + gw_len
    end = body_at + body_len
    if size != end + CRC.size:
        raise UplinkFrameError(f"frame is {size} bytes, its header announces {end + CRC.size}",
                               reason="truncated", field="body_len", offset=HEADER.size - 5)
    (crc,) = CRC.unpack_from(frame, end)
    if zlib.crc32(memoryview(frame)[:end]) != crc:
        raise UplinkFrameError("CRC-32 mismatch: the frame is corrupt", reason="bad_crc",
                               field="crc32", offset=end)
    if flags & ~FLAG_ZLIB:
        raise UplinkFrameError(f"unknown flags 0x{flags:02x}", reason="bad_flags", field="flags", offset=3)
    try:
        gateway = bytes(frame[HEADER.size:body_at]).decode()
    except UnicodeDecodeError as exc:
        raise UplinkFrameError("gateway id is not UTF-8", field="gateway", offset=HEADER.size) from exc
    try:  # the CRC held: the header is the sender's, and what fails now fails at every resend
        body = frame[body_at:end]
        if flags & FLAG_ZLIB:
            body = _inflate(body, body_at)
        deltas, records = _records(body, count, body_at)
        seqs = list(range(first, first + count)) if deltas is None else [first + d for d in deltas]
        if seqs and max(seqs) > INT8[1]:
            raise UplinkFrameError(f"sequence {max(seqs)} exceeds {INT8[1]}", reason="bad_record",
                                   field="first_seq", offset=12)
    except UplinkFrameError as exc:
        exc.frame = (gateway, boot, first, count)
        raise
    return Batch(gateway, boot, first, records, seqs, bool(flags & FLAG_ZLIB))


def _inflate(body: bytes, at: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, MAX_BODY)
    except zlib.error as exc:
        raise UplinkFrameError(f"body does not inflate: {exc}", field="body", offset=at) from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise UplinkFrameError("compressed body is incomplete or inflates beyond the limit",
                               field="body", offset=at)
    return out


def from_wire(item: list[Any], times: dict[int, datetime] | None = None) -> Record:
    """A record from its wire form; raises TypeError/ValueError/KeyError on a bad one."""
    kind, us = item[0], item[1]
    t = times.get(us) if times is not None else None
    if t is None:
        t = _time(us)
        if times is not None:
            times[us] = t
    if kind == KIND_MEASUREMENT:
        return Measurement(t, *item[2:])
    if kind == KIND_QUARANTINED:
        return Quarantined(t, *item[2:])
    if kind == KIND_GAP:
        return Gap(t, *item[2:])
    if kind == KIND_EVENT:
        return EVENT_TYPES[item[2]](time=t, **item[3])
    raise ValueError(f"unknown record kind {kind!r}")


def _records(body: bytes, count: int, at: int) -> tuple[list[int] | None, list[Record]]:
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise UplinkFrameError(f"body is not msgpack: {exc}", field="body", offset=at) from exc
    if not isinstance(doc, list) or len(doc) != 2:
        raise UplinkFrameError("body is not [deltas, records]", field="body", offset=at)
    deltas, items = doc
    if deltas is not None and (not isinstance(deltas, list) or len(deltas) != count
                               or not all(type(d) is int and d >= 0 for d in deltas)):
        raise UplinkFrameError("sequence deltas do not match the records", field="seqs", offset=at)
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise UplinkFrameError(f"header says {count} records, body holds {got}", field="count",
                               offset=HEADER.size - 9)
    times: dict[int, datetime] = {}
    records: list[Record] = []
    for i, item in enumerate(items):
        try:
            record = from_wire(item, times)
        except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError) as exc:
            raise UplinkFrameError(f"record {i} is malformed: {exc}"[:500], reason="bad_record",
                                   field=f"records[{i}]", offset=at) from exc
        try:
            check_wire_record(record)
        except CodecError as exc:
            raise UplinkFrameError(f"record {i}: {exc.message}", reason="bad_record",
                                   field=f"records[{i}].{exc.field}", offset=at) from exc
        records.append(record)
    return deltas, records
