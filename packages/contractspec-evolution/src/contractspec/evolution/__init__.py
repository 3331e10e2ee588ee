"""Telemetry, intent detection and reviewed spec suggestions for ContractSpec."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("contractspec-evolution")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = ["__version__"]
