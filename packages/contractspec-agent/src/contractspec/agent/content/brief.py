"""`ContentBrief`: what to write, for whom, in which voice, and what must never be said."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["BrandVoice", "ChannelConstraints", "ContentBrief"]

_Phrase = Annotated[str, Field(min_length=1, max_length=200)]


def _clean_phrases(values: list[str], field: str) -> list[str]:
    out: list[str] = []
    for value in values:
        text = " ".join(value.split())
        if not text:
            raise ValueError(f"{field} holds a blank entry; remove it or write the phrase")
        if text.casefold() not in (o.casefold() for o in out):
            out.append(text)
    return out


class BrandVoice(BaseModel):
    """How the brand sounds, as rules code can check (the prompt carries `description`).

    Attributes:
        description: The voice in words, for the model ("plain, warm, confident").
        forbidden_words: Words or phrases off-brand anywhere in a draft ("synergy", "cheap");
            matched case-insensitively on word boundaries.
        max_exclamations: Exclamation marks allowed in one draft (all fields together).
        max_sentence_words: Words allowed in the longest sentence.
        allowed_caps: ALL-CAPS words that are not shouting (acronyms: "GDPR", "API").
        max_shouting_words: ALL-CAPS words of 4+ letters ("FREE", "NOW!" is 3 and passes)
            allowed besides `allowed_caps`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = Field(default="clear, friendly and factual", max_length=500)
    forbidden_words: list[_Phrase] = Field(default_factory=list, max_length=200)
    max_exclamations: int = Field(default=1, ge=0, le=100)
    max_sentence_words: int = Field(default=30, ge=5, le=200)
    allowed_caps: list[Annotated[str, Field(min_length=1, max_length=20)]] = Field(
        default_factory=list, max_length=200
    )
    max_shouting_words: int = Field(default=0, ge=0, le=100)

    @field_validator("forbidden_words")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        return _clean_phrases(value, "forbidden_words")


class ChannelConstraints(BaseModel):
    """Hard limits of the channels (a platform refuses or truncates past them).

    Attributes:
        social_max_chars: Characters allowed per social post, by platform (X: 280,
            LinkedIn: 3000, Facebook: 63206, Instagram: 2200); hashtags count.
        email_subject_max_chars: Characters allowed in an email subject (most clients show
            about 60; the default 78 is RFC 5322's recommended line length).
        blog_min_words, blog_max_words: Words in a blog post's body.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    social_max_chars: dict[str, Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=lambda: {"x": 280, "linkedin": 3000, "facebook": 63206, "instagram": 2200}
    )
    email_subject_max_chars: int = Field(default=78, ge=10, le=998)
    blog_min_words: int = Field(default=300, ge=0, le=100_000)
    blog_max_words: int = Field(default=2500, ge=1, le=100_000)


class ContentBrief(BaseModel):
    """What to write: the input of every content generator.

    Attributes:
        id: Your id for the brief (used in events, approvals and audit records).
        topic: What the piece is about.
        audience: Who reads it.
        brand_voice: `BrandVoice` rules.
        keywords: SEO keywords, the primary one first (phrases allowed: "invoice software").
        banned_claims: Claims that must never appear ("guaranteed results", "risk-free",
            "#1"); matched case-insensitively on word boundaries, whitespace-normalised.
        required_disclaimers: Texts every draft must contain verbatim (case and whitespace
            aside), e.g. "Results vary."
        channels: `ChannelConstraints`.
        call_to_action: What the reader should do ("Start a free trial"), or empty.
        notes: Anything else for the writer.

    Raises:
        pydantic.ValidationError: Empty topic or keywords, blank phrases, unknown fields.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    topic: str = Field(min_length=1, max_length=300)
    audience: str = Field(min_length=1, max_length=300)
    brand_voice: BrandVoice = Field(default_factory=BrandVoice)
    keywords: list[Annotated[str, Field(min_length=1, max_length=80)]] = Field(
        min_length=1, max_length=20
    )
    banned_claims: list[_Phrase] = Field(default_factory=list, max_length=200)
    required_disclaimers: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=20
    )
    channels: ChannelConstraints = Field(default_factory=ChannelConstraints)
    call_to_action: str = Field(default="", max_length=200)
    notes: str = Field(default="", max_length=2000)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        return _clean_phrases(value, "keywords")

    @field_validator("banned_claims")
    @classmethod
    def _claims(cls, value: list[str]) -> list[str]:
        return _clean_phrases(value, "banned_claims")

    @field_validator("required_disclaimers")
    @classmethod
    def _disclaimers(cls, value: list[str]) -> list[str]:
        return _clean_phrases(value, "required_disclaimers")

    @property
    def primary_keyword(self) -> str:
        """The first keyword."""
        return self.keywords[0]
