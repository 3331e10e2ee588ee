"""Redaction of recorded traffic: spec `pii` paths plus detectors, with stable placeholders.

Redaction runs **before storage**, inside `TrafficRecorder.record`, so nothing personal or secret
ever reaches a `TrafficStore`. Three layers apply, in order:

1. **Spec paths.** Every path in `OperationSpec.pii` (`input.email`, `output.contacts.phone`;
   fields annotated with `PII` are included by core) is replaced wholesale.
2. **Secret-named keys.** Values under keys such as `password`, `api_key`, `access_token`,
   `authorization` or `client_secret` are replaced wholesale, wherever they appear.
3. **Detectors** scan every remaining string (and mapping key, and long integers) for e-mail
   addresses, bearer/basic credentials, JWTs and API keys of well-known providers, payment card
   numbers (13-19 digits, issuer digit 2-6, valid Luhn check digit) and phone numbers
   (international `+` form, North American `(415) 555-2671`, and European `0` trunk-prefix forms).

Replacements are **stable placeholders** within one snapshot: the same original value always gets
the same placeholder, so relations between fields survive (`input.email` and the e-mail quoted in
`output.message` become the same `redacted-1@example.com`). Placeholders keep the shape of what
they replace where a validator would care: e-mails stay valid e-mail addresses (RFC 2606
`example.com`), phone numbers stay phone numbers (`+1-555-01nn`, the fictional 555-01xx range) and
card numbers stay Luhn-valid 16-digit numbers in a test range (`400000000000nnnc`), so a redacted
input still validates when golden tests replay it.

Example:
    ```python
    from contractspec.testing.redaction import Redactor

    redactor = Redactor()
    clean = redactor.redact_value({"note": "mail bob@acme.io or call +44 20 7946 0958"})
    assert clean == {"note": "mail redacted-1@example.com or call +1-555-0101"}
    ```
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from attrs import define

__all__ = [
    "DEFAULT_DETECTORS",
    "SECRET_KEY_PATTERN",
    "Detector",
    "Placeholders",
    "Redactor",
    "card_detector",
    "email_detector",
    "luhn_valid",
    "phone_detector",
    "token_detector",
]


def luhn_valid(digits: str) -> bool:
    """Whether a string of decimal digits passes the Luhn (mod 10) check (ISO/IEC 7812-1, Annex B).

    Args:
        digits: Only the characters `0`-`9` (strip separators first).

    Returns:
        `True` when the check digit is valid; `False` for empty or non-digit input.
    """
    if not digits or not digits.isdigit():
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


def _luhn_complete(prefix: str) -> str:
    """`prefix` plus the check digit that makes it Luhn-valid."""
    for check in "0123456789":
        if luhn_valid(prefix + check):
            return prefix + check
    raise AssertionError("unreachable: one check digit always fits")  # pragma: no cover


@define(frozen=True, slots=True)
class Detector:
    """Finds one kind of sensitive text inside strings.

    Attributes:
        kind: Placeholder family: `email`, `phone`, `card`, `token` (or your own, which gets
            `[redacted-<kind>-n]` placeholders).
        pattern: Compiled regex; the span of `group` in each match is replaced.
        group: Regex group whose span is replaced (0: the whole match), or several group names:
            the first one that took part in the match is replaced.
        accept: Extra check of the matched text (`luhn_valid` for cards, digit counts for phones);
            `None` accepts every match.
    """

    kind: str
    pattern: re.Pattern[str]
    group: int | str | tuple[str, ...] = 0
    accept: Callable[[str], bool] | None = None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """`(start, end)` of every accepted finding in `text`, in order."""
        found: list[tuple[int, int]] = []
        group = self.group
        for match in self.pattern.finditer(text):
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


def _digits(text: str) -> str:
    return "".join(ch for ch in text if "0" <= ch <= "9")


def _card_ok(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _phone_ok(text: str) -> bool:
    return 8 <= len(_digits(text)) <= 15


#: E-mail addresses (the dot-atom form of RFC 5322 addr-spec, which is what people type).
email_detector: Final = Detector(
    "email",
    re.compile(
        r"(?<![\w.+-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
        r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])"
    ),
)

#: Bearer/Basic credentials (RFC 6750 b64token), JWTs, `key=value` secrets and API keys with
#: well-known prefixes (OpenAI `sk-`, Stripe `sk_live_`, GitHub `ghp_`, Slack `xox?-`, Stripe webhooks `whsec_`, AWS
#: `AKIA`, Google `AIza`, GitLab `glpat-`).
token_detector: Final = Detector(
    "token",
    re.compile(
        r"(?i:\b(?:bearer|basic|token)\s+)(?P<cred>[A-Za-z0-9\-._~+/]{8,}=*)"
        r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"
        r"|(?i:\b(?:api[_-]?key|apikey|secret|password|passwd|pwd|access[_-]?token|token)"
        r"[\"']?\s*[:=]\s*[\"']?)(?P<kv>[^\s\"',;&]{6,})"
        r"|(?P<key>\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{16,}|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"
        r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}|xox[abposr]-[A-Za-z0-9-]{10,}"
        r"|whsec_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20,}))"
    ),
    group=("cred", "jwt", "kv", "key"),
)

#: Payment card numbers: 13-19 digits, optionally grouped by spaces or dashes, issuer digit 2-6,
#: valid Luhn check digit.
card_detector: Final = Detector(
    "card",
    re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d])"),
    accept=_card_ok,
)

#: Phone numbers with 8-15 digits: international (`+44 20 7946 0958`), North American
#: (`(415) 555-2671`, `415.555.2671`) and trunk-prefix national forms (`06 12 34 56 78`).
phone_detector: Final = Detector(
    "phone",
    re.compile(
        r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\d])"
        r"|(?<![\w(])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\d])"
        r"|(?<![\w.-])0\d{1,4}(?:[ .-]\d{2,4}){2,5}(?![\d])"
    ),
    accept=_phone_ok,
)

#: Cheap pre-check: a string that matches none of this cannot hold a default detector finding.
_MAYBE_SENSITIVE: Final = re.compile(
    r"@|\d(?:[ ().+-]{0,3}\d){7}|(?i:bearer|basic|token|key|secret|passw|pwd)|eyJ|sk[-_]"
    r"|[rp]k_|gh[pousr]_|github_pat_|xox|whsec_|AKIA|AIza|glpat-"
)

#: Detectors used by default, in priority order (earlier kinds win overlapping findings).
DEFAULT_DETECTORS: Final[tuple[Detector, ...]] = (
    token_detector,
    email_detector,
    card_detector,
    phone_detector,
)

#: Mapping keys whose values are secrets whatever they look like.
SECRET_KEY_PATTERN: Final = re.compile(
    r"(?i)^(?:.*[_-])?(?:password|passwd|passphrase|secret|client_?secret|api_?key|apikey"
    r"|access_?key|private_?key|secret_?key|token|access_?token|refresh_?token|id_?token"
    r"|auth_?token|authorization|credentials?|cookie|session_?id|ssn|cvv|cvc|pin)$"
)


class Placeholders:
    """Stable placeholders for one snapshot: the same value always gets the same placeholder.

    Placeholders are numbered per kind in order of first appearance (`redacted-1@example.com`,
    `redacted-2@example.com`, `+1-555-0101`, `[redacted-token-1]`, `[redacted-1]`).
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
        if kind == "email":
            placeholder = f"redacted-{n}@example.com"
        elif kind == "phone":
            placeholder = f"+1-555-01{n:02d}" if n < 100 else f"+1-555-{n:07d}"
        elif kind == "card":
            placeholder = _luhn_complete(f"40000000000{n:04d}")
        elif kind == "token":
            placeholder = f"[redacted-token-{n}]"
        elif kind == "pii":
            placeholder = f"[redacted-{n}]"
        else:
            placeholder = f"[redacted-{kind}-{n}]"
        self._by_value[value] = placeholder
        return placeholder


