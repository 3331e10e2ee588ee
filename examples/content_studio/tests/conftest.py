"""Fixtures: memory, a real SQLite file and the real PostgreSQL server; real model calls are
blocked."""

from __future__ import annotations

from contractspec.agent.testing import block_model_requests
from contractspec.core.testing.fixtures import backend_kind

__all__ = ["backend_kind"]

block_model_requests()
