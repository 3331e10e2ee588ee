"""The built-in detectors: what counts as personal data or a secret inside a string.

Each detector finds **candidates** with a regular expression and confirms them with a validator
from a well-kept library where one exists:

* phone numbers: Google's libphonenumber metadata (`phonenumbers`), per country;
* IBANs and national identifiers: their check digits (`python-stdnum`);
* IP addresses: the standard library's `ipaddress`;
* internationalised e-mail domains: IDNA 2008 with UTS #46 mapping (`idna`);
* secrets: keyword and URL-credential rules in the spirit of detect-secrets and gitleaks.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, Final

import idna
import phonenumbers
from attrs import define
from stdnum import isbn as _isbn
from stdnum.be import nn as _be_nn
from stdnum.br import cpf as _br_cpf
from stdnum.ca import sin as _ca_sin
from stdnum.ch import ssn as _ch_ssn
from stdnum.de import idnr as _de_idnr
from stdnum.dk import cpr as _dk_cpr
from stdnum.es import dni as _es_dni
from stdnum.es import nie as _es_nie
from stdnum.fi import hetu as _fi_hetu
from stdnum.fr import nir as _fr_nir
from stdnum.gb import nhs as _gb_nhs
from stdnum.iban import is_valid as _iban_valid
from stdnum.in_ import aadhaar as _in_aadhaar
from stdnum.it import codicefiscale as _it_cf
from stdnum.nl import bsn as _nl_bsn
from stdnum.pl import pesel as _pl_pesel
from stdnum.se import personnummer as _se_pnr
from stdnum.us import ssn as _us_ssn

from contractspec.core import ConfigurationError
from contractspec.testing._keys import KeyKind, key_kind

__all__ = [
    "DEFAULT_PHONE_REGIONS",
    "Detector",
    "card_detector",
    "credential_detector",
    "email_detector",
    "iban_detector",
    "ip_detector",
    "keyword_secret_detector",
    "luhn_valid",
    "national_id_detector",
    "national_id_detectors",
    "phone_detector",
    "phone_detector_for",
    "token_detector",
]

Span = tuple[int, int]


@define(frozen=True, slots=True)
class Detector:
    """Finds one kind of sensitive text inside strings.

    Attributes:
        kind: Placeholder family: `email`, `phone`, `card`, `iban`, `ip`, `national_id`,
            `token`, `credential` (or your own, which gets `[redacted-<kind>-n]` placeholders).
        pattern: Compiled regex of **candidates**; the span of `group` in each match is replaced.
        group: Regex group whose span is replaced (0: the whole match), or several group names:
            the first one that took part in the match is replaced.
        accept: Extra check of the candidate's text (`luhn_valid` for cards); `None` accepts
            every candidate.
        refine: Check with the whole match in hand (context words before it, the key of a
            `key=value` pair): returns the `(start, end)` to replace, or `None` to reject the
            candidate. When given, `group` and `accept` are not used.
        hint: Cheap regex that every string holding a finding matches (`@` for e-mails); the
            `Redactor` skips the detector on strings without it. `None`: always run.
    """

    kind: str
    pattern: re.Pattern[str]
    group: int | str | tuple[str, ...] = 0
    accept: Callable[[str], bool] | None = None
    refine: Callable[[re.Match[str]], Span | None] | None = None
    hint: re.Pattern[str] | None = None

    def spans(self, text: str, taken: Sequence[Span] = ()) -> list[Span]:
        """`(start, end)` of every accepted finding in `text`, in order.

        Args:
            text: The string to scan.
            taken: Spans already found by other detectors: candidates inside one of them are
                not checked (their validators can be costly) and not returned.
        """
        found: list[Span] = []
        refine = self.refine
        group = self.group
        for match in self.pattern.finditer(text):
            if taken:
                m_start, m_end = match.span()
                if any(t_start <= m_start and m_end <= t_end for t_start, t_end in taken):
                    continue
            if refine is not None:
                span = refine(match)
                if span is not None and span[0] < span[1]:
                    found.append(span)
                continue
            if isinstance(group, tuple):
                start, end = next(
                    (match.span(g) for g in group if match.group(g) is not None), (-1, -1)
                )
            else:
                start, end = match.span(group)
            if start < 0 or start == end:
                continue
            if self.accept is None or self.accept(text[start:end]):
                found.append((start, end))
        return found


# -- helpers ----------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Whether a string of decimal digits passes the Luhn (mod 10) check (ISO/IEC 7812-1, Annex B).

    Args:
        digits: Only the characters `0`-`9` (strip separators first).

    Returns:
        `True` when the check digit is valid; `False` for empty or non-digit input.
    """
    if not digits or not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if "0" <= ch <= "9")


