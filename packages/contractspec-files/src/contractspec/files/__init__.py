"""Files and attachments for ContractSpec: attachment slots, sniffed media types, streaming storage
(local filesystem, S3), signed downloads, crash-safe two-phase uploads.

```python
from contractspec.files import (
    Files, LocalFileStorage, MemoryFileStore, Retention, define_attachment_slot,
    register_file_operations,
)

docs = define_attachment_slot(project, "docs", media_types=["application/pdf"], max_size=10_000_000)
files = Files(storage=LocalFileStorage("var/files"), store=MemoryFileStore(), secret=SECRET,
              slots=[docs])
register_file_operations(registry, files)
```

Public API:

* spec: `define_attachment_slot`, `attachment_slot` (inside `define_entity(attachments=)`),
  `attachment_slots`, `AttachmentSlot`, `Retention`, `ArchiveLimits`;
* records: `File`, `Attachment`, `FileState`, the `FileStore` port and `MemoryFileStore`
  (`SqlFileStore` in `contractspec.files.sql`);
* storage: the `FileStorage` port, `LocalFileStorage`, `ObjectStoreStorage`, `StoredObject`;
* runtime: `Files` (`stage`, `upload`, signed links, `collect_orphans`, `apply_retention`),
  `StagedUpload`; `contractspec.files.jobs.schedule_orphan_collection` runs `collect_orphans`
  as a contractspec-jobs schedule;
* operations: `register_file_operations` (`file_operation_specs` for spec-only registries;
  `files.upload`, `files.get`, `files.attachments.list`,
  `files.delete`, `files.legal_hold.set`, `files.expire`); HTTP routes in `contractspec.files.http`;
* helpers: `safe_filename`, `content_disposition`, `sniff_media_type`;
* errors: `FileTooLargeError`, `MediaTypeRefusedError`, `ArchiveRefusedError`,
  `AttachmentLimitError`, `LegalHoldError`, `DownloadLinkError`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from contractspec.files.errors import (
    ArchiveRefusedError,
    AttachmentLimitError,
    DownloadLinkError,
    FileTooLargeError,
    LegalHoldError,
    MediaTypeRefusedError,
)
from contractspec.files.names import content_disposition, safe_filename
from contractspec.files.operations import (
    FileOperations,
    file_operation_specs,
    register_file_operations,
)
from contractspec.files.records import Attachment, File, FileState, FileStore, MemoryFileStore
from contractspec.files.service import Files, RetentionReport, StagedUpload
from contractspec.files.sniff import sniff_media_type
from contractspec.files.spec import (
    ArchiveLimits,
    AttachmentSlot,
    Retention,
    SlotDeclaration,
    attachment_slot,
    attachment_slots,
    define_attachment_slot,
)
from contractspec.files.storage import (
    FileStorage,
    LocalFileStorage,
    ObjectStoreStorage,
    StoredObject,
)

try:
    __version__ = version("contractspec-files")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "ArchiveLimits",
    "ArchiveRefusedError",
    "Attachment",
    "AttachmentLimitError",
    "AttachmentSlot",
    "DownloadLinkError",
    "File",
    "FileOperations",
    "FileState",
    "FileStorage",
    "FileStore",
    "FileTooLargeError",
    "Files",
    "LegalHoldError",
    "LocalFileStorage",
    "MediaTypeRefusedError",
    "MemoryFileStore",
    "ObjectStoreStorage",
    "Retention",
    "RetentionReport",
    "SlotDeclaration",
    "StagedUpload",
    "StoredObject",
    "__version__",
    "attachment_slot",
    "attachment_slots",
    "content_disposition",
    "define_attachment_slot",
    "file_operation_specs",
    "register_file_operations",
    "safe_filename",
    "sniff_media_type",
]
