"""Ops autopilot: churn risk → retention task → bandit-chosen offer within budget → approval → rewards (issue 20)."""