def _looks_random(text: str) -> bool:
    """A credential rather than a word: 8+ characters with a digit, a symbol or mixed case."""
    if len(text) < 8:
        return False
    if any(ch.isdigit() for ch in text) or any(ch in "+/=_-.~" for ch in text):
        return True
    return not (text.islower() or text.isupper())


def _before(match: re.Match[str], start: int, width: int) -> str:
    return match.string[max(0, start - width) : start]


# -- secrets ------------------------------------------------------------------------------------

#: Provider API keys and tokens with recognisable prefixes (after gitleaks' rules).
_PROVIDER_KEYS: Final = (
    r"sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{16,}"  # OpenAI, Anthropic
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|gl(?:pat|dt|rt|ptt|cbt|soat|ft|imt|oas)-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abposre]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{20,}"  # Slack
    r"|(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}"  # AWS
    r"|AIza[0-9A-Za-z_-]{35}|ya29\.[0-9A-Za-z_-]{20,}|GOCSPX-[A-Za-z0-9_-]{20,}"  # Google
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"  # SendGrid
    r"|key-[0-9a-f]{32}|[0-9a-f]{32}-us\d{1,2}"  # Mailgun, Mailchimp
    r"|SK[0-9a-f]{32}"  # Twilio
    r"|npm_[A-Za-z0-9]{36}|pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{20,}"  # npm, PyPI
    r"|hf_[A-Za-z0-9]{30,}|gsk_[A-Za-z0-9]{40,}|r8_[A-Za-z0-9]{30,}|pplx-[A-Za-z0-9]{40,}"
    r"|xai-[A-Za-z0-9]{40,}"  # Hugging Face, Groq, Replicate, Perplexity, xAI
    r"|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}|do[opr]_v1_[a-f0-9]{64}"  # Shopify, DigitalOcean
    r"|sq0(?:atp|csp)-[A-Za-z0-9_-]{22,}|EAAA[A-Za-z0-9_-]{60,}"  # Square
    r"|dapi[a-f0-9]{32}(?:-\d)?|lin_api_[A-Za-z0-9]{40}|PMAK-[a-f0-9]{24}-[a-f0-9]{34}"
    r"|dp\.(?:pt|st|sa|ct)\.[A-Za-z0-9]{40,}|hv[sb]\.[A-Za-z0-9_-]{24,}"  # Doppler, Vault
    r"|(?:secret|ntn)_[A-Za-z0-9]{40,}|figd_[A-Za-z0-9_-]{40}|sntry[su]_[A-Za-z0-9_=+/]{40,}"
    r"|glc_[A-Za-z0-9+/]{32,}={0,2}|glsa_[A-Za-z0-9]{32}_[a-f0-9]{8}|NRAK-[A-Z0-9]{27}"
    r"|AGE-SECRET-KEY-1[0-9A-Z]{58}|ATATT3[A-Za-z0-9_=-]{100,}"
)

