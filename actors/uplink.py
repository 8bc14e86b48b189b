"""Uplink: batches from the buffer to the central broker, deleted only when confirmed.

Publishes uplink frames (``edge.codecs.uplink``) at QoS 1 on ``edge/<gateway>/up``, each
at most ``max_frame_bytes`` of records (the buffer leases by bytes too). Up to ``window``
frames are unconfirmed at once; the server's confirmation on ``edge/<gateway>/ack`` (JSON
``{"boot_epoch", "first_seq", "count", "status": "ok"}``) makes the buffer delete exactly
those rows. A frame unconfirmed after ``confirm_timeout_s`` is sent again, and so is the
whole window after a reconnect or when a receiver announces it is (back) online: the
server stores idempotently, so a resend never doubles a record.

A frame the server refuses for good (``"status": "rejected"`` with a reason: it kept the
frame in its dead letters) is counted, logged and deleted here: resending it would only
get the same answer while holding a place in the window. Rows that cannot make a frame at
all (larger than any frame: stored by an older version) go to the buffer's dead letters.

Retained ``edge/<gateway>/status``: ``online`` on connect, ``offline`` as the Last Will;
a heartbeat (buffer depth, oldest record age, drops) every ``heartbeat_s``.
``max_records_per_s`` bounds the drain of a backlog so it does not saturate a site's link.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from edge.actors.buffer import Confirm, DeadLetter, GetStats, Leased, LeaseRequest, Rewind, Stats
from edge.actors.commands import Downlink
from edge.codecs import uplink as frames
from edge.codecs.errors import UplinkFrameError
from edge.config import UplinkConfig
from edge.io.link import Link
from edge.runtime import clock, faults, log
from edge.runtime.actor import ActorContext, EdgeActor

_log = log.get(__name__)

FRAMES_SENT = Counter("edge_uplink_frames_sent", "Frames published (first sends)")
FRAMES_RESENT = Counter("edge_uplink_frames_resent", "Frames published again (timeout or reconnect)")
RECORDS_CONFIRMED = Counter("edge_uplink_records_confirmed", "Records the server confirmed")
BAD_ACKS = Counter("edge_uplink_bad_confirmations", "Confirmations that matched no frame in the window")
REFUSED = Counter("edge_uplink_frames_refused", "Frames the server refused for good (kept in its "
                  "dead letters), deleted here", ["reason"])
CONNECTED = Gauge("edge_uplink_connected", "1 while connected to the central broker")
WINDOW = Gauge("edge_uplink_window_frames", "Frames sent and not yet confirmed")
CONFIRM_SECONDS = Histogram("edge_uplink_confirm_seconds", "From a frame's (last) send to its confirmation",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15))


@dataclass(frozen=True, slots=True)
class _Connected:
    pass


@dataclass(frozen=True, slots=True)
class _Disconnected:
    pass


@dataclass(frozen=True, slots=True)
class _Ack:
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class _ReceiverOnline:
    pass


@dataclass(slots=True)
class _InFlight:
    frame: bytes
    seqs: tuple[int, ...]
    sent_at: float


class Uplink(EdgeActor):
    receives = (_Connected, _Disconnected, Leased, _Ack, _Tick, _ReceiverOnline, Stats)

    def __init__(self, ctx: ActorContext, link: Callable[[bytes], Link], cfg: UplinkConfig,
                 gateway_id: str, buffer: str = "buffer") -> None:
        super().__init__(ctx)
        self.make_link, self.cfg, self.gateway_id, self.buffer = link, cfg, gateway_id, buffer
        self.window: OrderedDict[tuple[int, int], _InFlight] = OrderedDict()
        self.requested = False
        self.connected = False
        self.next_allowed = 0.0
        self.last_heartbeat = 0.0
        self.link: Link | None = None
        self.stop_ticker = threading.Event()

    def on_start(self) -> None:
        # Whatever an earlier instance had leased is unconfirmed: lease it all again.
        self.send(self.buffer, Rewind())
        self.link = self.make_link(self._status("offline"))
        self.link.start(self)
        threading.Thread(target=self._tick, name=f"{self.name}-ticker", daemon=True).start()

    def close(self) -> None:
        self.stop_ticker.set()
        if self.link is not None:
            self.link.stop(self._status("offline"))
            self.link = None
        CONNECTED.set(0)

    # -- LinkEvents, from the link's threads
    def link_up(self) -> None:
        self.tell_self(_Connected())

    def link_down(self) -> None:
        self.tell_self(_Disconnected())

    def confirmation(self, payload: bytes) -> None:
        self.tell_self(_Ack(payload))

    def command(self, payload: bytes) -> None:
        if self.ctx.has_peer("commands"):
            self.send("commands", Downlink(payload))

    def receiver_online(self) -> None:
        self.tell_self(_ReceiverOnline())

    def _tick(self) -> None:
        while not self.stop_ticker.wait(0.2):
            self.tell_self(_Tick())

    def _status(self, state: str, **extra: Any) -> bytes:
        return json.dumps({"gateway_id": self.gateway_id, "status": state, "ts": clock.wall(),
                           **extra}).encode()

    def handle(self, message: Any) -> Any:
        match message:
            case _Connected():
                self._on_connected()
            case _Disconnected():
                if self.connected:
                    _log.warning("uplink_disconnected", unconfirmed_frames=len(self.window))
                self.connected = False
                CONNECTED.set(0)
            case Leased(boot_epoch, seqs, bodies):
                self.requested = False
                self._send_new(boot_epoch, seqs, bodies)
                self._request()
            case _Ack(payload):
                self._confirmed(payload)
                self._request()
            case _Tick():
                self._on_tick()
            case _ReceiverOnline():
                self._resend("receiver online")
            case Stats(stats):
                self._heartbeat(stats)
        return None

    def _on_connected(self) -> None:
        assert self.link is not None
        self.connected = True
        CONNECTED.set(1)
        self.link.publish_status(self._status("online"))
        _log.info("uplink_connected", resending=len(self.window))
        self._resend("connected")
        self._request()

    def _resend(self, why: str) -> None:
        """Everything unconfirmed goes again (a receiver may have missed it)."""
        if not self.connected or self.link is None or not self.window:
            return
        now = time.monotonic()
        for entry in self.window.values():
            self.link.publish_frame(entry.frame)
            entry.sent_at = now
            FRAMES_RESENT.inc()
        _log.info("uplink_resent", frames=len(self.window), reason=why)

    def _request(self) -> None:
        if self.requested or not self.connected or len(self.window) >= self.cfg.window:
            return
        if self.cfg.max_records_per_s and time.monotonic() < self.next_allowed:
            return  # the tick asks again once the drain-rate bound allows
        self.requested = True
        self.send(self.buffer, LeaseRequest(self.cfg.batch_records, self.cfg.max_frame_bytes))

    def _send_new(self, boot_epoch: int, seqs: tuple[int, ...], bodies: tuple[bytes, ...]) -> None:
        try:
            frame = frames.encode_packed(self.gateway_id, boot_epoch, seqs, bodies, self.cfg.compress)
        except UplinkFrameError as exc:  # a row no frame can carry: never retried
            self.send(self.buffer, DeadLetter(seqs, f"unframable: {exc.describe()}"))
            return
        key = (boot_epoch, seqs[0])
        self.window[key] = _InFlight(frame, seqs, time.monotonic())
        WINDOW.set(len(self.window))
        if self.cfg.max_records_per_s:
            self.next_allowed = max(self.next_allowed, time.monotonic()) + len(seqs) / self.cfg.max_records_per_s
        if self.connected and self.link is not None:
            self.link.publish_frame(frame)
            FRAMES_SENT.inc()

    def _confirmed(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            key = (int(doc["boot_epoch"]), int(doc["first_seq"]))
            count = int(doc.get("count", -1))
            status = doc.get("status")
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            BAD_ACKS.inc()
            _log.warning("uplink_bad_confirmation", payload=payload[:200])
            return
        entry = self.window.get(key)
        if entry is None or status not in ("ok", "rejected") or count != len(entry.seqs):
            BAD_ACKS.inc()  # a late duplicate of a confirmation: nothing to do
            return
        del self.window[key]
        WINDOW.set(len(self.window))
        if status == "rejected":
            reason = str(doc.get("reason", "rejected"))[:64]
            REFUSED.labels(reason).inc()
            _log.error("uplink_frame_refused", reason=reason, detail=str(doc.get("detail", ""))[:300],
                       boot_epoch=key[0], first_seq=key[1], records=count,
                       action="deleted here: the server keeps the frame in its dead letters")
        else:
            CONFIRM_SECONDS.observe(time.monotonic() - entry.sent_at)
            RECORDS_CONFIRMED.inc(len(entry.seqs))
        faults.BEFORE_DELETE.maybe(actor=self.name, records=len(entry.seqs))  # tests only
        self.send(self.buffer, Confirm(entry.seqs))

    def _on_tick(self) -> None:
        now = time.monotonic()
        if self.connected and self.link is not None:
            for entry in self.window.values():
                if now - entry.sent_at > self.cfg.confirm_timeout_s:
                    self.link.publish_frame(entry.frame)
                    entry.sent_at = now
                    FRAMES_RESENT.inc()
            if now - self.last_heartbeat >= self.cfg.heartbeat_s:
                self.last_heartbeat = now
                # The buffer's figures come back as Stats, then the heartbeat goes out.
                self.send(self.buffer, GetStats(self.actor_ref))
        self._request()

    def _heartbeat(self, stats: dict[str, Any]) -> None:
        if not self.connected or self.link is None:
            return
        self.link.publish_status(self._status(
            "online", buffer_depth=stats.get("depth"), oldest_age_s=stats.get("oldest_age_s"),
            dropped_total=stats.get("dropped_total"), unconfirmed_frames=len(self.window)))

    def health(self) -> dict[str, Any]:
        return {"state": "running", "connected": self.connected, "window": len(self.window)}
