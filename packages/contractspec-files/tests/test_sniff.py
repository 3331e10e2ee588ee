"""Media-type sniffing: what the bytes say, and no false alarms on ordinary metadata."""

from __future__ import annotations

import io
import zipfile

from files_support import HTML, PDF, PE, PNG, zip_bytes

from contractspec.files import sniff_media_type
from contractspec.files.sniff import is_polyglot, looks_like_html

JPEG_XMP = (
    b"\xff\xd8\xff\xe1\x10\x00Exif\x00\x00"
    b"<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?><x:xmpmeta xmlns:x='adobe:ns:meta/'>"
    b"<rdf:RDF><!-- edited --><?xml version='1.0'?></rdf:RDF></x:xmpmeta>"
)


def test_signatures() -> None:
    """Common formats are recognised from their bytes alone."""
    assert sniff_media_type(PNG) == "image/png"
    assert sniff_media_type(PDF) == "application/pdf"
    assert sniff_media_type(PE) == "application/vnd.microsoft.portable-executable"
    assert sniff_media_type(HTML) == "text/html"
    assert sniff_media_type(b"plain words\n") == "text/plain"
    assert sniff_media_type(b"\x00\x01\x02\xff") == "application/octet-stream"
    assert sniff_media_type(b"") == "application/octet-stream"


def test_plain_zip_is_zip_and_ooxml_keeps_its_type() -> None:
    """puremagic calls every zip an Office file; a zip without [Content_Types].xml is a zip."""
    assert sniff_media_type(zip_bytes({"a.txt": b"x"})) == "application/zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    assert sniff_media_type(buf.getvalue()).startswith("application/vnd.openxmlformats")


def test_xmp_metadata_is_not_html_but_script_is() -> None:
    """XMP packets (XML, comments) in a JPEG are no polyglot; a script or svg tag is."""
    assert not looks_like_html(JPEG_XMP)
    assert not is_polyglot(JPEG_XMP, "image/jpeg")
    assert is_polyglot(b"GIF89a/*" + b"\0" * 100 + b"*/<script>alert(1)</script>", "image/gif")
    assert is_polyglot(b"\x89PNG\r\n\x1a\n<svg onload=alert(1)>", "image/png")
    assert is_polyglot(b"\xff\xd8\xff<IFRAME src=x>", "image/jpeg")
