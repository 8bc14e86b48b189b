"""The actor runtime: the actor base and handles, starting, supervising and stopping a graph,
health conditions, structured logs, Prometheus metrics and systemd's notify protocol.

Imports no I/O library (paho, sqlite3, kafka, psycopg): those are ``edge.io``'s.
"""
