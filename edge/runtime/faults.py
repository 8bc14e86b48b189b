"""Fault injection for the loss tests only: the process exits (code 86) at a hop's
window, right after its durable write and before it tells the sender, with the chance
an environment variable gives. Unset in any real deployment.

| variable | where | window |
| --- | --- | --- |
| ``EDGE_FAULT_EXIT_BEFORE_ACK`` | gateway source | the buffer committed a batch; its PUBACKs not sent |
| ``EDGE_FAULT_EXIT_BEFORE_CONFIRM`` | receiver | frames stored; neither MQTT-acked nor confirmed |
| ``EDGE_FAULT_EXIT_BEFORE_DELETE`` | gateway uplink | a frame confirmed; its rows not deleted from the buffer |
| ``EDGE_FAULT_EXIT_BEFORE_COMMIT`` | Kafka consumers | a batch durable; its offsets not committed |
| ``EDGE_FAULT_EXIT_BEFORE_MARK`` | market actor | alerts in Kafka; not marked sent in PostgreSQL |
| ``EDGE_FAULT_EXIT_BEFORE_SENT`` | command actor | commands acknowledged by the broker; not marked sent |

(``EDGE_FAULT_CLOCK_FILE`` steps the system clock instead: edge/runtime/clock.py.)
"""

from __future__ import annotations

import os
import random
from typing import Any

from edge.runtime import log

EXIT_CODE = 86

_log = log.get(__name__)


class ExitAt:
    """One window: ``maybe(**context)`` exits with the configured chance."""

    def __init__(self, variable: str, window: str) -> None:
        self.window = window
        self.chance = float(os.environ.get(variable, "0") or 0)

    def maybe(self, **context: Any) -> None:
        if self.chance and random.random() < self.chance:
            _log.warning("fault_injected", fault=f"exit {self.window}", **context)
            os._exit(EXIT_CODE)


BEFORE_ACK = ExitAt("EDGE_FAULT_EXIT_BEFORE_ACK", "before PUBACK")
BEFORE_CONFIRM = ExitAt("EDGE_FAULT_EXIT_BEFORE_CONFIRM", "before the MQTT ack and the confirmation")
BEFORE_DELETE = ExitAt("EDGE_FAULT_EXIT_BEFORE_DELETE", "before the buffer deletes confirmed rows")
BEFORE_COMMIT = ExitAt("EDGE_FAULT_EXIT_BEFORE_COMMIT", "before offset commit")
BEFORE_MARK = ExitAt("EDGE_FAULT_EXIT_BEFORE_MARK", "before market alerts are marked sent")
BEFORE_SENT = ExitAt("EDGE_FAULT_EXIT_BEFORE_SENT", "before commands are marked sent")