#: Bearer/Basic/Token credentials (RFC 6750 b64token), JWTs, provider keys, PEM private keys and
#: Slack/Discord webhook URLs.
token_detector: Final = Detector(
    "token",
    re.compile(
        r"(?i:\b(?:bearer|basic|token|digest|negotiate|apikey)\s+)(?P<cred>[A-Za-z0-9\-._~+/]{8,}=*)"
        r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"
        rf"|(?<![A-Za-z0-9_-])(?P<key>{_PROVIDER_KEYS})(?![A-Za-z0-9_])"
        r"|(?P<pem>-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)"
        r"|https://(?:hooks\.slack\.com/(?:services|workflows|triggers)"
        r"|(?:discord(?:app)?\.com)/api/webhooks)/(?P<hook>[A-Za-z0-9/_-]{16,})"
    ),
    group=("cred", "jwt", "key", "pem", "hook"),
    accept=_looks_random,
    hint=re.compile(
        r"[A-Za-z0-9_.+/=-]{16}|(?i:bearer|basic|token|digest|negotiate|apikey)\s|-----BEGIN"
    ),
)

#: Passwords in the user information of URLs and DSNs (`postgresql://admin:hunter2@db:5432/app`).
credential_detector: Final = Detector(
    "credential",
    re.compile(
        r"(?i:\b[a-z][a-z0-9+.-]{1,30})://[^\s:/?#@\[\]\"'<>]*:(?P<pw>[^\s/?#\"'<>]+)@"
        r"(?=[^\s@/?#\"'<>]+)"
    ),
    group="pw",
    hint=re.compile(r"://[^\s/@]*:"),
)

_AUTH_SCHEMES: Final = frozenset(
    {"bearer", "basic", "digest", "token", "negotiate", "ntlm", "hoba", "mutual", "apikey"}
)


def _keyword_secret(match: re.Match[str]) -> Span | None:
    kind = key_kind(match.group("k"))
    if kind is KeyKind.AUTHORIZATION:
        value = match.group("bare") or match.group("dq") or match.group("sq") or ""
        if value.split(" ", 1)[0].lower() in _AUTH_SCHEMES:
            return None  # `Authorization: Bearer ...`: the token detector keeps the scheme
    elif kind not in (KeyKind.SECRET, KeyKind.IDENTIFIER):
        return None
    for group in ("dq", "sq", "bare"):
        if match.group(group) is not None:
            return match.span(group)
    return None  # pragma: no cover - one value group always takes part


#: `key=value` / `key: value` secrets in free text, where the key names a secret wherever the
#: secret word stands in it (`password=...`, `db_pass: ...`, `AWS_SECRET_ACCESS_KEY=...`,
#: `"client_secret": "..."`, `?access_token=...&`), as detect-secrets' keyword plugin does.
keyword_secret_detector: Final = Detector(
    "token",
    re.compile(
        r"(?<![\w.-])(?P<k>[A-Za-z_][\w.-]{0,63}?)(?:\\?[\"'])?[ \t]*(?::|=>|=|->)[ \t]*"
        r"(?:\\?\"(?P<dq>[^\"\\\n]{1,512})\\?\"|'(?P<sq>[^'\n]{1,512})'"
        r"|(?P<bare>(?:[^\s\"'\\,;&<>()\[\]{}]|&(?![\w.-]+=)){2,512}))"
    ),
    refine=_keyword_secret,
    hint=re.compile(r"[\w\"'][ \t]*(?:[:=]|->)"),
)

# -- e-mail addresses ---------------------------------------------------------------------------

_LOCAL_CHAR: Final = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f\s])"
_LABEL_CHAR: Final = r"(?:[A-Za-z0-9-]|[^\x00-\x7f\s])"


def _trim_unicode_punctuation(text: str) -> str:
    while text and unicodedata.category(text[-1])[0] in "PSZC":
        text = text[:-1]
    return text


@lru_cache(maxsize=4096)
def _idna_ok(domain: str) -> bool:
    """Whether `domain` is valid IDNA 2008 with UTS #46 mapping (cached: domains repeat)."""
    try:
        idna.encode(domain, uts46=True)
    except (idna.IDNAError, UnicodeError, ValueError):
        return False
    return True


