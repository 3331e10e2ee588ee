"""Content studio: brief → drafts → guardrails → approval → publish event (issue 20)."""
