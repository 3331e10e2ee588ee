"""Approvals example: purchase requests through a policy-gated workflow with an SLA escalation."""
