"""Usage metering and entitlements for ContractSpec: meters, plans, idempotent usage events through the outbox, windowed aggregation, invoice lines, quota enforcement."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("contractspec-metering")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = ["__version__"]