def _email(match: re.Match[str]) -> Span | None:
    start, end = match.span()
    before = _before(match, start, 200)
    if before.endswith(":") and re.search(r"://[^\s/@]*:$", before):
        return None  # the password of a URL's user information: the credential detector's
    text = match.group()
    if text.isascii():
        return start, end
    local, _, domain = text.rpartition("@")
    while domain:
        if not _idna_ok(domain):
            trimmed = _trim_unicode_punctuation(domain)
            if trimmed == domain:
                return None
            domain = trimmed
            continue
        if "." not in domain:
            return None
        return start, start + len(local) + 1 + len(domain)
    return None


#: E-mail addresses: the dot-atom form of RFC 5322 addr-spec, with internationalised local parts
#: and domains (RFC 6531); a non-ASCII domain must be valid IDNA 2008 (UTS #46 mapping).
email_detector: Final = Detector(
    "email",
    re.compile(
        rf"(?<![A-Za-z0-9.+!#$%&'*/=?^_`{{|}}~-]){_LOCAL_CHAR}+(?:\.{_LOCAL_CHAR}+)*"
        rf"@(?:{_LABEL_CHAR}+\.)+(?:[A-Za-z]{{2,63}}(?![A-Za-z0-9-])|xn--[A-Za-z0-9-]{{1,59}}"
        r"|[^\x00-\x7f\s][^\s\x00-\x2c\x2e\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]{0,62})"
    ),
    refine=_email,
    hint=re.compile("@"),
)

# -- cards, IBANs -------------------------------------------------------------------------------


def _card_ok(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


#: Payment card numbers: 13-19 digits, optionally grouped by spaces or dashes, issuer digit 2-6,
#: valid Luhn check digit.
card_detector: Final = Detector(
    "card",
    re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w])"),
    accept=_card_ok,
    hint=re.compile(r"\d(?:[ -]?\d){12}"),
)

#: IBANs (ISO 13616): country code, check digits and the country's BBAN, compact or grouped by
#: four; checked with python-stdnum (mod 97-10 and the country's length and format).
iban_detector: Final = Detector(
    "iban",
    re.compile(
        r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
    ),
    accept=_iban_valid,
    hint=re.compile(r"[A-Z]{2}\d{2}"),
)

# -- national identifiers -----------------------------------------------------------------------

_GENERIC_ID_WORDS: Final = (
    r"national[ _-]?id|id(?:entity)?[ _-]?(?:number|no|nr|card)|personal[ _-]?(?:number|id)"
    r"|tax[ _-]?(?:id|number)|citizen"
)


def _id_refine(
    valid: Callable[[str], bool] | None, context: str | None
) -> Callable[[re.Match[str]], Span | None]:
    words = re.compile(rf"(?i)(?:{context}|{_GENERIC_ID_WORDS})") if context else None

    def refine(match: re.Match[str]) -> Span | None:
        start, end = match.span()
        if words is not None and words.search(_before(match, start, 48)) is None:
            return None
        if valid is not None and not valid(match.group()):
            return None
        return start, end

    return refine


_ID_HINT: Final = re.compile(
    r"\d(?:[ .+-]?\d){7}|[A-Z]{2} ?\d{2} ?\d{2} ?\d{2}|[A-Za-z]{6}[\dLMNP-V]{2}|[XYZxyz][ -]?\d{7}"
)


def _id(pattern: str, valid: Callable[[str], bool] | None, context: str | None = None) -> Detector:
    return Detector(
        "national_id",
        re.compile(rf"(?<![\w.+/-])(?<!\d[ .-])(?:{pattern})(?![\w])(?![ .-]\d)"),
        refine=_id_refine(valid, context),
        hint=_ID_HINT,
    )


def _spaceless(valid: Callable[[str], bool]) -> Callable[[str], bool]:
    """`valid` applied to the text without its spaces (python-stdnum's US SSN wants dashes)."""
    return lambda text: valid(text.replace(" ", ""))


def _nino(text: str) -> bool:
    return text.replace(" ", "")[:2] not in {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}


