"""Prometheus metrics and the health endpoint.

Every actor's counters live here, labelled by actor name, so one scrape shows the whole
graph. Later actors register their own metrics in their modules with the ``edge_<name>_``
prefix on the default registry; ``serve()`` exposes all of them.

``serve()`` runs one small threaded HTTP server on a loopback port:
``/metrics`` (Prometheus text format, by ``prometheus_client``) and ``/healthz`` (JSON:
each actor's state; 200 when all are running, 503 otherwise).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, make_wsgi_app

ACTOR_MESSAGES_IN = Counter(
    "edge_actor_messages_received", "Messages an actor took from its mailbox", ["actor"]
)
ACTOR_MESSAGES_OUT = Counter("edge_actor_messages_sent", "Messages an actor sent", ["actor"])
ACTOR_UNDELIVERED = Counter(
    "edge_actor_messages_undelivered",
    "Messages that could not be handed to an actor because it was down",
    ["actor"],
)
ACTOR_ERRORS = Counter("edge_actor_errors", "Unhandled errors (crashes) of an actor", ["actor"])
ACTOR_RESTARTS = Counter("edge_actor_restarts", "Restarts of an actor by its supervisor", ["actor"])
ACTOR_UP = Gauge("edge_actor_up", "1 while the actor runs, 0 while down or restarting", ["actor"])

HealthSource = Callable[[], dict[str, Any]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Scrapes every few seconds are not events worth a log line."""


class MetricsServer:
    """The running HTTP server; ``port`` is the bound port (useful when asked for port 0)."""

    def __init__(self, host: str, port: int, health: HealthSource) -> None:
        metrics_app = make_wsgi_app(REGISTRY)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                report = health()
                status = "200 OK" if report.get("status") == "ok" else "503 Service Unavailable"
                body = json.dumps(report, default=str).encode()
                start_response(status, [("Content-Type", "application/json")])
                return [body]
            return metrics_app(environ, start_response)

        self._httpd = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(host: str, port: int, health: HealthSource) -> MetricsServer:
    """Start serving ``/metrics`` and ``/healthz`` in a daemon thread."""
    return MetricsServer(host, port, health).start()
