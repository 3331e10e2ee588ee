"""Errors raised by contractspec-testing, all `ContractSpecError` subclasses with stable codes."""

from __future__ import annotations

from contractspec.core import ContractSpecError

__all__ = ["GoldenUpdateError", "SnapshotFormatError", "TrafficStoreError"]


class SnapshotFormatError(ContractSpecError, ValueError):
    """A stored snapshot (a JSON line, a row) is not a valid snapshot document."""

    code = "invalid_snapshot"


class TrafficStoreError(ContractSpecError, RuntimeError):
    """A traffic store could not be opened, read or written (bad URL, unreadable file, ...)."""

    code = "traffic_store_error"


class GoldenUpdateError(ContractSpecError, RuntimeError):
    """`--golden-update` could not rewrite a golden module (case not found, duplicated id, ...)."""

    code = "golden_update_error"