#: National identifiers, checked with python-stdnum. Distinctive forms (`536-22-1234`,
#: `12345678Z`, `RSSMRA85T10A562S`, `131052-308T`, `756.1234.5678.97`, `390.533.447-05`,
#: `85.07.30-033.28`, `AB 12 34 56 C`) need nothing else; bare digit runs need a context word
#: before them in the same string (`SSN`, `BSN`, `PESEL`, `CPR`, `personnummer`, `NHS`, ...).
national_id_detectors: Final[tuple[Detector, ...]] = (
    _id(r"\d{3}-\d{2}-\d{4}", _us_ssn.is_valid),
    _id(r"\d{3} \d{2} \d{4}|\d{9}", _spaceless(_us_ssn.is_valid), r"\bssn|social[ -]security"),
    _id(r"756[. ]?\d{4}[. ]?\d{4}[. ]?\d{2}", _ch_ssn.is_valid),
    _id(r"\d{8}[ -]?[A-Za-z]", _es_dni.is_valid),
    _id(r"[XYZxyz][ -]?\d{7}[ -]?[A-Za-z]", _es_nie.is_valid),
    _id(
        r"[A-Za-z]{6}[\dLMNP-V]{2}[A-EHLMPR-Ta-ehlmpr-t][\dLMNP-V]{2}[A-Za-z][\dLMNP-V]{3}[A-Za-z]",
        _it_cf.is_valid,
    ),
    _id(r"\d{6}[-+A-FU-Y]\d{3}[\dA-Y]", _fi_hetu.is_valid),
    _id(r"\d{2}\.\d{2}\.\d{2}-\d{3}\.\d{2}", _be_nn.is_valid),
    _id(r"\d{11}", _be_nn.is_valid, r"rijksregister|registre national|\bnn\b|insz|niss"),
    _id(r"\d{3}\.\d{3}\.\d{3}-\d{2}", _br_cpf.is_valid),
    _id(r"\d{11}", _br_cpf.is_valid, r"\bcpf"),
    _id(r"[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}", _fr_nir.is_valid),
    _id(r"\d{2} \d{3} \d{3} \d{3}", _de_idnr.is_valid),
    _id(r"\d{11}", _de_idnr.is_valid, r"steuer|idnr|tin\b"),
    _id(r"[2-9]\d{3}[ -]\d{4}[ -]\d{4}", _in_aadhaar.is_valid),
    _id(r"[2-9]\d{11}", _in_aadhaar.is_valid, r"aadhaar|\buid"),
    _id(r"\d{9}|\d{4}\.\d{2}\.\d{3}", _nl_bsn.is_valid, r"\bbsn|burgerservice|sofi"),
    _id(r"\d{11}", _pl_pesel.is_valid, r"pesel"),
    _id(r"(?:\d{2})?\d{6}[-+]?\d{4}", _se_pnr.is_valid, r"personnummer|person(?:al)? id"),
    _id(r"\d{6}-?\d{4}", _dk_cpr.is_valid, r"\bcpr"),
    _id(r"\d{3}[ -]\d{3}[ -]\d{3}|\d{9}", _ca_sin.is_valid, r"\bsin\b|social insurance"),
    _id(r"\d{3}[ -]\d{3}[ -]\d{4}|\d{10}", _gb_nhs.is_valid, r"\bnhs"),
    _id(
        r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]",  # UK National Insurance
        _nino,
    ),
)


