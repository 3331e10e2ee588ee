"""Text helpers shared by the guardrails and the SEO checks (private)."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Final

WORD: Final = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
_DASHES: Final = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63"), "-")
_QUOTES: Final = {0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"'}


def strip_format(text: str) -> str:
    """NFKC form without format characters (Unicode category Cf: zero-width spaces and
    joiners, soft hyphens, bidi marks), dashes and curly quotes made ASCII; line breaks kept."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return text.translate(_DASHES).translate(_QUOTES)


def normalize_text(text: str) -> str:
    """`strip_format`, then whitespace collapsed to single spaces."""
    return " ".join(strip_format(text).split())


@lru_cache(maxsize=1024)
def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive pattern of `phrase` on word boundaries; its words may be separated by
    any run of whitespace or hyphens ("risk-free" also finds "risk free" and "riskfree")."""
    words = [w for w in re.split(r"[\s-]+", normalize_text(phrase)) if w]
    body = r"[\s-]*".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)
