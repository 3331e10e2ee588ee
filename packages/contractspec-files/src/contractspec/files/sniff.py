"""Media-type sniffing, polyglot detection and zip-bomb inspection.

The media type of an upload comes from its bytes, never from the client: `sniff_media_type`
asks `puremagic` (signature database of the file(1) kind) about the first `SNIFF_BYTES` bytes.
`looks_like_html` applies the HTML patterns of the WHATWG MIME Sniffing Standard (section 7.1,
"rules for identifying an unknown MIME type") where the standard applies them: at the start of
the content, after leading whitespace. `is_polyglot` adds one narrower search for the image
types a browser renders inline (a GIF/JS or PNG/HTML polyglot hides its markup behind a valid
image header): active-content tags of three or more letters anywhere in the sniffed window.
Random or compressed bytes (a deflated PDF stream, a zip member, PNG pixel data) hold a one- or
two-letter tag such as `<a ` or `<b>` in about 2 % of 8 KiB windows, so those tags are never
searched for past the start; the longer tags occur by chance in about one window in a million.
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

__all__ = [
    "OCTET_STREAM",
    "SNIFF_BYTES",
    "check_zip",
    "is_polyglot",
    "looks_like_html",
    "sniff_media_type",
]

#: Bytes read from the start of an upload to sniff it (puremagic's largest offsets fit).
SNIFF_BYTES: Final = 8192
#: Media type of content no signature matches.
OCTET_STREAM: Final = "application/octet-stream"

_ZIP_MAGIC: Final = b"PK\x03\x04"
# WHATWG MIME sniffing 7.1: the HTML patterns (plus svg/object/embed), matched only at the start
# after the standard's whitespace bytes (HT, LF, FF, CR, SP), as a browser sniffing does.
_HTML_TAGS: Final = (
    rb"(!doctype\s+html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p|svg"
    rb"|object|embed)[\s>/]"
)
_HTML_START: Final = re.compile(rb"[\t\n\f\r ]*<(" + _HTML_TAGS + rb"|!--)", re.IGNORECASE)
# The same tags anywhere: content with no signature that holds them is sniffed as text/html.
_HTML_ANYWHERE: Final = re.compile(rb"<" + _HTML_TAGS, re.IGNORECASE)
# Active-content tags of three or more letters, searched anywhere in an inline-rendered image's
# window (one/two-letter tags match random bytes too often: `<a ` alone in ~1 % of 8 KiB).
_ACTIVE_MARKUP: Final = re.compile(
    rb"<(!doctype\s+html|html|head|body|script|iframe|frame|object|embed|svg|math|style|link"
    rb"|meta|form|base|img|video|audio|title|table|div|font)[\s>/]",
    re.IGNORECASE,
)
#: Sniffed image types a browser renders inline (SVG is markup itself: caught at its start or by
#: its `<svg` tag anywhere).
_INLINE_IMAGE_PREFIX: Final = "image/"
_TEXT_BYTES: Final = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0C, 0x0D}


def sniff_media_type(head: bytes) -> str:
    """The media type of content starting with `head`, from its signature.

    Args:
        head: The first bytes of the content (`SNIFF_BYTES` is enough).

    Returns:
        A lowercase media type: puremagic's best match (highest confidence); a plain zip is
        `application/zip` (puremagic guesses an Office format for any zip, so an OOXML type is
        only kept when `[Content_Types].xml` is present); content starting like HTML
        (`looks_like_html`), or text holding an HTML tag anywhere, is `text/html`; other
        printable ASCII or UTF-8 text `text/plain`; anything else `application/octet-stream`.
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
        return "text/html" if _HTML_ANYWHERE.search(head) else "text/plain"
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
    """Whether a browser sniffing the content would take it for HTML (WHATWG MIME Sniffing 7.1).

    The standard's HTML patterns (plus `<svg`, `<object`, `<embed`) followed by a tag-ending
    byte (whitespace, `>` or `/`), at the start of the content after HT/LF/FF/CR/SP bytes.

    Args:
        head: The first bytes of the content.
    """
    return _HTML_START.match(head) is not None


def is_polyglot(head: bytes, media_type: str) -> bool:
    """Whether non-text content of `media_type` also carries markup a browser could execute.

    Every non-text type is refused when it starts like HTML (`looks_like_html`). An image type
    (`image/*`, rendered inline by browsers, the carrier of GIF/JS and PNG/HTML polyglots) is
    also refused when an active-content tag of three or more letters (`<script`, `<iframe`,
    `<svg`, `<html`, `<body`, `<object`, `<embed`, ...) occurs anywhere in `head`. Documents and
    archives (`application/pdf`, `application/zip`, ...) are only checked at the start: their
    compressed bodies are random-looking bytes, and downloads are served with `nosniff` and
    `Content-Disposition: attachment`, so markup inside them is never rendered.

    Args:
        head: The sniffed window (the first `SNIFF_BYTES` bytes of the content).
        media_type: The media type sniffed from `head`; `text/*` is never a polyglot (its
            markup is its content, and slots decide whether they accept it).

    Returns:
        True when the upload should be refused as a polyglot.
    """
    if media_type.startswith("text/"):
        return False
    if looks_like_html(head):
        return True
    return media_type.startswith(_INLINE_IMAGE_PREFIX) and _ACTIVE_MARKUP.search(head) is not None


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
