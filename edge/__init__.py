"""edge: an actor-based IoT edge runtime.

The import package is assembled from three folders: `edge/` (the runtime: CLI, config,
wiring, supervision, errors, metrics), `actors/` (`edge.actors`, one pykka actor per
module) and `codecs/` (`edge.codecs`, pure decoding and encoding).
"""

__version__ = "0.1.0"
