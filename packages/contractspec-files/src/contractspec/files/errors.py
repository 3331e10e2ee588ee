"""Errors of the files package, each a `ContractSpecError` with a stable `code`.

| error | code | HTTP (files routes) |
|---|---|---|
| `FileTooLargeError` | `file_too_large` | 413 |
| `MediaTypeRefusedError` | `media_type_refused` | 415 |
| `ArchiveRefusedError` | `archive_refused` | 422 |
| `AttachmentLimitError` | `attachment_limit` | 409 |
| `LegalHoldError` | `legal_hold` | 409 |
| `DownloadLinkError` | `download_link_invalid` | 403 |
"""

from __future__ import annotations

from typing import Final

from contractspec.core import ConflictError, PolicyDeniedError, SpecValidationError

__all__ = [
    "FILES_HTTP_STATUS",
    "ArchiveRefusedError",
    "AttachmentLimitError",
    "DownloadLinkError",
    "FileTooLargeError",
    "LegalHoldError",
    "MediaTypeRefusedError",
]


class FileTooLargeError(SpecValidationError):
    """The upload is larger than the slot's `max_size` (detected while streaming; nothing is kept)."""

    code = "file_too_large"


class MediaTypeRefusedError(SpecValidationError):
    """The sniffed media type is not allowed by the slot, disagrees with the declared type, or the
    content is a polyglot (an image that is also HTML)."""

    code = "media_type_refused"


class ArchiveRefusedError(SpecValidationError):
    """A zip archive exceeds the slot's declared limits (members, total size, ratio) or is corrupt."""

    code = "archive_refused"


class AttachmentLimitError(ConflictError):
    """The entity already holds `max_count` attachments in this slot."""

    code = "attachment_limit"


class LegalHoldError(ConflictError):
    """The file is under legal hold: it cannot be deleted (by a caller or by retention)."""

    code = "legal_hold"


class DownloadLinkError(PolicyDeniedError):
    """A signed download link is malformed, tampered with or expired."""

    code = "download_link_invalid"


#: HTTP status per error code used by `contractspec.files.http` (others: core's `HTTP_STATUS`).
FILES_HTTP_STATUS: Final = {
    FileTooLargeError.code: 413,
    MediaTypeRefusedError.code: 415,
    ArchiveRefusedError.code: 422,
    AttachmentLimitError.code: 409,
    LegalHoldError.code: 409,
    DownloadLinkError.code: 403,
}
