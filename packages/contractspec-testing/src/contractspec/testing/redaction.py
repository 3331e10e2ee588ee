"""Redaction of recorded traffic: spec `pii` values wherever they occur, secrets, detectors.

Redaction runs **before storage**, inside `TrafficRecorder.record`, so nothing personal or secret
ever reaches a `TrafficStore`. It covers the whole record: input, output, error message and the
payloads of the events the call emitted. Four layers apply:

1. **Spec PII, everywhere.** Every value at a path of `OperationSpec.pii` (`input.email`,
   `output.contacts.phone`; fields annotated with `PII` are included by core) and of the emitted
   events' `EventSpec.pii` is replaced wholesale at its path, **and every other occurrence of it**
   in the record is replaced too: the name echoed in `output.greeting`, the address quoted in an
   error message, inside longer strings, matched case-insensitively (also JSON-escaped). Values
   shorter than `min_echo_length` (3) characters are replaced at their paths only.
2. **Secret-named keys.** Values under keys that name a secret wherever the secret word stands
   (`password`, `secret_value`, `X-Api-Key`, `aws_secret_access_key`, `passwordConfirmation`) are
   replaced; keys that only describe one (`token_type`, `expires_at`, `api_key_id`) are kept, and
   so are the non-secret members of a secret object (`{"token": {"value": ..., "expires_at": ...}}`
   keeps `expires_at`). Keys of personal identifiers (`ssn`, `national_id`, `tax_id`, `passport`)
   are replaced too. `Cookie`, `Set-Cookie` and `Authorization` headers lose only their credentials:
   `Bearer [redacted-token-1]`, `sessionid=[redacted-token-2]; theme=dark`.
3. **Detectors** scan every other string (and mapping key, and long integers): e-mail addresses
   (internationalised too), credentials in URLs and DSNs, `key=value` secrets in free text,
   bearer/basic credentials, JWTs, PEM private keys and API keys of about 40 providers, payment
   cards (Luhn), IBANs and national identifiers (python-stdnum check digits), IP addresses
   (`ipaddress`) and phone numbers (libphonenumber, international and national formats).
4. The recorder's `sanitize` hook, for anything else.

Replacements are **stable placeholders** within one snapshot: the same original value always gets
the same placeholder, so relations between fields survive (`input.email` and the e-mail quoted in
`output.message` become the same `redacted-1@example.com`). Placeholders keep the shape of what
they replace where a validator would care: e-mails stay valid e-mail addresses (RFC 2606
`example.com`), phone numbers stay phone numbers (`+1-555-01nn`, the fictional 555-01xx range),
card numbers stay Luhn-valid 16-digit numbers in a test range (`400000000000nnnc`), IBANs stay
valid IBANs (`GBkkREDA...`), IP addresses stay addresses of the documentation ranges (RFC 5737,
RFC 3849), so a redacted input still validates when golden tests replay it.

Example:
    ```python
    from contractspec.testing.redaction import Redactor

    redactor = Redactor()
    clean = redactor.redact_value({"note": "mail bob@acme.io or call +44 20 7946 0958"})
    assert clean == {"note": "mail redacted-1@example.com or call +1-555-0101"}
    ```
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import Any, Final

from attrs import define, field
from stdnum.iban import calc_check_digits

from contractspec.core import ConfigurationError
from contractspec.testing._detectors import (
    _PHONE_HINT,
    DEFAULT_PHONE_REGIONS,
    Detector,
    _card_ok,
    card_detector,
    credential_detector,
    email_detector,
    iban_detector,
    ip_detector,
    keyword_secret_detector,
    luhn_valid,
    national_id_detector,
    national_id_detectors,
    phone_detector,
    phone_detector_for,
    token_detector,
)
from contractspec.testing._keys import KeyKind, describes_secret, is_secret_key, key_kind

__all__ = [
    "DEFAULT_DETECTORS",
    "DEFAULT_PHONE_REGIONS",
    "SECRET_KEY_PATTERN",
    "Detector",
    "Placeholders",
    "RedactedCall",
    "Redactor",
    "card_detector",
    "credential_detector",
    "email_detector",
    "iban_detector",
    "ip_detector",
    "is_secret_key",
    "keyword_secret_detector",
    "luhn_valid",
    "national_id_detector",
    "national_id_detectors",
    "phone_detector",
    "phone_detector_for",
    "token_detector",
]


def _luhn_complete(prefix: str) -> str:
    """`prefix` plus the check digit that makes it Luhn-valid."""
    for check in "0123456789":
        if luhn_valid(prefix + check):
            return prefix + check
    raise AssertionError("unreachable: one check digit always fits")  # pragma: no cover


#: Detectors used by default, in priority order (earlier kinds win findings at the same place).
DEFAULT_DETECTORS: Final[tuple[Detector, ...]] = (
    token_detector,
    credential_detector,
    keyword_secret_detector,
    email_detector,
    iban_detector,
    card_detector,
    national_id_detector,
    ip_detector,
    phone_detector,
)

#: The narrower key pattern of contractspec-testing 0.1 (the secret word last, no hyphens). The
#: default is now `is_secret_key`; pass `secret_keys=SECRET_KEY_PATTERN` for the old behaviour.
SECRET_KEY_PATTERN: Final = re.compile(
    r"(?i)^(?:.*[_-])?(?:password|passwd|passphrase|secret|client_?secret|api_?key|apikey"
    r"|access_?key|private_?key|secret_?key|token|access_?token|refresh_?token|id_?token"
    r"|auth_?token|authorization|credentials?|cookie|session_?id|ssn|cvv|cvc|pin)$"
)

#: Cheap pre-check: a string that matches none of the built-in detectors' hints holds no finding.
_MAYBE_SENSITIVE: Final = re.compile(
    "|".join(
        dict.fromkeys(f"(?:{d.hint.pattern})" for d in DEFAULT_DETECTORS if d.hint is not None)
    )
)

#: Whole strings that cannot hold anything personal: ISO 8601 dates and times, UUIDs, hex digests.
_HARMLESS: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
    r"|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64}|[0-9a-f]{128}|-?\d{1,6}(?:\.\d+)?"
)

#: Strings whose detector findings a `Redactor` remembers (cleared when full), and the longest
#: string remembered.
_FOUND_CACHE_SIZE: Final = 4096
_FOUND_CACHE_MAX_LENGTH: Final = 1024

_SHAPED: Final = ("email", "card", "iban", "ip", "phone")
_HEADER_KINDS: Final = (KeyKind.COOKIE, KeyKind.SET_COOKIE, KeyKind.AUTHORIZATION)
_COOKIE_ATTRIBUTES: Final = frozenset(
    {"path", "domain", "expires", "max-age", "samesite", "secure", "httponly", "priority",
     "partitioned", "version", "comment"}
)  # fmt: skip


class Placeholders:
    """Stable placeholders for one snapshot: the same value always gets the same placeholder.

    Placeholders are numbered per kind in order of first appearance (`redacted-1@example.com`,
    `redacted-2@example.com`, `+1-555-0101`, `[redacted-token-1]`, `[redacted-1]`,
    `192.0.2.1`, `GB..REDA...`, `[redacted-id-1]`, `redacted-credential-1`).
    """

    __slots__ = ("_by_value", "_counts")

    def __init__(self) -> None:
        self._by_value: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_value)

    def originals(self) -> list[str]:
        """The original values replaced so far (for tests; never store them)."""
        return list(self._by_value)

    def get(self, value: str, kind: str) -> str:
        """The placeholder of `value`, made for `kind` the first time the value is seen."""
        existing = self._by_value.get(value)
        if existing is not None:
            return existing
        n = self._counts.get(kind, 0) + 1
        self._counts[kind] = n
        placeholder = _placeholder(kind, n, value)
        self._by_value[value] = placeholder
        return placeholder


def _placeholder(kind: str, n: int, value: str) -> str:
    if kind == "email":
        return f"redacted-{n}@example.com"
    if kind == "phone":
        return f"+1-555-01{n:02d}" if n < 100 else f"+1-555-{n:07d}"
    if kind == "card":
        return _luhn_complete(f"40000000000{n:04d}")
    if kind == "token":
        return f"[redacted-token-{n}]"
    if kind == "pii":
        return f"[redacted-{n}]"
    if kind == "ip":
        if ":" in value:
            return f"2001:db8::{n:x}"  # RFC 3849 documentation prefix
        for net, size in (("192.0.2", 254), ("198.51.100", 254), ("203.0.113", 254)):
            if n <= size:
                return f"{net}.{n}"  # RFC 5737 documentation ranges
            n -= size
        return f"[redacted-ip-{n + 3 * 254}]"
    if kind == "iban":
        bban = f"REDA{n:014d}"
        return f"GB{calc_check_digits(f'GB00{bban}')}{bban}"
    if kind == "national_id":
        return f"[redacted-id-{n}]"
    if kind == "credential":
        return f"redacted-credential-{n}"  # URL-safe: it sits in a URL's user information
    return f"[redacted-{kind}-{n}]"


@define(frozen=True, slots=True)
class RedactedCall:
    """One call's parts after redaction (`Redactor.redact_record`).

    Attributes:
        input: JSON form of the input.
        output: JSON form of the output, or `None`.
        error: `{"code", "type", "message", ...}`, or `None`.
        events: `[{"type", "version", "payload"}, ...]` of the emitted events.
        replaced: How many distinct values were replaced.
    """

    input: Any
    output: Any
    error: dict[str, Any] | None
    events: list[dict[str, Any]] = field(factory=list)
    replaced: int = 0


class _Echo:
    """The spec-PII values of one record, found again anywhere (case-insensitively)."""

    __slots__ = ("needles",)

    def __init__(self) -> None:
        #: `(lowercased text to find, original value, placeholder kind)`, longest first.
        self.needles: list[tuple[str, str, str]] = []

    def add(self, original: str, kind: str, min_length: int) -> None:
        if len(original.strip()) < min_length:
            return
        forms = {
            original,
            json.dumps(original, ensure_ascii=False)[1:-1],
            json.dumps(original)[1:-1],
        }
        known = {n[0] for n in self.needles}
        for form in forms:
            low = form.lower()
            if low not in known:
                self.needles.append((low, original, kind))
                known.add(low)
        self.needles.sort(key=lambda n: -len(n[0]))

    def spans(self, text: str) -> list[tuple[int, int, str, str]]:
        found: list[tuple[int, int, str, str]] = []
        low = text.lower()
        if len(low) != len(text):  # lowercasing changed offsets: search the text itself
            for needle, original, kind in self.needles:
                pattern = re.compile(re.escape(needle), re.IGNORECASE)
                found.extend((m.start(), m.end(), original, kind) for m in pattern.finditer(text))
            return found
        for needle, original, kind in self.needles:
            index = low.find(needle)
            while index >= 0:
                found.append((index, index + len(needle), original, kind))
                index = low.find(needle, index + len(needle))
        return found


class _State:
    """What one record's redaction shares: placeholders, PII echoes, a memo of redacted strings."""

    __slots__ = ("echo", "memo", "ph", "shapes")

    def __init__(self, ph: Placeholders) -> None:
        self.ph = ph
        self.echo: _Echo | None = None
        self.memo: dict[str, str] = {}
        self.shapes: dict[str, str] = {}


