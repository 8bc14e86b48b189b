"""One pykka actor per module, with its messages beside it (`edge.actors`).

Actors never start other actors: the wiring in `edge.runtime.graph` does.
"""
