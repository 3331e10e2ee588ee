"""Fixtures of the workspace-level tests: real SQL backends (SQLite file, PostgreSQL schema)."""

from __future__ import annotations

from contractspec.core.testing.fixtures import sql_kind

__all__ = ["sql_kind"]
