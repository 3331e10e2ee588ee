"""Text helpers: normalisation, tokenisation (bm25s's pattern), the S-stemmer, stopword lists."""

from __future__ import annotations

try:
    # bm25s ships no type information
    import bm25s  # type: ignore[import-untyped]
    import bm25s.stopwords as _stop  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.agent.support needs bm25s: pip install 'contractspec-agent[support]'"
    ) from exc

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Final

__all__ = ["STOPWORDS", "Stemmer", "normalize", "s_stem", "stopword_list", "tokens"]

#: bm25s's default token pattern: runs of two or more word characters.
_TOKEN: Final = re.compile(r"(?u)\b\w\w+\b")
_SPACE: Final = re.compile(r"\s+")

#: Stopword lists by ISO 639-1 code, from bm25s (which takes them from NLTK; "en" is its
#: longer "english_plus" list).
STOPWORDS: Final[Mapping[str, frozenset[str]]] = {
    "en": frozenset(_stop.STOPWORDS_EN_PLUS),
    "de": frozenset(_stop.STOPWORDS_GERMAN),
    "nl": frozenset(_stop.STOPWORDS_DUTCH),
    "fr": frozenset(_stop.STOPWORDS_FRENCH),
    "es": frozenset(_stop.STOPWORDS_SPANISH),
    "pt": frozenset(_stop.STOPWORDS_PORTUGUESE),
    "it": frozenset(_stop.STOPWORDS_ITALIAN),
    "sv": frozenset(_stop.STOPWORDS_SWEDISH),
    "da": frozenset(_stop.STOPWORDS_DANISH),
    "no": frozenset(_stop.STOPWORDS_NORWEGIAN),
}

#: A stemmer maps one lowercased word to its stem (`Stemmer.Stemmer("english").stemWord` from
#: PyStemmer fits).
Stemmer = Callable[[str], str]


def normalize(text: str) -> str:
    """NFKC-normalised, case-folded text with runs of whitespace as one space."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def s_stem(word: str) -> str:
    """Harman's S-stemmer (Harman 1991, "How effective is suffixing?"): only the first rule that
    applies: `-ies` → `-y` (not `-eies`/`-aies`), `-es` → `-e` (not `-aes`/`-ees`/`-oes`), `-s` →
    `` (not `-us`/`-ss`)."""
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")) and len(word) > 3:
        return word[:-1]
    return word


def stopword_list(stopwords: str | Iterable[str] | None) -> frozenset[str]:
    """A stopword set from a language code in `STOPWORDS`, `"english"`, words, or `None`."""
    if stopwords is None:
        return frozenset()
    if isinstance(stopwords, str):
        code = "en" if stopwords == "english" else stopwords
        if code not in STOPWORDS:
            from contractspec.agent.support.models import invalid

            raise invalid(
                "stopwords",
                "stopwords",
                f"{stopwords!r} is not a known language; use one of {sorted(STOPWORDS)}, a list "
                "of words, or None",
            )
        return STOPWORDS[code]
    return frozenset(normalize(w) for w in stopwords)


def tokens(
    text: str, *, stopwords: frozenset[str] = frozenset(), stemmer: Stemmer | None = None
) -> list[str]:
    """Normalised word tokens of `text` (bm25s's pattern), without stopwords, stemmed."""
    words = [w for w in _TOKEN.findall(normalize(text)) if w not in stopwords]
    if stemmer is None:
        return words
    return [stemmer(w) for w in words]


# bm25s is imported here so that `_text` is the one place the extra is checked.
_ = bm25s
