"""Tools around the runtime: ``edge demo`` (and its terminal view), ``edge simulate`` and
``edge status``."""