def _combine(detectors: tuple[Detector, ...]) -> Detector:
    """One detector doing the work of several `national_id` detectors in a single regex pass.

    The candidate regex is the alternation of theirs (same boundaries); a candidate that the
    matching alternative rejects (check digits, missing context word) is offered to every other
    alternative at the same position, so the result equals running them one by one, except for
    candidates starting inside an accepted finding (which the `Redactor` merges anyway).
    """
    inner = [d.pattern.pattern for d in detectors]
    prefix = inner[0][: inner[0].index("(?:")]
    suffix = r"(?![\w])(?![ .-]\d)"
    if not all(p.startswith(prefix) and p.endswith(suffix) for p in inner):  # pragma: no cover
        raise AssertionError("national id detectors must share their boundaries")
    bodies = [p[len(prefix) : len(p) - len(suffix)] for p in inner]
    pattern = re.compile(
        prefix + "(?:" + "|".join(f"(?P<n{i}>{b})" for i, b in enumerate(bodies)) + ")" + suffix
    )

    def refine(match: re.Match[str]) -> Span | None:
        first = int((match.lastgroup or "n0")[1:])
        found = detectors[first].refine(match)  # type: ignore[misc]
        if found is not None:
            return found
        text, start = match.string, match.start()
        for index, detector in enumerate(detectors):
            if index == first:
                continue
            other = detector.pattern.match(text, start)
            if other is not None:
                found = detector.refine(other)  # type: ignore[misc]
                if found is not None:
                    return found
        return None

    return Detector("national_id", pattern, refine=refine, hint=_ID_HINT)


#: All of `national_id_detectors` in one regex pass (what `DEFAULT_DETECTORS` uses).
national_id_detector: Final = _combine(national_id_detectors)

# -- IP addresses -------------------------------------------------------------------------------


def _ip(match: re.Match[str]) -> Span | None:
    text = match.group()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified:
        return None
    return match.span()


#: IPv4 and IPv6 addresses (also inside `X-Forwarded-For`/`Forwarded` headers and URLs), checked
#: with `ipaddress`; loopback and unspecified addresses (`127.0.0.1`, `::1`, `0.0.0.0`) identify
#: nobody and are kept.
ip_detector: Final = Detector(
    "ip",
    re.compile(
        r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d|-[A-Za-z])"
        r"|(?<![\w.:%])(?=[0-9A-Fa-f:.]*[0-9A-Fa-f])(?:[0-9A-Fa-f]{0,4}:){2,7}"
        r"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?:%[A-Za-z0-9_.~-]+)?(?![\w:])"
    ),
    refine=_ip,
    hint=re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d|[0-9A-Fa-f]:[0-9A-Fa-f]{0,4}:|::[0-9A-Fa-f]"),
)

# -- phone numbers ------------------------------------------------------------------------------

#: Countries whose national formats are recognised (ISO 3166-1 alpha-2). International numbers
#: (`+44 ...`, `0044 ...`) are recognised for every country.
DEFAULT_PHONE_REGIONS: Final = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "PT", "IE", "SE", "DK", "NO",
    "FI", "PL", "JP", "CN", "IN", "BR", "MX", "AU",
)  # fmt: skip

_PHONE_CANDIDATE: Final = re.compile(
    r"(?<![\w+.\-/])(?:\+|00)?[ ]?\(?\d[\d \u00a0().\-]{5,24}\d(?![\w]|[.\-]\d)"
)
_PHONE_HINT: Final = re.compile(r"\d(?:[ ().\-\u00a0]{0,3}\d){6}")
_DATE_LIKE: Final = re.compile(
    r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d+\.\d+"
    r"|(?:\d{1,3}\.){3}\d{1,3}"  # IPv4 addresses
)
_ISBN_LIKE: Final = re.compile(r"(?:97[89]-)?\d{1,5}-\d{1,7}-\d{1,7}-[\dX]")
_MOBILE: Final = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)


@define(frozen=True, slots=True)
class _Region:
    code: str
    prefix: str | None
    lengths: frozenset[int]
    pattern: re.Pattern[str]
    #: National-number patterns of the personal number types (fixed line, mobile, VoIP, ...).
    kinds: tuple[re.Pattern[str], ...] = ()


