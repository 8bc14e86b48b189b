"""The REData API over HTTP (httpx): bounded waits, retries with capped, jittered backoff.

``prices(day)`` asks ``{base}/es/datos/mercados/precios-mercados-tiempo-real`` for one day
in Madrid time and returns the answer's bytes (``edge.codecs.redata`` reads them);
``exchanges(day, kind)`` the cross-border exchanges, ``todas-fronteras-fisicos`` or
``-programados``. What
may pass is retried: a connection refused or reset, a timeout, HTTP 429 and 5xx. What will
not pass is not: HTTP 400 (the API's ``{"errors": [...]}``, its title and detail in the
error) and any other 4xx are ``ServiceRefused``. Retries exhausted are
``ServiceUnavailable`` naming the last cause. The base URL is configurable: tests and
air-gapped sites point it at a local mirror.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import date

import httpx

from edge.errors import ServiceRefused, ServiceUnavailable

PRICES = "/es/datos/mercados/precios-mercados-tiempo-real"
EXCHANGES = {"physical": "/es/datos/intercambios/todas-fronteras-fisicos",
             "scheduled": "/es/datos/intercambios/todas-fronteras-programados"}
DEFAULT_BASE = "https://apidatos.ree.es"
MAX_BODY = 16 * 1024 * 1024  # a year of quarter hours is under 2 MiB


class REData:
    def __init__(self, base_url: str = DEFAULT_BASE, timeout_s: float = 10.0, attempts: int = 4,
                 backoff_s: float = 1.0, backoff_max_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.attempts = max(1, attempts)
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.sleep = sleep
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=True,
                                   headers={"Accept": "application/json", "User-Agent": "edge-market"})

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> REData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prices(self, day: date, time_trunc: str = "hour") -> bytes:
        """One day's prices answer, Madrid time 00:00 to 23:59."""
        params = {"start_date": f"{day:%Y-%m-%d}T00:00", "end_date": f"{day:%Y-%m-%d}T23:59",
                  "time_trunc": time_trunc}
        return self.get(PRICES, params)

    def exchanges(self, day: date, kind: str = "physical") -> bytes:
        """One day's cross-border exchanges (``physical`` or ``scheduled``), hourly."""
        params = {"start_date": f"{day:%Y-%m-%d}T00:00", "end_date": f"{day:%Y-%m-%d}T23:59",
                  "time_trunc": "hour"}
        return self.get(EXCHANGES[kind], params)

    def get(self, path: str, params: dict[str, str]) -> bytes:
        url = self.base_url + path
        cause = ""
        for attempt in range(self.attempts):
            if attempt:
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                self.sleep(delay * random.uniform(0.5, 1.0))  # jitter: a fleet does not retry in step
            try:
                response = self.client.get(url, params=params)
            except httpx.TimeoutException as exc:
                cause = f"timed out ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                cause = f"{type(exc).__name__}: {exc}"
                continue
            status = response.status_code
            if status == 200:
                if len(response.content) > MAX_BODY:
                    raise ServiceRefused("redata_too_large", f"REData answered {len(response.content)} bytes "
                                         f"for {path}, more than {MAX_BODY}")
                return response.content
            if status == 429 or status >= 500:
                cause = f"HTTP {status}"
                continue
            raise ServiceRefused(f"redata_{status}", f"REData refused {path} {params}: HTTP {status}: "
                                 f"{_error_text(response.content)}")
        raise ServiceUnavailable(f"REData at {self.base_url}: {cause} ({self.attempts} attempts)")


def _error_text(body: bytes) -> str:
    """The API's error body as one line: its title and detail, or the start of the body."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return ": ".join(str(first[k]) for k in ("title", "detail") if first.get(k)) or str(first)[:200]
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")
