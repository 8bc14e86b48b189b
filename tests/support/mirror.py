"""A local REData mirror for the tests: the recorded answers of fixtures/market over HTTP.

Prices: the recorded day asked for (``days``); with ``any_day`` every other day gets the
hourly July day moved to it (a plain 24-hour day: not for the days the clocks change).
Flows (physical and scheduled): the recorded July day moved to the day asked for.
``answers`` replaces the answer for (path kind, day); ``fail`` answers 500 to that many
requests first (or to all while ``down``), ``stall_s`` waits before answering.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from edge.io.redata import EXCHANGES, PRICES

MARKET = Path(__file__).resolve().parents[2] / "fixtures" / "market"
RECORDED = "2026-07-26"
DAYS = {"2026-07-26": "prices-2026-07-26-hourly.json", "2026-03-29": "prices-2026-03-29-dst-23h.json",
        "2026-07-27": "prices-2026-07-27-quarter-hourly.json", "2026-10-25": "prices-2026-10-25-dst-25h.json"}
KINDS = {PRICES: "prices", EXCHANGES["physical"]: "physical", EXCHANGES["scheduled"]: "scheduled"}
FLOWS = {"physical": "flows-fisicos-2026-07-26.json", "scheduled": "flows-programados-2026-07-26.json"}


class Mirror(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, any_day: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.any_day = any_day
        self.fail = 0
        self.down = False
        self.stall_s = 0.0
        self.answers: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, kind: str, day: str) -> tuple[int, bytes]:
        if (kind, day) in self.answers:
            return self.answers[(kind, day)]
        if kind == "prices" and day in DAYS:
            return 200, (MARKET / DAYS[day]).read_bytes()
        if kind in FLOWS or (kind == "prices" and self.any_day and day):
            text = (MARKET / (FLOWS[kind] if kind in FLOWS else DAYS[RECORDED])).read_text(encoding="utf-8")
            return 200, text.replace(RECORDED, day).encode()
        return 400, (MARKET / "error-400.json").read_bytes()

    def serve(self) -> Mirror:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: Mirror

    def do_GET(self) -> None:  # noqa: N802 - the library's name
        url = urlparse(self.path)
        with self.server.lock:
            self.server.requests.append(self.path)
            failing = self.server.down or self.server.fail > 0
            self.server.fail -= 1 if self.server.fail > 0 else 0
        if self.server.stall_s:
            time.sleep(self.server.stall_s)
        if failing:
            return self._send(500, b"<html>Internal Server Error</html>", "text/html")
        day = parse_qs(url.query).get("start_date", [""])[0][:10]
        status, body = self.server.answer(KINDS.get(url.path, "?"), day)
        self._send(status, body)

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def prices_answer(day: str, spot: list[float], pvpc: list[float] | None = None) -> bytes:
    """A REData prices answer for Madrid day ``day`` (YYYY-MM-DD), one hourly value per
    hour of the day in order (23, 24 or 25 of them)."""
    import json
    from datetime import date, datetime, timedelta
    from zoneinfo import ZoneInfo

    madrid = ZoneInfo("Europe/Madrid")
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), madrid)
    hours = []
    at = start.astimezone(ZoneInfo("UTC"))
    while at.astimezone(madrid).date() == start.date():
        hours.append(at.astimezone(madrid))
        at += timedelta(hours=1)
    assert len(spot) == len(hours), f"{day} has {len(hours)} hours"

    def series(kind: str, sid: str, values: list[float]) -> dict:
        return {"type": kind, "id": sid, "attributes": {"title": kind, "values": [
            {"value": v, "percentage": 0.5, "datetime": t.isoformat(timespec="milliseconds")}
            for v, t in zip(values, hours, strict=True)]}}

    return json.dumps({"data": {"type": "Precios mercado peninsular en tiempo real", "id": "mer13"},
                       "included": [series("PVPC", "1001", pvpc or [v + 100 for v in spot]),
                                    series("Precio mercado spot", "600", spot)]}).encode()
