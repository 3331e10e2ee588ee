"""Files and attachments for ContractSpec: attachment slots, sniffed media types, streaming storage (local filesystem, S3), signed downloads, crash-safe two-phase uploads."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("contractspec-files")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = ["__version__"]
