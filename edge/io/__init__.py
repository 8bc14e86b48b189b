"""Adapters to the outside: every import of paho-mqtt, sqlite3/sqlite-utils, kafka-python and
psycopg lives here (MQTT sessions, the SQLite buffer and record stores, Kafka delivery and
consumption, PostgreSQL), plus the decoder processes.

Never imports ``edge.actors``: actors call adapters, not the other way round.
"""
