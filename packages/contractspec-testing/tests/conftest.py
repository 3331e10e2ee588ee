"""Shared fixtures: backends from core (memory, SQLite file, PostgreSQL schema), the test app."""

from __future__ import annotations

from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]