class Redactor:
    """Replaces personal data and secrets in JSON-like values with stable placeholders.

    Args:
        detectors: Detectors run over every string (default `DEFAULT_DETECTORS`); pass `()` to
            only redact spec paths and secret-named keys.
        secret_keys: Which mapping keys hold secrets: `is_secret_key` (the default, which also
            redacts personal-identifier keys and keeps the harmless parts of cookie and
            authorization headers), a regex matched against the key (`SECRET_KEY_PATTERN`), a
            predicate, or `None` to turn the key layer off.
        extra_paths: More dotted paths (`input.notes`) redacted for every operation, with their
            echoes, as spec PII paths are.
        min_echo_length: Spec-PII values shorter than this many characters are replaced at their
            paths only, not wherever they occur (a two-letter value would hit unrelated text).
        phone_regions: Countries whose national phone formats are recognised (ISO 3166-1
            alpha-2; default `DEFAULT_PHONE_REGIONS`); international numbers are always found.
            Replaces the default phone detector when given.

    All methods take a `Placeholders` so several values (input, output, error message) of one
    snapshot share their placeholders.

    Raises:
        ConfigurationError: A detector that is not a `Detector`, a `secret_keys` that is neither a
            regex, a predicate nor `None`, an extra path not starting with `input.` or `output.`,
            a `min_echo_length` below 1, or an unknown phone region; `details["field"]` names
            the argument.
    """

    __slots__ = (
        "_found",
        "_prefilter",
        "_secret_test",
        "_shape_detectors",
        "detectors",
        "extra_paths",
        "min_echo_length",
        "secret_keys",
    )

    def __init__(
        self,
        *,
        detectors: Sequence[Detector] = DEFAULT_DETECTORS,
        secret_keys: re.Pattern[str] | Callable[[str], bool] | None = is_secret_key,
        extra_paths: Iterable[str] = (),
        min_echo_length: int = 3,
        phone_regions: Iterable[str] | None = None,
    ) -> None:
        found = tuple(detectors)
        _check_config(found, secret_keys, extra_paths, min_echo_length, phone_regions)
        if phone_regions is not None:
            custom = phone_detector_for(phone_regions)
            found = tuple(custom if d is phone_detector else d for d in found)
        self.detectors = found
        builtin = {*DEFAULT_DETECTORS}
        # the pre-check only covers the built-in detectors (and phone regions); custom ones
        # always run
        self._prefilter = all(d in builtin or d.hint is _PHONE_HINT for d in found)
        self._shape_detectors = tuple(d for d in found if d.kind in _SHAPED)
        self.secret_keys = secret_keys
        if secret_keys is None or secret_keys is is_secret_key:
            self._secret_test: Callable[[str], bool] | None = None
        elif isinstance(secret_keys, re.Pattern):
            pattern = secret_keys
            self._secret_test = lambda key: pattern.match(key) is not None
        else:
            self._secret_test = secret_keys
        self.extra_paths = frozenset(extra_paths)
        self.min_echo_length = min_echo_length
        # detector findings per string, across records (keys, enum values, user agents repeat);
        # detectors are pure functions of the string, placeholders are made per record. Keyed by
        # a BLAKE2b digest, so no original text outlives the record it came from.
        self._found: dict[bytes, tuple[tuple[int, int, int, str, None], ...]] = {}

    # -- keys ---------------------------------------------------------------------------------

    def _key_kind(self, key: str) -> KeyKind:
        if self.secret_keys is None:
            return KeyKind.PLAIN
        kind = key_kind(key)
        test = self._secret_test
        if test is None:
            return kind
        if test(key):
            return kind if kind in _HEADER_KINDS else KeyKind.SECRET
        return KeyKind.IDENTIFIER if kind is KeyKind.IDENTIFIER else KeyKind.PLAIN

    # -- strings ------------------------------------------------------------------------------

    def redact_text(self, text: str, placeholders: Placeholders) -> str:
        """`text` with every detector finding replaced by its placeholder.

        Findings that overlap are merged into one replacement, so no part of either survives.
        """
        return self._text(text, _State(placeholders))

    def _text(self, text: str, st: _State) -> str:
        memo = st.memo
        done = memo.get(text)
        if done is not None:
            return done
        result = self._scan(text, st)
        memo[text] = result
        return result

    def _detect(self, text: str) -> tuple[tuple[int, int, int, str, None], ...]:
        """Detector findings in `text` as `(start, -end, priority, kind, None)`, unsorted."""
        if self._prefilter and (_HARMLESS.fullmatch(text) or _MAYBE_SENSITIVE.search(text) is None):
            return ()
        findings: list[tuple[int, int, int, str, None]] = []
        taken: list[tuple[int, int]] = []
        hinted: dict[re.Pattern[str], bool] = {}
        for priority, detector in enumerate(self.detectors):
            hint = detector.hint
            if hint is not None:
                seen = hinted.get(hint)
                if seen is None:
                    seen = hinted[hint] = hint.search(text) is not None
                if not seen:
                    continue
            # candidates inside an earlier detector's finding would be merged into it anyway
            if taken and isinstance(detector, Detector):
                spans = detector.spans(text, taken)
            else:
                spans = detector.spans(text)
            taken.extend(spans)
            findings.extend((s, -e, priority, detector.kind, None) for s, e in spans)
        return tuple(findings)

    def _scan(self, text: str, st: _State) -> str:
        findings: list[tuple[int, int, int, str, str | None]] = []
        echo = st.echo
        if echo is not None and echo.needles:
            findings.extend((s, -e, -1, kind, orig) for s, e, orig, kind in echo.spans(text))
        if self.detectors and len(text) >= 6:
            if len(text) > _FOUND_CACHE_MAX_LENGTH:  # long texts rarely repeat: not cached
                findings.extend(self._detect(text))
            else:
                digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                found = self._found.get(digest)
                if found is None:
                    found = self._detect(text)
                    if len(self._found) >= _FOUND_CACHE_SIZE:
                        self._found.clear()
                    self._found[digest] = found
                findings.extend(found)
        if not findings:
            return text
        findings.sort()
        out: list[str] = []
        cursor = 0
        group: list[Any] | None = None  # [start, end, kind, key, merged]
        ph = st.ph
        for start, neg_end, _priority, kind, key in findings:
            end = -neg_end
            if group is not None and start < group[1]:
                if end > group[1]:
                    group[1] = end
                    group[4] = True
                continue
            if group is not None:
                cursor = self._emit(text, group, out, cursor, ph)
            group = [start, end, kind, key, False]
        if group is not None:
            cursor = self._emit(text, group, out, cursor, ph)
        out.append(text[cursor:])
        return "".join(out)

    @staticmethod
    def _emit(text: str, group: list[Any], out: list[str], cursor: int, ph: Placeholders) -> int:
        start, end, kind, key, merged = group
        out.append(text[cursor:start])
        piece = text[start:end]
        out.append(ph.get(piece if merged or key is None else key, kind))
        return int(end)

    def _shape(self, text: str, st: _State) -> str:
        """The placeholder kind of a value replaced wholesale: its shape, else `pii`."""
        known = st.shapes.get(text)
        if known is not None:
            return known
        kind = "pii"
        if 5 <= len(text) <= 254:
            for detector in self._shape_detectors:
                hint = detector.hint
                if hint is not None and hint.search(text) is None:
                    continue
                if detector.spans(text) == [(0, len(text))]:
                    kind = detector.kind
                    break
        st.shapes[text] = kind
        return kind

    def _whole(self, value: Any, st: _State) -> Any:
        """Placeholder for a value redacted wholesale (a spec path or a secret-named key)."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, Mapping):
            return {k: self._whole(v, st) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._whole(v, st) for v in value]
        text = value if isinstance(value, str) else str(value)
        return st.ph.get(text, self._shape(text, st))

    # -- JSON values --------------------------------------------------------------------------

    def redact_value(
        self,
        data: Any,
        placeholders: Placeholders | None = None,
        paths: frozenset[str] = frozenset(),
        prefix: str = "",
    ) -> Any:
        """A redacted copy of JSON-like `data`.

        Args:
            data: Mappings, lists, strings, numbers, booleans and `None`.
            placeholders: Shared placeholders of the snapshot (a new set when omitted).
            paths: Dotted paths replaced wholesale, and their values wherever else they occur in
                `data`; lists are traversed transparently, so `contacts.email` covers the e-mail
                of every contact.
            prefix: Path of `data` itself (used when recursing).

        Returns:
            A new value; `data` is not modified.
        """
        st = _State(placeholders if placeholders is not None else Placeholders())
        if paths:
            self._collect(data, paths, _prefixes(paths), prefix, st)
        return self._walk(data, st, paths, prefix)

    def _collect(
        self, data: Any, paths: frozenset[str], prefixes: frozenset[str], at: str, st: _State
    ) -> None:
        """Register the values at `paths` as echoes to find everywhere else."""
        if isinstance(data, Mapping):
            for key, value in data.items():
                path = f"{at}{key}"
                if path in paths:
                    self._needles(value, st)
                elif path in prefixes:
                    self._collect(value, paths, prefixes, path + ".", st)
        elif isinstance(data, list | tuple):
            for item in data:
                self._collect(item, paths, prefixes, at, st)

    def _needles(self, value: Any, st: _State) -> None:
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, Mapping):
            for item in value.values():
                self._needles(item, st)
        elif isinstance(value, list | tuple):
            for item in value:
                self._needles(item, st)
        else:
            text = value if isinstance(value, str) else str(value)
            if len(text.strip()) >= self.min_echo_length:
                if st.echo is None:
                    st.echo = _Echo()
                st.echo.add(text, self._shape(text, st), self.min_echo_length)

    def _walk(self, data: Any, st: _State, paths: frozenset[str], prefix: str) -> Any:
        if isinstance(data, str):
            return self._text(data, st)
        if isinstance(data, Mapping):
            out: dict[Any, Any] = {}
            for key, value in data.items():
                path = f"{prefix}{key}"
                new_key = self._text(key, st) if isinstance(key, str) else key
                if path in paths:
                    out[new_key] = self._whole(value, st)
                    continue
                kind = self._key_kind(key) if isinstance(key, str) else KeyKind.PLAIN
                if kind is not KeyKind.PLAIN:
                    out[new_key] = self._keyed(kind, value, st, paths, path + ".")
                elif isinstance(value, str):
                    out[new_key] = self._text(value, st)
                elif isinstance(value, Mapping | list | tuple):
                    out[new_key] = self._walk(value, st, paths, path + ".")
                else:
                    out[new_key] = self._scalar(value, st)
            return out
        if isinstance(data, list | tuple):
            return [self._walk(item, st, paths, prefix) for item in data]
        return self._scalar(data, st)

    def _keyed(
        self, kind: KeyKind, value: Any, st: _State, paths: frozenset[str], prefix: str
    ) -> Any:
        """A value under a secret, identifier or credential-header key."""
        if kind in _HEADER_KINDS:
            if isinstance(value, str):
                return self._header(kind, value, st)
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return [self._header(kind, v, st) for v in value]
            if kind is KeyKind.COOKIE and isinstance(value, Mapping):
                return {k: self._cookie_value(str(k), v, st) for k, v in value.items()}
        if kind is KeyKind.IDENTIFIER:
            return self._whole(value, st)
        return self._secret(value, st, paths, prefix)

    def _secret(self, value: Any, st: _State, paths: frozenset[str], prefix: str) -> Any:
        """A secret value; an object keeps its members that only describe the secret."""
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(key, str) and describes_secret(key):
                    out[key] = self._walk({key: item}, st, paths, prefix)[key]
                else:
                    out[key] = self._secret(item, st, paths, f"{prefix}{key}.")
            return out
        if isinstance(value, list | tuple):
            return [self._secret(item, st, paths, prefix) for item in value]
        return self._whole(value, st)

    # -- headers ------------------------------------------------------------------------------

    def _header(self, kind: KeyKind, value: str, st: _State) -> str:
        if kind is KeyKind.AUTHORIZATION:
            scheme, sep, credentials = value.strip().partition(" ")
            if not sep or not credentials.strip():
                return str(st.ph.get(value, "token")) if value else value
            params = _AUTH_PARAMS.findall(credentials)
            if len(params) >= 2:  # `Digest username="..", response=".."`: keep realm, uri, ...
                return f"{scheme} " + _AUTH_PARAMS.sub(
                    lambda m: self._auth_param(m, st), credentials
                )
            return f"{scheme} {st.ph.get(credentials.strip(), 'token')}"
        parts = value.split(";")
        out: list[str] = []
        for index, part in enumerate(parts):
            name, eq, cookie = part.partition("=")
            label = name.strip()
            if not eq or (kind is KeyKind.SET_COOKIE and index > 0) or not cookie.strip():
                out.append(
                    self._text(part, st) if label.lower() not in _COOKIE_ATTRIBUTES else part
                )
                continue
            if kind is KeyKind.SET_COOKIE and label.lower() in _COOKIE_ATTRIBUTES:
                out.append(part)
                continue
            out.append(f"{name}={self._cookie_value(label, cookie, st)}")
        return ";".join(out)

    def _cookie_value(self, name: str, value: Any, st: _State) -> Any:
        """A cookie's value: redacted when its name is secret or it looks like an identifier."""
        if not isinstance(value, str):
            return self._whole(value, st)
        text = value.strip()
        if _credential_cookie(name, text):
            lead = value[: len(value) - len(value.lstrip())]
            return lead + st.ph.get(text, "token")
        return self._text(value, st)

    def _auth_param(self, match: re.Match[str], st: _State) -> str:
        name, value = match.group("name"), match.group("value")
        if name.lower() in _PUBLIC_AUTH_PARAMS:
            return match.group()
        quoted = value.startswith('"')
        inner = value.strip('"')
        placeholder = st.ph.get(inner, "token")
        return f"{name}={chr(34) if quoted else ''}{placeholder}{chr(34) if quoted else ''}"

    def _scalar(self, value: Any, st: _State) -> Any:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 10**12 <= value < 10**19
            and _card_ok(str(value))
        ):
            return st.ph.get(str(value), "card")
        echo = st.echo
        if echo is not None and isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
            for needle, original, kind in echo.needles:
                if needle == text:
                    return st.ph.get(original, kind)
        return value

    # -- whole calls --------------------------------------------------------------------------

    def redact_record(
        self,
        input: Any,
        output: Any = None,
        error: Mapping[str, Any] | None = None,
        *,
        events: Sequence[Mapping[str, Any]] = (),
        pii: Iterable[str] = (),
        event_pii: Mapping[str, Iterable[str]] | None = None,
    ) -> RedactedCall:
        """Redact one call's input, output, error and events with shared placeholders.

        Spec-PII values are found first (at `pii`, `extra_paths` and each event's `event_pii`
        paths), then replaced at their paths and wherever else they occur in the record.

        Args:
            input: JSON form of the input.
            output: JSON form of the output, or `None`.
            error: `{"code", "type", "message", ...}` or `None`; its message and details are
                scanned like everything else.
            events: `{"type", "version", "payload"}` of each emitted event (JSON payloads).
            pii: The operation's paths, prefixed `input.` / `output.` (`OperationSpec.pii`).
            event_pii: Payload paths of personal data per event, keyed `name@version` or `name`
                (`EventSpec.pii`).

        Returns:
            A `RedactedCall`; nothing given is modified.
        """
        st = _State(Placeholders())
        all_paths = frozenset(pii) | self.extra_paths
        in_paths = frozenset(p[6:] for p in all_paths if p.startswith("input."))
        out_paths = frozenset(p[7:] for p in all_paths if p.startswith("output."))
        ev_paths = [_event_paths(e, event_pii) for e in events]
        if in_paths:
            self._collect(input, in_paths, _prefixes(in_paths), "", st)
        if out_paths and output is not None:
            self._collect(output, out_paths, _prefixes(out_paths), "", st)
        for event, paths in zip(events, ev_paths, strict=True):
            if paths:
                self._collect(event, paths, _prefixes(paths), "", st)
        new_input = self._walk(input, st, in_paths, "")
        new_output = None if output is None else self._walk(output, st, out_paths, "")
        new_error = None if error is None else self._walk(dict(error), st, frozenset(), "")
        new_events = [
            self._walk(dict(event), st, paths, "")
            for event, paths in zip(events, ev_paths, strict=True)
        ]
        return RedactedCall(new_input, new_output, new_error, new_events, len(st.ph))

    def redact_call(
        self,
        input: Any,
        output: Any,
        error: Mapping[str, Any] | None,
        pii: frozenset[str],
    ) -> tuple[Any, Any, dict[str, Any] | None]:
        """Redact one call's input, output and error with shared placeholders.

        Args:
            input: JSON form of the input.
            output: JSON form of the output, or `None`.
            error: `{"code", "type", "message", ...}` or `None`; its message and details are
                scanned by the detectors.
            pii: The spec's paths, prefixed `input.` / `output.` (`OperationSpec.pii`).

        Returns:
            `(input, output, error)`, redacted (see `redact_record`, which also takes events).
        """
        done = self.redact_record(input, output, error, pii=pii)
        return done.input, done.output, done.error


