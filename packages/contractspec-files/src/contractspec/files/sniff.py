"""Media-type sniffing, polyglot detection and zip-bomb inspection.

The media type of an upload comes from its bytes, never from the client: `sniff_media_type`
asks `puremagic` (signature database of the file(1) kind) about the first `SNIFF_BYTES` bytes.
`looks_like_html` applies the HTML patterns of the WHATWG MIME Sniffing Standard (section 7.1,
"rules for identifying an unknown MIME type") anywhere in that window, so an image that is also
an HTML/JS document (a GIF/JS polyglot) is caught even though its signature says `image/gif`.
`check_zip` reads a zip archive's central directory with `zipfile` (members are never
extracted) and refuses archives whose member count, total uncompressed size or compression ratio
exceed the slot's `ArchiveLimits`.
"""

from __future__ import annotations

import re
import zipfile
from typing import IO, Final

import puremagic

from contractspec.files.errors import ArchiveRefusedError
from contractspec.files.spec import ArchiveLimits

__all__ = ["OCTET_STREAM", "SNIFF_BYTES", "check_zip", "looks_like_html", "sniff_media_type"]

#: Bytes read from the start of an upload to sniff it (puremagic's largest offsets fit).
SNIFF_BYTES: Final = 8192
#: Media type of content no signature matches.
OCTET_STREAM: Final = "application/octet-stream"

_ZIP_MAGIC: Final = b"PK\x03\x04"
# WHATWG MIME sniffing, 7.1 step 2: HTML markers a browser acts on (here searched anywhere in
# the window, not only at the start: a polyglot hides them behind a valid image header).
_HTML_MARKERS: Final = re.compile(
    rb"<(!doctype\s+html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p"
    rb"|svg|object|embed)[\s>/]",
    re.IGNORECASE,
)
_TEXT_BYTES: Final = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0C, 0x0D}


def sniff_media_type(head: bytes) -> str:
    """The media type of content starting with `head`, from its signature.

    Args:
        head: The first bytes of the content (`SNIFF_BYTES` is enough).

    Returns:
        A lowercase media type: puremagic's best match (highest confidence); a plain zip is
        `application/zip` (puremagic guesses an Office format for any zip, so an OOXML type is
        only kept when `[Content_Types].xml` is present); HTML is `text/html`; other printable
        ASCII or UTF-8 text `text/plain`; anything else `application/octet-stream`.
    """
    if not head:
        return OCTET_STREAM
    if head.startswith(_ZIP_MAGIC) and b"[Content_Types].xml" not in head:
        return "application/zip"
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        matches = []
    if matches:
        best = max(matches, key=lambda m: m.confidence)
        if best.mime_type:
            return str(best.mime_type).lower()
    if looks_like_html(head):
        return "text/html"
    if _is_text(head):
        return "text/plain"
    return OCTET_STREAM


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # the window may cut a multi-byte character at its end
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(ord(c) >= 0x20 or ord(c) in _TEXT_BYTES for c in text)


def looks_like_html(head: bytes) -> bool:
    """Whether a browser could take the content for HTML/SVG/XML (an XSS vector if served inline).

    Args:
        head: The first bytes of the content.
    """
    return _HTML_MARKERS.search(head) is not None


def check_zip(file: IO[bytes], limits: ArchiveLimits) -> int:
    """Inspect a zip archive's members without extracting them.

    Args:
        file: A seekable binary file positioned anywhere (the archive's bytes).
        limits: The slot's `ArchiveLimits`.

    Returns:
        The total uncompressed size of the members, in bytes.

    Raises:
        ArchiveRefusedError: Not a readable zip, encrypted members, too many members, total
            uncompressed size or a compression ratio above the limits.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ArchiveRefusedError(
            f"the zip archive cannot be read ({exc}); upload a valid zip file",
            details={"field": "file"},
        ) from None
    if len(members) > limits.max_members:
        raise ArchiveRefusedError(
            f"the zip archive holds {len(members)} members; this slot accepts at most "
            f"{limits.max_members}",
            details={"field": "file", "reason": "members"},
        )
    total = 0
    compressed_total = 0
    for info in members:
        if info.flag_bits & 0x1:
            raise ArchiveRefusedError(
                f"zip member {info.filename!r} is encrypted; encrypted archives cannot be "
                "inspected and are refused",
                details={"field": "file", "reason": "encrypted"},
            )
        total += info.file_size
        compressed_total += info.compress_size
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            raise ArchiveRefusedError(
                f"zip member {info.filename!r} expands {ratio:.0f}x (limit {limits.max_ratio:g}x): "
                "refused as a possible zip bomb",
                details={"field": "file", "reason": "ratio"},
            )
        if total > limits.max_uncompressed:
            raise ArchiveRefusedError(
                f"the zip archive expands to more than {limits.max_uncompressed} bytes (limit of "
                "this slot): refused as a possible zip bomb",
                details={"field": "file", "reason": "size"},
            )
    if total / max(compressed_total, 1) > limits.max_ratio:
        raise ArchiveRefusedError(
            f"the zip archive expands {total / max(compressed_total, 1):.0f}x overall (limit "
            f"{limits.max_ratio:g}x): refused as a possible zip bomb",
            details={"field": "file", "reason": "ratio"},
        )
    return total
