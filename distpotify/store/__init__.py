"""Durable state of one replica: SQLite metadata with its oplog, and chunk files."""
