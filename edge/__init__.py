"""edge: an actor-based IoT edge runtime.

The import package is assembled from three folders:

- `edge/`: `app` (the one place where every actor graph is built), `cli` (arguments only),
  `config`, `errors`, and three packages by role: `edge.runtime` (actor base, graph start
  and stop, supervision, health, logs, metrics), `edge.io` (every MQTT, SQLite, Kafka and
  PostgreSQL adapter) and `edge.tools` (demo, simulate, status);
- `actors/` (`edge.actors`): one pykka actor per module;
- `codecs/` (`edge.codecs`): pure decoding and encoding, no I/O.

docs/architecture.md follows one reading through them.
"""

__version__ = "0.1.0"
