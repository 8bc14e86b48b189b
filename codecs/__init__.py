"""Pure decoding and encoding (`edge.codecs`): bytes and topics in, records out, and back.

No I/O, no clock, no logging set-up in this package; a test enforces it.
"""