class Redactor:
    """Replaces personal data and secrets in JSON-like values with stable placeholders.

    Args:
        detectors: Detectors run over every string (default `DEFAULT_DETECTORS`); pass `()` to
            only redact spec paths and secret-named keys.
        secret_keys: Regex of mapping keys whose values are always replaced
            (`SECRET_KEY_PATTERN`); `None` turns that layer off.
        extra_paths: More dotted paths (`input.notes`) redacted for every operation.

    All methods take a `Placeholders` so several values (input, output, error message) of one
    snapshot share their placeholders.
    """

    __slots__ = ("_prefilter", "detectors", "extra_paths", "secret_keys")

    def __init__(
        self,
        *,
        detectors: Sequence[Detector] = DEFAULT_DETECTORS,
        secret_keys: re.Pattern[str] | None = SECRET_KEY_PATTERN,
        extra_paths: Iterable[str] = (),
    ) -> None:
        self.detectors = tuple(detectors)
        # the pre-check only covers the built-in detectors; custom ones always run
        self._prefilter = all(d in DEFAULT_DETECTORS for d in self.detectors)
        self.secret_keys = secret_keys
        self.extra_paths = frozenset(extra_paths)

    # -- strings ------------------------------------------------------------------------------

    def redact_text(self, text: str, placeholders: Placeholders) -> str:
        """`text` with every detector finding replaced by its placeholder.

        Overlapping findings are resolved by position, then by detector priority, then by length.
        """
        if not self.detectors or len(text) < 6:
            return text
        if self._prefilter and _MAYBE_SENSITIVE.search(text) is None:
            return text
        findings: list[tuple[int, int, int, str]] = []
        for priority, detector in enumerate(self.detectors):
            for start, end in detector.spans(text):
                findings.append((start, priority, -end, detector.kind))
        if not findings:
            return text
        findings.sort()
        out: list[str] = []
        cursor = 0
        for start, _priority, neg_end, kind in findings:
            end = -neg_end
            if start < cursor:
                continue
            out.append(text[cursor:start])
            out.append(placeholders.get(text[start:end], kind))
            cursor = end
        out.append(text[cursor:])
        return "".join(out)

    def _whole(self, value: Any, placeholders: Placeholders) -> Any:
        """Placeholder for a value redacted wholesale (a spec path or a secret-named key)."""
        if value is None:
            return None
        if isinstance(value, Mapping):
            return {k: self._whole(v, placeholders) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._whole(v, placeholders) for v in value]
        text = value if isinstance(value, str) else str(value)
        kind = "pii"
        for detector in self.detectors:
            if detector.kind in ("email", "phone", "card") and detector.spans(text) == [
                (0, len(text))
            ]:
                kind = detector.kind
                break
        return placeholders.get(text, kind)

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
            paths: Dotted paths replaced wholesale; lists are traversed transparently, so
                `contacts.email` covers the e-mail of every contact.
            prefix: Path of `data` itself (used when recursing).

        Returns:
            A new value; `data` is not modified.
        """
        ph = placeholders if placeholders is not None else Placeholders()
        return self._walk(data, ph, paths, prefix)

    def _walk(self, data: Any, ph: Placeholders, paths: frozenset[str], prefix: str) -> Any:
        if isinstance(data, str):
            return self.redact_text(data, ph)
        if isinstance(data, Mapping):
            out: dict[Any, Any] = {}
            secret = self.secret_keys
            for key, value in data.items():
                path = f"{prefix}{key}"
                new_key = self.redact_text(key, ph) if isinstance(key, str) else key
                if path in paths or (
                    secret is not None and isinstance(key, str) and secret.match(key)
                ):
                    out[new_key] = self._whole(value, ph)
                elif isinstance(value, str):
                    out[new_key] = self.redact_text(value, ph)
                elif isinstance(value, Mapping | list | tuple):
                    out[new_key] = self._walk(value, ph, paths, path + ".")
                else:
                    out[new_key] = self._scalar(value, ph)
            return out
        if isinstance(data, list | tuple):
            return [self._walk(item, ph, paths, prefix) for item in data]
        return self._scalar(data, ph)

    def _scalar(self, value: Any, ph: Placeholders) -> Any:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 10**12 <= value < 10**19
            and _card_ok(str(value))
        ):
            return ph.get(str(value), "card")
        return value

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
            `(input, output, error)`, redacted.
        """
        ph = Placeholders()
        all_paths = pii | self.extra_paths if self.extra_paths else pii
        in_paths = frozenset(p[6:] for p in all_paths if p.startswith("input."))
        out_paths = frozenset(p[7:] for p in all_paths if p.startswith("output."))
        new_input = self._walk(input, ph, in_paths, "")
        new_output = None if output is None else self._walk(output, ph, out_paths, "")
        new_error = None if error is None else self._walk(dict(error), ph, frozenset(), "")
        return new_input, new_output, new_error