def _check_config(
    detectors: tuple[Any, ...],
    secret_keys: object,
    extra_paths: Iterable[str],
    min_echo_length: object,
    phone_regions: Iterable[str] | str | None,
) -> None:
    """Refuse a `Redactor` configuration that would fail later or silently do nothing."""

    def refuse(field: str, message: str) -> ConfigurationError:
        return ConfigurationError(f"Redactor {field}: {message}", details={"field": field})

    for detector in detectors:
        if not isinstance(detector, Detector):
            raise refuse(
                "detectors",
                f"expected Detector instances (contractspec.testing.redaction.Detector), got "
                f"{type(detector).__name__}",
            )
    if not (secret_keys is None or isinstance(secret_keys, re.Pattern) or callable(secret_keys)):
        raise refuse(
            "secret_keys",
            f"expected a compiled regex, a predicate `key -> bool` or None, got "
            f"{type(secret_keys).__name__}",
        )
    if isinstance(extra_paths, str):
        raise refuse("extra_paths", f"expected a list of paths, got the string {extra_paths!r}")
    for path in extra_paths:
        if not isinstance(path, str) or not path.startswith(("input.", "output.")):
            raise refuse(
                "extra_paths", f"{path!r} must be a dotted path starting with input. or output."
            )
    if (
        isinstance(min_echo_length, bool)
        or not isinstance(min_echo_length, int)
        or min_echo_length < 1
    ):
        raise refuse(
            "min_echo_length", f"expected a positive number of characters, got {min_echo_length!r}"
        )
    if isinstance(phone_regions, str):
        raise refuse(
            "phone_regions", f"expected a list of region codes (['GB']), got {phone_regions!r}"
        )


