"""Shared fixtures of the growth tests: real backends (memory, SQLite file, PostgreSQL schema)."""

from __future__ import annotations

from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]
