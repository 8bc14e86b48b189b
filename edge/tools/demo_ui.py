"""The demo's live terminal view (rich). Optional: ``pip install 'edge-runtime[demo]'``."""

from __future__ import annotations

import time
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from edge.actors.buffer import GetStats
from edge.tools.demo import _metric, _sum, recent_latency


class RichView:
    def __init__(self, out: IO[str]) -> None:
        self.console = Console(file=out)
        self.events: list[str] = []
        self.last = (0.0, 0.0, 0.0, 0.0)
        self.rates = (0.0, 0.0, 0.0)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def event(self, elapsed: float, text: str) -> None:
        self.events.append(f"[{elapsed:5.1f}s] {text}")

    def tick(self, elapsed: float, runtime: Any, link: Any, source: Any, store: Any) -> None:
        stats = runtime.handles["buffer"].ask(GetStats(), timeout=5)
        decoded = _metric("edge_decoder_records_total")
        stored = _metric("edge_buffer_records_stored_total", priority="1") + \
            _metric("edge_buffer_records_stored_total", priority="0")
        confirmed = _metric("edge_uplink_records_confirmed_total")
        t0, d0, s0, c0 = self.last
        if elapsed - t0 >= 1.0:
            span = elapsed - t0
            self.rates = ((decoded - d0) / span, (stored - s0) / span, (confirmed - c0) / span)
            self.last = (elapsed, decoded, stored, confirmed)
        table = Table(title=f"edge demo, {elapsed:5.1f} s", expand=True)
        for column in ("stage", "rate", "state"):
            table.add_column(column)
        table.add_row("devices -> decoder", f"{self.rates[0]:,.0f} rec/s",
                      f"{len(source.accepted):,} messages accepted")
        table.add_row("buffer (SQLite)", f"{self.rates[1]:,.0f} rec/s",
                      f"{stats['depth']:,} waiting, oldest {stats['oldest_age_s']:.1f} s, "
                      f"dropped {stats['dropped_total']}")
        table.add_row("uplink -> store", f"{self.rates[2]:,.0f} rec/s",
                      "[green]up[/]" if link.up else "[red bold]DOWN[/]")
        table.add_row("quarantined", "", f"{_sum('edge_decoder_messages_quarantined_total'):.0f}")
        lat = recent_latency(source, store, time.monotonic() - 2.0)
        table.add_row("latency device -> store", "",
                      f"p50 {lat[0]:.1f} ms, p99 {lat[1]:.1f} ms (last 2 s)" if lat else "-")
        self.live.update(Group(table, Panel("\n".join(self.events[-6:]) or "-", title="events")))

    def close(self) -> None:
        self.live.stop()
        for line in self.events:
            self.console.print(line)
