"""CRM pipeline example."""
