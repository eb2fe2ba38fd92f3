"""officerouter: a real-time WebSocket router for a virtual office, on Twisted."""

__version__ = "0.1.0"
