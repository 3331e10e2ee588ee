"""Guardrails: brand voice, banned claims, disclaimers and channel limits as invariants.

The rules are `contractspec.agent.Invariant`s (the same declared comparisons the tool gateway
proves for tool calls), evaluated in code over the structured draft plus evidence computed from
its text, never left to the prompt alone:

| invariant | expression | evidence |
|---|---|---|
| `no_banned_claims` | `banned_claims_found == 0` | brief's banned claims found (word boundaries, any case) |
| `required_disclaimers` | `missing_disclaimers == 0` | required disclaimers absent from the draft (from any social post: each goes out alone) |
| `brand_forbidden_words` | `off_brand_words == 0` | the voice's forbidden words found |
| `brand_exclamations` | `exclamations <= <max>` | `!` in all fields |
| `brand_sentence_length` | `longest_sentence_words <= <max>` | words in the longest sentence |
| `brand_no_shouting` | `shouting_words <= <max>` | ALL-CAPS words of 4+ letters not in `allowed_caps` |
| `channel_limits` | `channel_violations == 0` | posts over their platform's limit, unknown platforms, long email subjects, blog length |

Text is compared after Unicode NFKC normalisation with format characters (zero-width spaces,
soft hyphens, bidi marks) removed, dashes made ASCII and whitespace collapsed; the words of a
phrase may be separated by any run of whitespace or hyphens. So "G\u200buaranteed  RESULTS"
still matches the banned claim "guaranteed results", and "risk\u2011free" or "risk free" match
"risk-free", while banning "cure" does not ban "secure". Look-alike letters from other scripts
(a Cyrillic a, U+0430, for a Latin a) are not folded: list such spellings as claims of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from attrs import define, field

from contractspec.agent.content._text import WORD, normalize_text, phrase_pattern, strip_format
from contractspec.agent.content.brief import ContentBrief
from contractspec.agent.content.drafts import BlogPost, Draft, EmailMessage, SocialPosts, plain_text
from contractspec.agent.invariants import Invariant, InvariantResult

__all__ = [
    "GuardrailReport",
    "check_guardrails",
    "guardrail_evidence",
    "guardrail_invariants",
    "normalize_text",
]

_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n")


def _find(phrases: list[str], parts: Mapping[str, str]) -> list[dict[str, str]]:
    found = []
    for phrase in phrases:
        pattern = phrase_pattern(phrase)
        for where, text in parts.items():
            if pattern.search(text):
                found.append({"phrase": phrase, "field": where})
    return found


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(plain_text(text)) if s.strip()]


def _channel_violations(draft: Draft, brief: ContentBrief) -> list[str]:
    limits = brief.channels
    out: list[str] = []
    if isinstance(draft, SocialPosts):
        for i, post in enumerate(draft.posts):
            limit = limits.social_max_chars.get(post.platform)
            if limit is None:
                out.append(
                    f"posts.{i}: platform {post.platform!r} has no limit in the brief's channels "
                    f"(known: {', '.join(sorted(limits.social_max_chars))})"
                )
            elif len(post.rendered()) > limit:
                out.append(
                    f"posts.{i}: {len(post.rendered())} characters on {post.platform} "
                    f"(limit {limit})"
                )
    elif isinstance(draft, EmailMessage):
        if len(normalize_text(draft.subject)) > limits.email_subject_max_chars:
            out.append(
                f"subject: {len(normalize_text(draft.subject))} characters (limit "
                f"{limits.email_subject_max_chars})"
            )
    elif isinstance(draft, BlogPost):
        words = len(WORD.findall(plain_text(draft.body_markdown)))
        if not limits.blog_min_words <= words <= limits.blog_max_words:
            out.append(
                f"body_markdown: {words} words (allowed {limits.blog_min_words}-"
                f"{limits.blog_max_words})"
            )
    return out


def guardrail_evidence(draft: Draft, brief: ContentBrief) -> dict[str, Any]:
    """Facts about `draft` that the guardrail invariants compare (counts), with the details
    behind them (which phrase in which field).

    Returns:
        `banned_claims_found`, `missing_disclaimers`, `off_brand_words`, `exclamations`,
        `longest_sentence_words`, `shouting_words`, `channel_violations` (integers), and
        `banned_claims`, `missing_disclaimer_texts`, `off_brand_matches`, `shouting`,
        `longest_sentence`, `channel_problems` (details).
    """
    parts = {k: normalize_text(v) for k, v in draft.parts().items()}
    banned = _find(list(brief.banned_claims), parts)
    if isinstance(draft, SocialPosts):  # each post goes out alone: each carries them
        missing = [
            f"{where}: {d}"
            for where, text in parts.items()
            for d in brief.required_disclaimers
            if not phrase_pattern(d).search(text)
        ]
    else:
        whole = " \n ".join(parts.values())
        missing = [d for d in brief.required_disclaimers if not phrase_pattern(d).search(whole)]
    off_brand = _find(list(brief.brand_voice.forbidden_words), parts)
    allowed = {a.casefold() for a in brief.brand_voice.allowed_caps}
    shouting = []
    longest: tuple[int, str] = (0, "")
    for where, raw in draft.parts().items():
        for sentence in _sentences(strip_format(raw)):
            words = WORD.findall(sentence)
            if len(words) > longest[0]:
                longest = (len(words), f"{where}: {normalize_text(sentence)[:200]}")
            for w in words:
                letters = [c for c in w if c.isalpha()]
                if len(letters) >= 4 and w.isupper() and w.casefold() not in allowed:
                    shouting.append(f"{where}: {w}")
    channel = _channel_violations(draft, brief)
    return {
        "banned_claims_found": len(banned),
        "missing_disclaimers": len(missing),
        "off_brand_words": len(off_brand),
        "exclamations": sum(v.count("!") for v in parts.values()),
        "longest_sentence_words": longest[0],
        "shouting_words": len(shouting),
        "channel_violations": len(channel),
        "banned_claims": banned,
        "missing_disclaimer_texts": missing,
        "off_brand_matches": off_brand,
        "shouting": shouting,
        "longest_sentence": longest[1],
        "channel_problems": channel,
    }


def guardrail_invariants(brief: ContentBrief) -> tuple[Invariant, ...]:
    """The guardrail invariants of `brief` (see the module docs for the table)."""
    voice = brief.brand_voice
    return (
        Invariant(
            "no_banned_claims",
            "banned_claims_found == 0",
            "the draft makes none of the brief's banned claims",
        ),
        Invariant(
            "required_disclaimers",
            "missing_disclaimers == 0",
            "every required disclaimer appears verbatim",
        ),
        Invariant(
            "brand_forbidden_words",
            "off_brand_words == 0",
            "no word the brand voice forbids",
        ),
        Invariant(
            "brand_exclamations",
            f"exclamations <= {voice.max_exclamations}",
            "at most the voice's exclamation marks",
        ),
        Invariant(
            "brand_sentence_length",
            f"longest_sentence_words <= {voice.max_sentence_words}",
            "no sentence longer than the voice allows",
        ),
        Invariant(
            "brand_no_shouting",
            f"shouting_words <= {voice.max_shouting_words}",
            "no ALL-CAPS shouting beyond the allowed acronyms",
        ),
        Invariant(
            "channel_limits",
            "channel_violations == 0",
            "every part fits its channel's hard limits",
        ),
    )


_DETAIL_KEYS: Final = {
    "no_banned_claims": "banned_claims",
    "required_disclaimers": "missing_disclaimer_texts",
    "brand_forbidden_words": "off_brand_matches",
    "brand_sentence_length": "longest_sentence",
    "brand_no_shouting": "shouting",
    "channel_limits": "channel_problems",
}


@define(frozen=True)
class GuardrailReport:
    """The proof of one draft: one `InvariantResult` per guardrail, and the evidence.

    Attributes:
        proof: PASS/FAIL of every guardrail invariant, with the values it read.
        evidence: What `guardrail_evidence` found (counts and details).
    """

    proof: tuple[InvariantResult, ...]
    evidence: Mapping[str, Any] = field(factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every guardrail passed."""
        return all(r.passed for r in self.proof)

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the failed guardrails, in declaration order."""
        return tuple(r.name for r in self.proof if not r.passed)

    def feedback(self) -> str:
        """What to fix, in words a writer (or a model asked to rewrite) can act on."""
        lines = []
        for r in self.proof:
            if r.passed:
                continue
            detail = self.evidence.get(_DETAIL_KEYS.get(r.name, ""), None)
            lines.append(f"- {r.name}: {r.expression} is false (values {dict(r.values)})")
            if detail:
                lines.append(f"  found: {detail}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in audit records, events and approval requests)."""
        return {
            "passed": self.passed,
            "failed": list(self.failed),
            "proof": [r.to_dict() for r in self.proof],
            "evidence": dict(self.evidence),
        }


def check_guardrails(draft: Draft, brief: ContentBrief) -> GuardrailReport:
    """Evaluate every guardrail invariant of `brief` over `draft` (its fields and evidence).

    Returns:
        The `GuardrailReport`; `passed` is `False` when any invariant FAILs (a path that does
        not resolve fails too: invariants fail closed).
    """
    evidence = guardrail_evidence(draft, brief)
    namespace = {**draft.model_dump(mode="json"), **evidence}
    proof = tuple(inv.check(namespace) for inv in guardrail_invariants(brief))
    return GuardrailReport(proof, evidence)
