"""Safe file names and Content-Disposition headers, on hostile input (hypothesis)."""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from contractspec.files import content_disposition, safe_filename

HOSTILE = st.one_of(
    st.text(),
    st.lists(
        st.sampled_from(
            [
                "..",
                "/",
                "\\",
                "\0",
                "\r\n",
                '"',
                ";",
                "%",
                "\u202e",
                "\u200b",
                "a",
                "é",
                ".",
                "CON",
                "x.pdf",
            ]
        )
    ).map("".join),
)


@given(HOSTILE)
def test_safe_filename_never_holds_paths_quotes_or_controls(name: str) -> None:
    """Whatever the input: non-empty, no separators, quotes, control/format characters, ≤255 bytes,
    no leading dot."""
    safe = safe_filename(name)
    assert safe
    assert not any(c in safe for c in '/\\"')
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in safe)
    assert len(safe.encode("utf-8")) <= 255
    assert not safe.startswith(".")
    assert safe == safe_filename(safe)  # idempotent


@given(HOSTILE)
def test_content_disposition_is_a_single_safe_header(name: str) -> None:
    """The header is latin-1 encodable, has no CR/LF, and filename* decodes to the safe name."""
    header = content_disposition(name)
    header.encode("latin-1")
    assert "\r" not in header
    assert "\n" not in header
    fallback = header.split('filename="', 1)[1].split('"', 1)[0]
    assert all(0x20 <= ord(c) < 0x7F for c in fallback)
    assert unquote(header.split("filename*=UTF-8''", 1)[1]) == safe_filename(name)


def test_examples() -> None:
    """Path parts go, the extension stays, device names are defused."""
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert safe_filename("  ..hidden  ") == "hidden"
    assert safe_filename("evil\u202egpj.exe") == "evilgpj.exe"
    assert safe_filename("CON.txt") == "_CON.txt"
    assert safe_filename("") == "file"
    long = safe_filename("a" * 400 + ".pdf")
    assert long.endswith(".pdf")
    assert len(long.encode()) == 255
