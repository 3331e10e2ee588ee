"""Fixtures: a real SQLite file and the real PostgreSQL server (`sql_engine`, `sql_kind`)."""

from __future__ import annotations

from contractspec.core.testing.fixtures import sql_engine, sql_kind

__all__ = ["sql_engine", "sql_kind"]
