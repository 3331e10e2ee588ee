"""Safe file names and `Content-Disposition` headers (RFC 6266 with RFC 5987/8187 `filename*`)."""

from __future__ import annotations

import re
import unicodedata
from typing import Final
from urllib.parse import quote

__all__ = ["content_disposition", "safe_filename"]

_MAX_BYTES: Final = 255
_FORBIDDEN: Final = re.compile(r'["\\/:*?<>|;%]')
_RESERVED_WINDOWS: Final = re.compile(r"^(con|prn|aux|nul|com[1-9]|lpt[1-9])(\.|$)", re.IGNORECASE)


def safe_filename(name: str | None, *, default: str = "file") -> str:
    """A file name that is safe to store, show and send back in a header.

    Keeps only the last path segment (both `/` and `\\` separate), normalises to NFC, drops
    control and format characters (C0/C1 controls, bidi overrides such as U+202E, zero-width
    characters), replaces quotes, path separators and `: * ? < > | ; %` with `_`, strips leading
    dots and surrounding spaces (no hidden files, no `..`), avoids Windows device names and cuts
    the result to 255 UTF-8 bytes keeping the extension.

    Args:
        name: The client's name (may be `None`, empty or hostile).
        default: Returned when nothing usable is left.

    Returns:
        A non-empty name without path separators, quotes or control characters.
    """
    if not name:
        return default
    text = unicodedata.normalize("NFC", str(name))
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    text = _FORBIDDEN.sub("_", text)
    text = text.strip().lstrip(".").strip()
    if not text:
        return default
    if _RESERVED_WINDOWS.match(text):
        text = "_" + text
    encoded = text.encode("utf-8")
    if len(encoded) > _MAX_BYTES:
        stem, dot, ext = text.rpartition(".")
        if not dot or len(ext.encode("utf-8")) > 16:
            stem, ext = text, ""
        room = _MAX_BYTES - (len(ext.encode("utf-8")) + 1 if ext else 0)
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
        text = f"{stem}.{ext}" if ext else stem
    return text or default


def content_disposition(filename: str | None, *, inline: bool = False) -> str:
    """A `Content-Disposition` header value for a download.

    `filename=` carries an ASCII fallback (non-ASCII replaced by `_`), `filename*=` the UTF-8
    name percent-encoded as RFC 5987 requires; both come from `safe_filename`, so no quote,
    CR/LF or path can reach the header.

    Args:
        filename: The stored or client name.
        inline: `inline` instead of `attachment` (only for types safe to render).

    Returns:
        e.g. `attachment; filename="r_sum_.pdf"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf`.
    """
    name = safe_filename(filename)
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F else "_" for c in name)
    disposition = "inline" if inline else "attachment"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
