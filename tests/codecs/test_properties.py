"""Properties the codecs keep for any input hypothesis can think of."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack
import pytest
import strategies as s
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from edge.codecs import registry, stream, uplink
from edge.codecs.batch import decode_batch
from edge.codecs.dispatch import MAX_PAYLOAD, Dispatcher
from edge.codecs.errors import CodecError, FrameError, UplinkFrameError
from edge.codecs.records import Measurement, Quarantined
from edge.codecs.template import CompiledTemplate
from edge.codecs.v2 import SEQ_MOD, SequenceTracker, Verdict

REPO = Path(__file__).resolve().parents[2]
DISPATCHER = Dispatcher(registry.loads((REPO / "fixtures" / "registry.toml").read_text()))
SETTINGS = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@SETTINGS
@given(s.templates())
def test_every_encoding_and_template_shape_round_trips_exactly(case):
    template, raws = case
    compiled = CompiledTemplate(template)
    by_label = {dp.label: dp for dp in template.data_points}
    values = {label: s.expected_value(by_label[label], raw) for label, raw in raws.items()}
    decoded, errors = compiled.decode(compiled.encode(values))
    assert errors == []
    assert {label: value for label, value, _ in decoded} == values
    assert [unit for _, _, unit in decoded] == [dp.unit for dp in template.data_points]


@SETTINGS
@given(s.templates(framing="modbus-rtu"), st.data())
def test_any_flipped_bit_in_a_modbus_frame_is_caught(case, data):
    template, raws = case
    compiled = CompiledTemplate(template)
    by_label = {dp.label: dp for dp in template.data_points}
    frame = bytearray(compiled.encode({k: s.expected_value(by_label[k], v) for k, v in raws.items()}))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        compiled.decode(bytes(frame))


@SETTINGS
@given(s.templates(), st.data())
def test_a_truncated_frame_yields_the_points_it_holds_and_errors_for_the_rest(case, data):
    template, raws = case
    assume(template.framing == "none")
    compiled = CompiledTemplate(template)
    by_label = {dp.label: dp for dp in template.data_points}
    frame = compiled.encode({k: s.expected_value(by_label[k], v) for k, v in raws.items()})
    cut = data.draw(st.integers(0, len(frame)))
    decoded, errors = compiled.decode(frame[:cut])
    fits = {dp.label for dp in template.data_points if dp.offset + dp.length <= cut}
    assert {label for label, _, _ in decoded} == fits
    assert {e.field for e in errors} == set(by_label) - fits
    assert all(e.reason == "short_frame" for e in errors)


@SETTINGS
@given(s.topics, s.payloads, s.received)
@example("tele/f2-e4fd45f654be/sensor-mode/J1/sensor-1", b'{"timestamp": 1, "data": "00"}', None)
@example("iot/pm-1/telemetry", b'{"v": 2, "device_id": "pm-1", "ts": "0001-01-01T00:00:00+01:00"}', None)
@example("homelab/energy/m", b'{"x": "1e999 V", "y": NaN, "z": Infinity}', None)
@example("homelab/energy/m", b"[" * 100_000 + b"]" * 100_000, None)
def test_arbitrary_messages_raise_nothing_but_codec_errors(topic, payload, received_at):
    try:
        result = DISPATCHER.decode(topic, payload, received_at)
    except CodecError as exc:
        assert exc.reason and exc.topic == topic
        return
    for error in result.errors:
        assert isinstance(error, CodecError) and error.reason
    for record in result.records:
        record.to_json()  # every record can be printed


def test_an_oversized_payload_is_refused_before_any_parsing():
    with pytest.raises(CodecError) as info:
        DISPATCHER.decode("homelab/energy/m", b"{" + b" " * MAX_PAYLOAD + b"}")
    assert info.value.reason == "too_large"


@SETTINGS
@given(s.records, st.text(min_size=1, max_size=30).filter(lambda g: len(g.encode()) <= 255),
       st.integers(0, 2**32 - 1), st.integers(0, 2**62), st.booleans(), st.data())
def test_the_uplink_frame_round_trips_any_list_of_records(records, gateway, boot, first, compress, data):
    gaps = data.draw(st.lists(st.integers(1, 1000), min_size=len(records), max_size=len(records)))
    seqs = [first + sum(gaps[:i]) - (gaps[0] if gaps else 0) for i in range(1, len(records) + 1)]
    contiguous = data.draw(st.booleans())
    frame = uplink.encode(gateway, boot, first, records, compress=compress,
                          seqs=None if contiguous else seqs)
    batch = uplink.decode(frame)
    assert (batch.gateway_id, batch.boot_epoch, batch.first_seq) == (gateway, boot, first)
    assert batch.records == records
    assert batch.seqs == (list(range(first, first + len(records))) if contiguous else seqs)


@SETTINGS
@given(s.records, st.booleans(), st.data())
def test_any_flipped_bit_in_an_uplink_frame_is_detected(records, compress, data):
    frame = bytearray(uplink.encode("gw-1", 3, 100, records, compress=compress))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(UplinkFrameError):
        uplink.decode(bytes(frame))


@SETTINGS
@given(s.records, st.booleans(), st.data())
def test_any_truncation_of_an_uplink_frame_is_detected(records, compress, data):
    frame = uplink.encode("gw-1", 3, 100, records, compress=compress)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(UplinkFrameError):
        uplink.decode(frame[:cut])


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_never_mistaken_for_an_uplink_frame(blob):
    with pytest.raises(UplinkFrameError):
        uplink.decode(blob)


def at(second: int, clock: bool = True) -> str:
    """A device's ``ts``: a real clock's time, or an uptime since 1970 (no clock)."""
    base = datetime(2026, 7, 26, tzinfo=UTC) if clock else datetime(1970, 1, 1, tzinfo=UTC)
    return (base + timedelta(seconds=second)).isoformat().replace("+00:00", "Z")


@st.composite
def device_streams(draw, clock: bool):
    """What one device sends, as the tracker sees it: boots (the first may start mid-life,
    near the 2**32 wrap), each counting up with lost messages, some losing their first
    messages (a hello lost or unreadable), and repeats of recent messages of the current
    boot mixed in: the same bytes (``known``: within the decoder's window of fingerprints)
    or, with a clock, possibly beyond that window. Without a clock a device's ``ts`` starts
    again after every boot. Returns [(seq, ts, known, is_repeat, boot)]."""
    window = 64
    stream, second = [], 10
    seq = draw(st.sampled_from([0, 5, SEQ_MOD - 3, SEQ_MOD - 1]))
    for boot in range(draw(st.integers(1, 4))):
        sent = []
        if boot:
            seq = draw(st.sampled_from([0, 0, 1, 3]))  # 1, 3: the boot's first messages lost
            if not clock:
                second = 5
        for i in range(draw(st.integers(1, 40))):
            if draw(st.integers(0, 9)) == 0 and i:
                seq = (seq + draw(st.integers(1, 5))) % SEQ_MOD  # lost messages: a gap
            second += draw(st.integers(1, 30))
            ts = at(second, clock)
            stream.append((seq, ts, False, False, boot))
            sent.append((seq, ts))
            if draw(st.integers(0, 4)) == 0:
                back = draw(st.integers(1, min(len(sent), window)))
                known = draw(st.booleans()) if clock else True
                stream.append((*sent[-back], known, True, boot))
            seq = (seq + 1) % SEQ_MOD
    return stream


@SETTINGS
@given(st.booleans().flatmap(lambda clock: device_streams(clock)))
def test_sequence_tracking_drops_every_repeat_and_never_a_new_message_across_wrap_and_reboot(stream):
    tracker = SequenceTracker(replay_window=64)
    new = []
    for seq, ts, known, is_repeat, boot in stream:
        result = tracker.observe("dev", seq, ts, known)
        if is_repeat:
            assert result.verdict is Verdict.DUPLICATE, (seq, ts, known)
        else:
            assert result.is_new, (seq, ts)
            new.append((boot, seq, ts))
    assert len(new) == len(set(new)) == sum(1 for *_, r, _ in stream if not r)


def test_sequence_gaps_are_counted_and_kept():
    tracker = SequenceTracker()
    assert tracker.observe("d", 10, at(1)).verdict is Verdict.NEW
    result = tracker.observe("d", 14, at(2))
    assert (result.verdict, result.gap) == (Verdict.NEW, 3)
    # 2**32-1 is 15 behind 14 modulo 2**32, and older: a late redelivery, not news.
    assert tracker.observe("d", SEQ_MOD - 1, at(0)).verdict is Verdict.DUPLICATE


def test_sequence_wraps_at_two_to_the_32_and_a_reboot_restarts_at_zero():
    tracker = SequenceTracker()
    tracker.observe("d", SEQ_MOD - 2, at(1))
    assert tracker.observe("d", SEQ_MOD - 1, at(2)).verdict is Verdict.NEW
    assert tracker.observe("d", 0, at(3)).verdict is Verdict.NEW  # the wrap
    assert tracker.observe("d", 1, at(4)).verdict is Verdict.NEW
    assert tracker.observe("d", 0, at(3)).verdict is Verdict.DUPLICATE  # redelivered 0
    assert tracker.observe("d", 0, at(100)).verdict is Verdict.REBOOT
    assert tracker.observe("d", 0, at(100)).verdict is Verdict.DUPLICATE
    lost_start = tracker.observe("other", 900_000, at(1))
    assert lost_start.verdict is Verdict.NEW
    rebooted = tracker.observe("other", 3, at(2))  # reboot whose 0..2 were lost
    assert (rebooted.verdict, rebooted.gap) == (Verdict.REBOOT, 3)


def test_a_reboot_whose_hello_was_lost_is_known_by_its_newer_time_and_nothing_after_it_is_dropped():
    """The issue's meter: hello 0, telemetry 1-20, reboot; the new hello unreadable, its
    telemetry 1-10 100 s later. They used to be dropped as duplicates of 1-10."""
    tracker = SequenceTracker()
    for seq in range(21):
        assert tracker.observe("m", seq, at(seq * 10)).is_new
    results = [tracker.observe("m", seq, at(300 + seq * 10)) for seq in range(1, 11)]
    assert results[0].verdict is Verdict.REBOOT and results[0].gap == 1
    assert all(r.verdict is Verdict.NEW for r in results[1:])
    assert tracker.observe("m", 5, at(340)).verdict is Verdict.DUPLICATE  # a redelivery of the new boot


def test_a_device_without_a_clock_is_dropped_only_for_the_same_bytes():
    tracker = SequenceTracker()
    for seq in range(21):
        assert tracker.observe("m", seq, at(5 + seq * 10, clock=False)).is_new
    # A reboot: hello 0 with the same uptime as the first boot's, then 1..10 again.
    again = [tracker.observe("m", seq, at(5 + seq * 10, clock=False)) for seq in range(11)]
    assert all(r.is_new for r in again)
    assert tracker.observe("m", 10, at(105, clock=False), known=True).verdict is Verdict.DUPLICATE


def test_sequence_state_survives_a_restart_of_its_owner():
    tracker = SequenceTracker()
    tracker.observe("d", 0, at(1))
    tracker.observe("d", 7, at(2))
    again = SequenceTracker()
    again.restore(tracker.state())
    assert again.observe("d", 7, at(2)).verdict is Verdict.DUPLICATE
    assert again.observe("d", 0, at(1)).verdict is Verdict.DUPLICATE


@SETTINGS
@given(s.records, st.data())
def test_a_frame_of_prepacked_records_equals_one_encoded_from_the_records(records, data):
    assume(records)
    import msgpack

    gaps = data.draw(st.lists(st.integers(1, 3), min_size=len(records), max_size=len(records)))
    seqs = [10 + sum(gaps[:i]) for i in range(len(records))]
    packed = [msgpack.packb(uplink.to_wire(r), use_bin_type=True) for r in records]
    frame = uplink.encode_packed("gw", 2, seqs, packed)
    assert frame == uplink.encode("gw", 2, seqs[0], records, seqs=seqs)
    assert uplink.decode(frame).seqs == seqs


# -- the boundary rule: whatever decodes can be packed, framed, produced and inserted ---------

TOPICS = stream.Topics("dec", "raw", "ev")


def _carried_everywhere(records: list) -> None:
    """What the gateway does with records (pack them for the buffer, frame them) and what
    the server does with the frame (decode, produce, parse again in the sink)."""
    packed = [msgpack.packb(uplink.to_wire(r), use_bin_type=True) for r in records]
    if not packed:
        return
    batch = uplink.decode(uplink.encode_packed("gw-1", 1, list(range(1, len(packed) + 1)), packed))
    assert batch.records == records
    _produced_and_parsed(batch)


def _produced_and_parsed(batch: uplink.Batch) -> None:
    for message in stream.from_batch(batch, TOPICS):
        assert message.size <= stream.MAX_MESSAGE + 64 * 1024 + 4096
        if message.topic == "dec":
            rows, bad = stream.read_measurements(message.value)
            assert bad == [] and rows
        elif message.topic == "ev":
            stream.read_event(message.value)


@SETTINGS
@given(s.topics, s.payloads, s.received)
@example("iot/pm-1/hello", b'{"v":2,"device_id":"pm-1","ts":"2026-01-01T00:00:00Z","seq":1,'
         b'"msg_type":"hello","fw_version":"1","uptime_s":1e20,"broker_connections":1,'
         b'"buf_usage_pct":1}', None)
@example("tele/f2-e4fd45f654be/alarm-mode/J1/exit-buttons",
         b'{"button_pressed":true,"button_id":18446744073709551616}', None)
@example("homelab/energy/m", b'{"power_\\ud800": 1, "l\\u0000": 2, "ok": 3}', None)
@example("iot/pm-1/telemetry", b'{"v":2,"device_id":"pm-1","ts":"2026-01-01T00:00:00Z","seq":1,'
         b'"msg_type":"telemetry","measurements":[{"type":"v","val":1' + b"0" * 400 + b'}]}', None)
def test_every_record_the_dispatcher_returns_packs_frames_and_is_stored(topic, payload, received_at):
    try:
        result = DISPATCHER.decode(topic, payload, received_at)
    except CodecError:
        return
    _carried_everywhere(result.records)


@SETTINGS
@given(s.topics, s.payloads | st.binary(min_size=MAX_PAYLOAD + 1, max_size=MAX_PAYLOAD + 2))
def test_whatever_a_batch_of_messages_becomes_packs_and_a_quarantined_one_is_bounded(topic, payload):
    (outcome,) = decode_batch(DISPATCHER, msgpack.Packer(use_bin_type=True).pack,
                              [(1, topic, payload, 1_780_000_000.0)])
    entries = list(outcome.entries) + ([outcome.quarantine.entry] if outcome.quarantine else [])
    records = [uplink.from_wire(msgpack.unpackb(body, raw=False)) for _, body in entries]
    for record in records:
        if type(record) is Quarantined:
            assert len(record.payload) <= MAX_PAYLOAD
    _carried_everywhere(records)


@SETTINGS
@given(st.lists(s.wild_wire, min_size=1, max_size=5))
def test_a_frame_with_a_valid_crc_and_any_records_is_read_whole_or_refused(wire):
    try:
        frame = uplink.encode_wire("gw-1", 1, 1, wire)
    except (ValueError, TypeError, OverflowError, UplinkFrameError):
        return  # not even packable: a hostile peer cannot send it either
    try:
        batch = uplink.decode(frame)
    except UplinkFrameError as exc:
        assert exc.reason and exc.field
        return
    _produced_and_parsed(batch)


def test_a_frame_whose_record_has_the_wrong_types_is_refused_naming_the_record():
    bad = [0, 1_700_000_000_000_000, 42, None, None, None, "label", 1.0, None, b"topic-as-bytes"]
    with pytest.raises(UplinkFrameError) as info:
        uplink.decode(uplink.encode_wire("gw-1", 1, 1, [bad]))
    assert (info.value.reason, info.value.field) == ("bad_record", "records[0].device_id")


@SETTINGS
@given(st.integers(1, 3000), st.integers(1, 300))
def test_a_device_share_of_any_size_becomes_messages_below_the_limit(count, label_size):
    numbered = [(n, Measurement(datetime(2026, 1, 1, tzinfo=UTC), "dev", None, None, None,
                                "l" * min(label_size, 128), float(n), None, "t" * 500))
                for n in range(count)]
    messages = stream.measurements("gw/1", numbered, "dec", max_bytes=64 * 1024)
    assert all(m.size <= 64 * 1024 for m in messages)
    rows = [r for m in messages for r in stream.read_measurements(m.value).rows]
    assert [r[9] for r in rows] == [f"gw/1/{n}" for n in range(count)]


def test_a_sequence_jump_beyond_any_plausible_loss_is_not_counted_as_lost_messages():
    tracker = SequenceTracker()
    tracker.observe("d", 1, at(1))
    result = tracker.observe("d", 1 + 2**31 - 1, at(2))
    assert result.verdict is Verdict.JUMP and result.gap == 0
    assert tracker.observe("d", 2**31 + 1, at(3)).verdict is Verdict.NEW


@SETTINGS
@given(s.topics, s.payloads)
@example("homelab/energy/m", b'{"\\ud800x": "Infinity", "l\\u0000": "z"}')
def test_whatever_fails_to_decode_can_be_dead_lettered_with_its_reason(topic, payload):
    """The server's stream decoder dead-letters a message with the errors' reason, detail
    and field as Kafka headers: text a sender chose (a key with a lone surrogate) included."""
    try:
        errors = DISPATCHER.decode(topic, payload, datetime(2026, 1, 1, tzinfo=UTC)).errors
    except CodecError as exc:
        errors = [exc]
    for error in errors:
        message = stream.dead_letter("raw", None, payload, [("mqtt_topic", b"t")], 0, 1, error.reason,
                                     error.describe(), error.field)
        assert all(isinstance(v, bytes) for _, v in message.headers)