def _regions(codes: Iterable[str]) -> tuple[_Region, ...]:
    out: list[_Region] = []
    for code in codes:
        meta = (
            phonenumbers.PhoneMetadata.metadata_for_region(code.upper())
            if isinstance(code, str)
            else None
        )
        if meta is None or meta.general_desc is None:
            raise ConfigurationError(
                f"phone_regions: unknown region {code!r}; use ISO 3166-1 alpha-2 codes "
                "such as 'GB' or 'DE'",
                details={"field": "phone_regions", "value": code},
            )
        desc: Any = meta.general_desc
        out.append(
            _Region(
                code=code.upper(),
                prefix=meta.national_prefix,
                lengths=frozenset(desc.possible_length or ()),
                pattern=re.compile(desc.national_number_pattern or r"\d+"),
                kinds=tuple(
                    re.compile(kind.national_number_pattern)
                    for kind in (
                        meta.fixed_line,
                        meta.mobile,
                        meta.voip,
                        meta.personal_number,
                        meta.pager,
                        meta.uan,
                    )
                    if kind is not None and kind.national_number_pattern
                ),
            )
        )
    return tuple(out)


def _national(text: str, digits: str, regions: tuple[_Region, ...]) -> bool:
    """A valid number of one region written the way that region writes it (trunk prefix kept)."""
    for region in regions:
        forms = [digits]
        if region.prefix and digits.startswith(region.prefix):
            forms.append(digits[len(region.prefix) :])
        if not any(
            len(n) in region.lengths
            and region.pattern.fullmatch(n)
            and any(kind.fullmatch(n) for kind in region.kinds)
            for n in forms
        ):
            continue  # cheap pre-check against the region's number types before parsing
        try:
            number = phonenumbers.parse(text, region.code)
        except phonenumbers.NumberParseException:
            continue
        if not phonenumbers.is_valid_number(number):
            continue
        national = _digits(
            phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        )
        if digits in (national, f"{number.country_code}{national.lstrip('0')}"):
            return True
        if phonenumbers.number_type(number) in _MOBILE and digits == str(number.national_number):
            return True  # mobiles written without their trunk prefix (`98765 43210` in India)
    return False


def phone_detector_for(regions: Iterable[str] = DEFAULT_PHONE_REGIONS) -> Detector:
    """A phone detector that knows the national formats of `regions` (ISO 3166-1 alpha-2).

    Candidates are runs of 7-15 digits with separators. International ones (`+`, `00`) are
    accepted when libphonenumber finds them possible for their country; national ones when they
    are a valid number of one of `regions`, written as that country writes it. Dates, decimals,
    ISBNs and bare digit runs without a trunk prefix or separator (ids, timestamps) are not phone
    numbers.

    Raises:
        ConfigurationError: An unknown region code (`details['field']` is `phone_regions`).
    """
    table = _regions(regions)

    def refine(match: re.Match[str]) -> Span | None:
        text = match.group().strip()
        start = match.start() + (len(match.group()) - len(match.group().lstrip()))
        digits = _digits(text)
        if not 7 <= len(digits) <= 15 or _DATE_LIKE.fullmatch(text):
            return None
        if re.search(r"(?i)isbn", _before(match, start, 16)) or (
            _ISBN_LIKE.fullmatch(text) and _isbn.is_valid(text)
        ):
            return None
        span = (start, start + len(text))
        if text.startswith(("+", "00")):
            try:
                number = phonenumbers.parse("+" + text.removeprefix("00").lstrip("+"), None)
            except phonenumbers.NumberParseException:
                return None
            return span if phonenumbers.is_possible_number(number) else None
        if text.isdigit() and not text.startswith("0"):
            return None  # a bare digit run: an id, an amount or a timestamp
        return span if _national(text, digits, table) else None

    return Detector("phone", _PHONE_CANDIDATE, refine=refine, hint=_PHONE_HINT)


#: Phone numbers: international (`+44 20 7946 0958`, `0033 6 12 34 56 78`) and the national
#: formats of `DEFAULT_PHONE_REGIONS` (`(415) 555-2671`, `06 12 34 56 78`, `030 12345678`,
#: `03-1234-5678`, `(11) 91234-5678`), validated with libphonenumber.
phone_detector: Final = phone_detector_for()
