"""Distpotify: a replicated music library and streaming service on Twisted."""

__version__ = "0.1.0"
