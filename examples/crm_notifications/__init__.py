"""CRM notifications: the CRM pipeline's events through the outbox to subscribers and notifications."""
