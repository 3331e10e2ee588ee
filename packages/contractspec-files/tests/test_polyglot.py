"""The polyglot check: real compressed documents are accepted, real polyglots are refused.

Compressed bytes look random, and random bytes hold a one-letter HTML tag (`<a `, `<b>`, `<p/`)
in about 2 % of 8 KiB sniff windows. The check applies the WHATWG patterns only at the start of
the content, and searches anywhere only inline-rendered images, for tags of three or more letters.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from files_support import GIF_POLYGLOT, HTML, PNG, open_app
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.files import MediaTypeRefusedError, sniff_media_type
from contractspec.files.sniff import _HTML_ANYWHERE, SNIFF_BYTES, is_polyglot, looks_like_html

SEEDS = range(200)


def random_zip(seed: int) -> bytes:
    """A real deflated zip of two random (incompressible) members."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data.bin", rng.randbytes(12_000))
        archive.writestr("notes.txt", "x" * 200)
    return buf.getvalue()


def random_pdf(seed: int) -> bytes:
    """A real PDF 1.7 whose content stream is random data under `/FlateDecode`, with a correct
    cross-reference table (readable by PDF tools; built by hand so it needs no library)."""
    stream = zlib.compress(random.Random(seed).randbytes(16_000))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def random_png(seed: int, *, text: bytes | None = None) -> bytes:
    """A real 64x64 RGB PNG of random pixels (deflated IDAT), optionally with a tEXt chunk."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(64 * 3) for _ in range(64))
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
    if text is not None:
        out += _chunk(b"tEXt", b"Comment\x00" + text)
    return out + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def matplotlib_pdf(seed: int) -> bytes:
    """A PDF written by matplotlib's PDF backend: a random image in a compressed stream."""
    pytest.importorskip("matplotlib", reason="matplotlib writes the library-made PDFs")
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=72)
    fig.add_subplot().imshow(np.random.default_rng(seed).random((48, 48, 3)))
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf")
    return buf.getvalue()


def test_old_anywhere_rule_would_refuse_some_of_these_files() -> None:
    """The seeds exercise the bug: the one-letter tags occur in some of the real files' windows."""
    hits = [s for s in SEEDS if _HTML_ANYWHERE.search(random_zip(s)[:SNIFF_BYTES]) is not None] + [
        s for s in SEEDS if _HTML_ANYWHERE.search(random_pdf(s)[:SNIFF_BYTES]) is not None
    ]
    assert len(hits) >= 3


@pytest.mark.parametrize(
    ("make", "media_type"),
    [
        (random_zip, "application/zip"),
        (random_pdf, "application/pdf"),
        (random_png, "image/png"),
    ],
)
def test_real_compressed_files_are_no_polyglots(make: object, media_type: str) -> None:
    """200 seeds of real zips, deflated PDFs and PNGs: sniffed right, none refused."""
    assert callable(make)
    for seed in SEEDS:
        head = make(seed)[:SNIFF_BYTES]
        assert sniff_media_type(head) == media_type, seed
        assert not is_polyglot(head, media_type), seed


def test_matplotlib_pdfs_are_no_polyglots() -> None:
    """200 PDFs written by matplotlib (compressed image streams) are accepted."""
    for seed in SEEDS:
        head = matplotlib_pdf(seed)[:SNIFF_BYTES]
        assert sniff_media_type(head) == "application/pdf", seed
        assert not is_polyglot(head, "application/pdf"), seed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=SNIFF_BYTES))
def test_documents_are_judged_by_their_start_only(body: bytes) -> None:
    """Any bytes after a PDF or zip signature, markup included, are not a polyglot."""
    assert not is_polyglot(b"%PDF-1.7\n" + body, "application/pdf")
    assert not is_polyglot(b"PK\x03\x04" + body + b"<script>", "application/zip")


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=3000),
    st.sampled_from([b"<script>", b"<SVG onload=x>", b"<iframe/", b"<html>", b"<body\n"]),
)
def test_active_markup_anywhere_in_an_image_is_a_polyglot(filler: bytes, tag: bytes) -> None:
    """An image window holding an active-content tag anywhere is refused, whatever precedes it."""
    assert is_polyglot(PNG + filler + tag, "image/png")
    assert is_polyglot(b"GIF89a" + filler + tag, "image/gif")


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        (GIF_POLYGLOT, "image/gif"),
        (random_png(1, text=b"<script>alert(1)</script>"), "image/png"),
        (b"\xff\xd8\xff\xe0" + bytes(500) + b"<IFRAME src=x>", "image/jpeg"),
        (b"  \n<html><body>hi</body></html>", "application/octet-stream"),
        (b"\t<svg onload=alert(1)>", "image/svg+xml"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    ],
)
def test_real_polyglots_are_refused(head: bytes, media_type: str) -> None:
    """GIF/JS, PNG/HTML (a tEXt chunk), JPEG/iframe, leading HTML and SVG are polyglots."""
    assert is_polyglot(head, media_type)


def test_start_rule_follows_whatwg() -> None:
    """HTML patterns count at the start after whitespace, with a tag-ending byte after them."""
    assert looks_like_html(b" \r\n\t\x0c<!DOCTYPE html>")
    assert looks_like_html(b"<!-- x")
    assert looks_like_html(b"<p/")
    assert not looks_like_html(b"x<html>")
    assert not looks_like_html(b"<pre>")
    assert not is_polyglot(HTML, "text/html")


async def test_compressed_uploads_are_stored_and_polyglots_are_415(
    backend_kind: str, tmp_path: Path
) -> None:
    """Through the executor on each backend: seeds the old rule refused now upload; a GIF/JS
    polyglot is still refused with nothing stored."""
    refused_before = [
        s for s in SEEDS if _HTML_ANYWHERE.search(random_pdf(s)[:SNIFF_BYTES]) is not None
    ][:2]
    assert refused_before
    async with open_app(backend_kind, tmp_path) as app:
        await app.project()
        for seed in refused_before:
            out = await app.upload(random_pdf(seed), filename=f"{seed}.pdf")
            assert out.file.media_type == "application/pdf"
        zipped = await app.upload(random_zip(0), filename="a.zip")
        assert zipped.file.media_type == "application/zip"
        with pytest.raises(MediaTypeRefusedError, match="polyglot"):
            await app.upload(GIF_POLYGLOT, slot="project.images", filename="cat.gif")
        assert len(app.blobs()) == len(refused_before) + 1
