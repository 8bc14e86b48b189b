"""systemd's notify protocol (sd_notify): READY, STOPPING and the watchdog.

A datagram to ``$NOTIFY_SOCKET``; without that variable (not under systemd) every call is
a no-op. The unit sets ``Type=notify`` and ``WatchdogSec``: the runtime sends
``WATCHDOG=1`` only while every actor answers a ping, so a wedged actor gets the process
restarted.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asks for, in seconds; None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000
