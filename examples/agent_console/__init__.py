"""Agent console: a tools registry, agents, runs with history, status, logs, metrics and events,
persisted in SQLite. Runs offline by default; with a real model when `AGENT_CONSOLE_MODEL` (a
litellm model name) and that provider's API key are set."""
