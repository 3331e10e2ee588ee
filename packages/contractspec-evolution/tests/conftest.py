"""Fixtures: backends (memory, SQLite file, PostgreSQL schema); real model calls are blocked."""

from __future__ import annotations

from contractspec.agent.testing import block_model_requests
from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]

block_model_requests()
