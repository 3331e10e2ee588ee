"""`AutoResponder`: replies in a chosen tone, checked in code against a `ResponsePolicy` before
anything can be sent.

The policy is enforced on the reply's text, whoever wrote it (template or model); the prompt
only asks. A reply that breaks a rule is `blocked` (a person rewrites it):

* **refund_limit**: a sentence that mentions a refund (refund, reimburse, money back, credit,
  compensate) together with an amount above the limit (`$120`, `120 EUR`, `120.50 dollars`,
  thousands separators and full-width digits included) is treated as a promise and blocked —
  fail closed, so "we cannot refund $500" is blocked too. A "full refund" counts as the
  ticket's `order_total`; when that is unknown it is blocked (`refund_amount_unknown`).
  Amounts written in words, and bare numbers without a currency sign or code ("refund 120"),
  are not recognised.
* **banned_claim**: a banned phrase, matched case-insensitively on NFKC-normalised text with
  zero-width characters and soft hyphens removed and any run of whitespace between its words;
  or a banned regular expression.
* **max_length**: the reply is longer than `max_length` characters.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Final

from attrs import define, field

from contractspec.agent.runner import AgentRunner
from contractspec.agent.specs import AgentSpec, define_agent
from contractspec.agent.support.models import (
    PolicyViolation,
    ReplyDraft,
    ReplyText,
    Resolution,
    Ticket,
    invalid,
)
from contractspec.core import Actor, CallContext, ConfigurationError

__all__ = ["TONES", "AutoResponder", "ResponsePolicy", "Tone"]

_INVISIBLE: Final = re.compile("[\u00ad\u200b-\u200f\u2060\ufeff]")
_SENTENCE: Final = re.compile(r"(?<=[.!?;])\s+|\n+")
_REFUND: Final = re.compile(
    r"\b(refund\w*|reimburs\w*|money\s+back|credit(?:s|ed|ing)?|compensat\w*|pay\s+you\s+back)\b",
    re.IGNORECASE,
)
_NUM: Final = r"(?:\d{1,3}(?:[,. ]\d{3})+|\d+)(?:[.,]\d{1,2})?(?!\d)"
_AMOUNT: Final = re.compile(
    rf"(?:[$€£¥]\s?(?P<a>{_NUM})|(?P<b>{_NUM})\s?(?:[$€£¥]|usd|eur|gbp|sek|nok|dkk|chf|"
    r"dollars?|euros?|pounds?|bucks|kr)\b)",
    re.IGNORECASE,
)
_FULL: Final = re.compile(
    r"\b(full|entire|whole|complete|total)\s+(refund|reimbursement)\b|"
    r"\brefund\w*\s+(?:you\s+)?(?:in\s+full|everything|the\s+(?:full|entire|whole|total)\b)|"
    r"\b100\s?%\s+(refund|reimbursement)\b",
    re.IGNORECASE,
)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _clean(text: str) -> str:
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


def _amount(text: str) -> Decimal | None:
    digits = re.sub(r"\s", "", text)
    if "," in digits and "." in digits:
        decimal_sep = "," if digits.rfind(",") > digits.rfind(".") else "."
    elif re.search(r"[.,]\d{1,2}$", digits):
        decimal_sep = digits[-3] if digits[-3] in ",." else digits[-2]
    else:
        decimal_sep = ""
    whole, _, frac = digits.rpartition(decimal_sep) if decimal_sep else (digits, "", "")
    number = re.sub(r"[.,]", "", whole) + ("." + frac if decimal_sep else "")
    try:
        return Decimal(number)
    except InvalidOperation:  # pragma: no cover - the pattern only lets digits through
        return None


@define(frozen=True)
class ResponsePolicy:
    """What a reply to a customer may not say (checked in code; see the module docs).

    Attributes:
        refund_limit: The largest refund a reply may promise, in the currency's units (`None`:
            no limit).
        banned_claims: Phrases a reply must never contain ("guaranteed", "lifetime warranty").
        banned_patterns: Regular expressions a reply must never match (case-insensitive).
        max_length: Most characters a reply may have (`None`: no limit).

    Raises:
        ConfigurationError: A negative limit, an empty phrase, an invalid regular expression.
    """

    refund_limit: float | None = None
    banned_claims: tuple[str, ...] = field(default=(), converter=_str_tuple)
    banned_patterns: tuple[str, ...] = field(default=(), converter=_str_tuple)
    max_length: int | None = None
    _compiled: tuple[tuple[str, re.Pattern[str], bool], ...] = field(
        init=False, repr=False, eq=False
    )

    def __attrs_post_init__(self) -> None:
        if self.refund_limit is not None and (
            isinstance(self.refund_limit, bool)
            or not isinstance(self.refund_limit, int | float)
            or not self.refund_limit >= 0
        ):
            raise ConfigurationError(
                f"ResponsePolicy: refund_limit must be a number >= 0 or None, got "
                f"{self.refund_limit!r}",
                details={"field": "refund_limit"},
            )
        if self.max_length is not None and (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or self.max_length < 1
        ):
            raise ConfigurationError(
                f"ResponsePolicy: max_length must be a positive integer or None, got "
                f"{self.max_length!r}",
                details={"field": "max_length"},
            )
        compiled: list[tuple[str, re.Pattern[str], bool]] = []
        for claim in self.banned_claims:
            words = _clean(claim).casefold().split() if isinstance(claim, str) else []
            if not words:
                raise ConfigurationError(
                    f"ResponsePolicy: banned_claims must be non-empty phrases, got {claim!r}",
                    details={"field": "banned_claims"},
                )
            body = r"\s+".join(re.escape(w) for w in words)
            compiled.append((claim, re.compile(rf"(?<!\w){body}(?!\w)"), True))
        for pattern in self.banned_patterns:
            try:
                compiled.append((pattern, re.compile(pattern, re.IGNORECASE), False))
            except (re.error, TypeError) as exc:
                raise ConfigurationError(
                    f"ResponsePolicy: banned pattern {pattern!r} is not a valid regular "
                    f"expression ({exc})",
                    details={"field": "banned_patterns"},
                ) from None
        object.__setattr__(self, "_compiled", tuple(compiled))

    def refund_promised(self, text: str, *, order_total: float | None = None) -> Decimal | None:
        """The largest refund amount `text` mentions (0 when none); `None` when it promises a
        full refund of an unknown order total."""
        largest = Decimal(0)
        for sentence in _SENTENCE.split(_clean(text)):
            if not _REFUND.search(sentence):
                continue
            for match in _AMOUNT.finditer(sentence):
                value = _amount(match.group("a") or match.group("b"))
                if value is not None and value > largest:
                    largest = value
            if _FULL.search(sentence):
                if order_total is None:
                    return None
                largest = max(largest, Decimal(str(order_total)))
        return largest

    def check(self, text: str, *, order_total: float | None = None) -> list[PolicyViolation]:
        """Every rule `text` breaks (empty when it may be sent).

        Args:
            text: The reply.
            order_total: The order's amount, for "full refund" promises.

        Raises:
            SpecValidationError: `text` is not a string.
        """
        if not isinstance(text, str):
            raise invalid("ResponsePolicy", "text", f"must be a string, got {text!r}")
        found: list[PolicyViolation] = []
        clean = _clean(text)
        if self.refund_limit is not None:
            limit = Decimal(str(self.refund_limit))
            for sentence in _SENTENCE.split(clean):
                if not _REFUND.search(sentence):
                    continue
                promised = self.refund_promised(sentence, order_total=order_total)
                if promised is None:
                    found.append(
                        PolicyViolation(
                            "refund_amount_unknown",
                            f"promises a full refund of an unknown amount (limit {limit})",
                            sentence.strip(),
                        )
                    )
                elif promised > limit:
                    found.append(
                        PolicyViolation(
                            "refund_limit",
                            f"promises a refund of {promised}, above the limit of {limit}",
                            sentence.strip(),
                            float(promised),
                        )
                    )
        folded = clean.casefold()
        for name, pattern, is_claim in self._compiled:
            match = pattern.search(folded if is_claim else clean)
            if match:
                found.append(
                    PolicyViolation("banned_claim", f"makes the banned claim {name!r}", match[0])
                )
        if self.max_length is not None and len(text) > self.max_length:
            found.append(
                PolicyViolation(
                    "max_length",
                    f"is {len(text)} characters long, more than {self.max_length}",
                    value=float(len(text)),
                )
            )
        return found


@define(frozen=True)
class Tone:
    """How replies sound.

    Attributes:
        greeting: The opening line (`{name}` is the customer's name, or "there").
        closing: The line before the signature.
        holding: The reply when a person takes over.
        guide: What the reply-writing agent is told about the tone.
    """

    greeting: str
    closing: str
    holding: str
    guide: str


#: Built-in tones.
TONES: Final[dict[str, Tone]] = {
    "friendly": Tone(
        "Hi {name},",
        "Hope that helps! Just reply if anything is still unclear.",
        "Thanks for reaching out! A member of our team will look into this and get back to you.",
        "warm and informal, short sentences, no jargon",
    ),
    "formal": Tone(
        "Dear {name},",
        "Should you have any further questions, please do not hesitate to contact us.",
        "Thank you for your message. A member of our support team will review your request and "
        "respond shortly.",
        "polite and formal, complete sentences, no contractions, no exclamation marks",
    ),
    "empathetic": Tone(
        "Hi {name},",
        "I'm sorry for the trouble this caused, and thank you for your patience.",
        "I'm sorry you ran into this. I've passed your request to a specialist who will get back "
        "to you personally.",
        "acknowledge the customer's frustration first, then help; warm and calm",
    ),
    "concise": Tone(
        "Hi {name},",
        "",
        "Thanks, a person from our team will follow up.",
        "as short as possible: the answer and nothing else",
    ),
}


class AutoResponder:
    """Writes replies in a tone and blocks any that break the `ResponsePolicy`.

    Args:
        policy: The rules every reply is checked against (default: none).
        tone: A name from `TONES` or a `Tone` (default `"friendly"`).
        runner: An `AgentRunner` whose model writes replies; without one a template does.
        model: Model name for the reply-writing agent.
        signature: The last line of every reply.
        cite_sources: Append the cited sources' titles (and links) to template replies.
        agent_name: The reply agent's name (default `support.reply`).

    Raises:
        ConfigurationError: An unknown tone.
    """

    def __init__(
        self,
        policy: ResponsePolicy | None = None,
        *,
        tone: str | Tone = "friendly",
        runner: AgentRunner | None = None,
        model: str = "openai/gpt-4o-mini",
        signature: str = "The support team",
        cite_sources: bool = True,
        agent_name: str = "support.reply",
    ) -> None:
        self.policy = policy or ResponsePolicy()
        self.tone_name, self.tone = self._tone(tone)
        self.runner = runner
        self.signature = signature
        self.cite_sources = cite_sources
        self.agent: AgentSpec = define_agent(
            agent_name,
            model=model,
            instructions=(
                "Write the reply to the customer from the drafted answer, in the tone described. "
                "Say only what the answer supports. Never promise refunds, compensation or "
                "outcomes the answer does not state."
            ),
            output_type=ReplyText,
            description="Writes customer replies (contractspec.agent.support).",
        )

    @staticmethod
    def _tone(tone: str | Tone) -> tuple[str, Tone]:
        if isinstance(tone, Tone):
            return "custom", tone
        if tone not in TONES:
            raise ConfigurationError(
                f"unknown tone {tone!r}; use one of {sorted(TONES)} or a Tone(...)",
                details={"field": "tone"},
            )
        return tone, TONES[tone]

    def check(self, text: str, *, order_total: float | None = None) -> list[PolicyViolation]:
        """`policy.check`: every rule `text` breaks."""
        return self.policy.check(text, order_total=order_total)

    async def respond(
        self,
        ticket: Ticket,
        resolution: Resolution,
        *,
        tone: str | Tone | None = None,
        customer_name: str | None = None,
        ctx: CallContext | None = None,
    ) -> ReplyDraft:
        """Write the reply to `ticket` from `resolution` and check it.

        Args:
            ticket: The ticket (its `order_total` prices "full refund" promises).
            resolution: What `TicketResolver` found; an escalated one gets the holding reply.
            tone: Overrides the responder's tone for this reply.
            customer_name: Used in the greeting (default "there").
            ctx: Who asks (default: the system actor `support.responder` in the ticket's org).

        Returns:
            A `ReplyDraft`: `ready` to send, `blocked` with its violations, or `escalated`.

        Raises:
            SpecValidationError: `ticket` or `resolution` has the wrong type.
            ConfigurationError: An unknown tone.
            AgentRunError: The reply-writing model failed.
        """
        if not isinstance(ticket, Ticket):
            raise invalid("AutoResponder", "ticket", f"must be a Ticket, got {ticket!r}")
        if not isinstance(resolution, Resolution):
            raise invalid(
                "AutoResponder", "resolution", f"must be a Resolution, got {resolution!r}"
            )
        tone_name, style = self._tone(tone) if tone is not None else (self.tone_name, self.tone)
        greeting = style.greeting.format(name=customer_name or "there")
        run_id: str | None = None
        if resolution.escalated:
            text = _join(greeting, style.holding, self.signature)
            status = "escalated"
        else:
            if self.runner is None:
                body = resolution.answer
                if self.cite_sources and resolution.citations:
                    body += "\n\nSources: " + "; ".join(
                        f"{c.title or c.source_id}" + (f" ({c.url})" if c.url else "")
                        for c in resolution.citations
                    )
                text = _join(greeting, body, style.closing, self.signature)
            else:
                call = ctx or CallContext(
                    actor=Actor.system("support.responder"), org_id=ticket.org_id, channel="agent"
                )
                payload = {
                    "ticket": ticket.text,
                    "answer": resolution.answer,
                    "sources": [c.to_dict() for c in resolution.citations],
                    "tone": style.guide,
                    "greeting": greeting,
                    "closing": style.closing,
                    "signature": self.signature,
                }
                result = await self.runner.run(self.agent, json.dumps(payload), call)
                reply: ReplyText = result.output
                text, run_id = reply.body, result.run_id
            status = "ready"
        violations = tuple(self.policy.check(text, order_total=ticket.order_total))
        return ReplyDraft(
            ticket.id,
            text,
            tone_name,
            "blocked" if violations else status,  # type: ignore[arg-type]  # a literal
            violations,
            resolution.citations,
            run_id,
        )


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)