_AUTH_PARAMS: Final = re.compile(r"(?P<name>[A-Za-z][\w-]*)=(?P<value>\"[^\"]*\"|[^\s,]+)")
_PUBLIC_AUTH_PARAMS: Final = frozenset(
    {"realm", "uri", "algorithm", "qop", "nc", "charset", "userhash", "signedheaders", "scope",
     "error", "error_description", "domain", "stale"}
)  # fmt: skip


def _credential_cookie(name: str, value: str) -> bool:
    """Whether a cookie holds a credential or an identifier (kept: `theme=dark`, `lang=en`)."""
    if not value:
        return False
    if is_secret_key(name) or re.search(r"(?i)sess|sid|auth|login|remember|user|token|jwt", name):
        return True
    has_digit = any(ch.isdigit() for ch in value)
    return len(value) >= 20 or (len(value) >= 8 and has_digit)


def _prefixes(paths: frozenset[str]) -> frozenset[str]:
    """Every proper prefix of the dotted paths (`a.b.c` -> `a`, `a.b`)."""
    out: set[str] = set()
    for path in paths:
        parts = path.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(out)


def _event_paths(
    event: Mapping[str, Any], event_pii: Mapping[str, Iterable[str]] | None
) -> frozenset[str]:
    if not event_pii:
        return frozenset()
    name = str(event.get("type", ""))
    version = event.get("version")
    found = event_pii.get(f"{name}@{version}")
    if found is None:
        found = event_pii.get(name, ())
    return frozenset(f"payload.{p}" for p in found)
