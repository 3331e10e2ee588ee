"""Content generation: a `ContentBrief` in, checked drafts out, published after a person approves.

```python
from contractspec.agent.content import (
    ContentBrief, ContentPublisher, blog_post_generator, register_content_operations,
)
```

* each generator (`blog_post_generator`, `landing_page_generator`, `email_generator`,
  `social_posts_generator`) is an agent with a structured output model (`BlogPost`, ...);
* brand voice, banned claims, disclaimers and channel limits are `Invariant`s proven in code on
  every draft (`check_guardrails`); a draft that fails is refused, audited, announced
  (`content.draft.refused`) and regenerated, a bounded number of times;
* `seo_report` measures title and meta lengths, heading structure, keyword density and
  readability (`textstat`) against `SeoThresholds`;
* `ContentPublisher` asks for an L2 approval of the exact draft and publishes it through the
  executor (`content.publish`), whose `content.published` event leaves through the outbox.

Needs the `content` extra: `pip install 'contractspec-agent[content]'`.
"""

from __future__ import annotations

from contractspec.agent.content.brief import BrandVoice, ChannelConstraints, ContentBrief
from contractspec.agent.content.drafts import (
    DRAFT_MODELS,
    BlogPost,
    ContentKind,
    Draft,
    EmailMessage,
    LandingPage,
    LandingSection,
    SocialPost,
    SocialPosts,
    draft_from_dict,
)
from contractspec.agent.content.events import (
    CONTENT_EVENTS,
    ContentPublished,
    DraftRefused,
    content_draft_refused,
    content_published,
)
from contractspec.agent.content.generators import (
    ContentGenerator,
    ContentRefusedError,
    GeneratedDraft,
    blog_post_generator,
    coerce_brief,
    content_generator,
    draft_id_for,
    email_generator,
    landing_page_generator,
    social_posts_generator,
)
from contractspec.agent.content.guardrails import (
    GuardrailReport,
    check_guardrails,
    guardrail_evidence,
    guardrail_invariants,
    normalize_text,
)
from contractspec.agent.content.publishing import (
    CONTENT_SPECS,
    ContentPublisher,
    Publication,
    PublishContent,
    default_channel,
    publication_entity,
    publish_content,
    register_content_operations,
)
from contractspec.agent.content.seo import SeoCheck, SeoReport, SeoThresholds, seo_report

__all__ = [
    "CONTENT_EVENTS",
    "CONTENT_SPECS",
    "DRAFT_MODELS",
    "BlogPost",
    "BrandVoice",
    "ChannelConstraints",
    "ContentBrief",
    "ContentGenerator",
    "ContentKind",
    "ContentPublished",
    "ContentPublisher",
    "ContentRefusedError",
    "Draft",
    "DraftRefused",
    "EmailMessage",
    "GeneratedDraft",
    "GuardrailReport",
    "LandingPage",
    "LandingSection",
    "Publication",
    "PublishContent",
    "SeoCheck",
    "SeoReport",
    "SeoThresholds",
    "SocialPost",
    "SocialPosts",
    "blog_post_generator",
    "check_guardrails",
    "coerce_brief",
    "content_draft_refused",
    "content_generator",
    "content_published",
    "default_channel",
    "draft_from_dict",
    "draft_id_for",
    "email_generator",
    "guardrail_evidence",
    "guardrail_invariants",
    "landing_page_generator",
    "normalize_text",
    "publication_entity",
    "publish_content",
    "register_content_operations",
    "seo_report",
    "social_posts_generator",
]
