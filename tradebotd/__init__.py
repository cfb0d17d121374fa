"""tradebotd: a real-time trading daemon with sandboxed strategies."""

__version__ = "0.1.0"
