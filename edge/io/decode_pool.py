"""Decoder processes: ``edge.codecs.batch.decode_batch`` in other interpreters.

One Python process shares one GIL between paho's network thread, the decoder and the
buffer; on a gateway draining a backlog, paho alone can use all of it. With
``[decoder] processes = N`` (N >= 1) the decoding runs in N spawned processes that import
only the codecs; the Decoder actor keeps the sequence tracker, the counters and the ack
chain, and hands each batch over (split in N parts, results in order). The price is
memory: each process holds its own interpreter and codecs, and multiprocessing adds a
resource tracker process (one decoder process and the tracker: 33.5 MB measured).

A decoder process that dies (OOM killer) breaks the pool: the Decoder actor fails with
the error, the supervisor restarts it with a new pool, and the batch, never committed, is
redelivered by the site broker.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import msgpack

from edge.codecs import registry as registry_mod
from edge.codecs.batch import Outcome, Received, decode_batch
from edge.codecs.dispatch import Dispatcher

TIMEOUT_S = 60.0  # a batch is at most a few thousand messages: minutes mean a hung process

_dispatcher: Dispatcher | None = None
_pack = msgpack.Packer(use_bin_type=True).pack


def _start(registry_text: str, window: tuple[float, float]) -> None:
    global _dispatcher
    _dispatcher = Dispatcher.with_window(registry_mod.loads(registry_text), *window)


def _decode(messages: list[Received]) -> list[Outcome]:
    assert _dispatcher is not None, "decoder process not initialised"
    return decode_batch(_dispatcher, _pack, messages)


class DecodePool:
    def __init__(self, registry_text: str, processes: int, window: tuple[float, float] = (0, 0)) -> None:
        self.processes = processes
        # spawn, never fork: the parent runs threads (paho, actors), a forked child would
        # inherit their locks in whatever state they were.
        self.pool = ProcessPoolExecutor(max_workers=processes,
                                        mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start, initargs=(registry_text, window))
        self.pool.submit(_decode, []).result(TIMEOUT_S)  # started and initialised, or raise

    def decode(self, messages: tuple[Received, ...]) -> list[Outcome]:
        n = self.processes
        if n == 1 or len(messages) < 2 * n:
            return self.pool.submit(_decode, list(messages)).result(TIMEOUT_S)
        size = -(-len(messages) // n)
        parts = [list(messages[i:i + size]) for i in range(0, len(messages), size)]
        return [o for part in self.pool.map(_decode, parts, timeout=TIMEOUT_S) for o in part]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
