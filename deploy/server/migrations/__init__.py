"""The server's SQL migrations, shipped in the package as ``edge.migrations`` (data only).

Applied in order by ``edge server migrate``; see edge/migrate.py for the rules.
"""
