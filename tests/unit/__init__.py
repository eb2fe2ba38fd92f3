"""Unit tests of the sans-IO core: no sockets, no real time."""
