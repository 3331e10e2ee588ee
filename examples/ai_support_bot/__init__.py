"""AI support bot: classify a ticket, resolve it from a small knowledge base with citations, draft
a reply, and escalate to a person when unsure. Runs offline by default; with a real model when
`SUPPORT_BOT_MODEL` (a litellm model name) and that provider's API key are set."""
