"""The CRM with the evolution loop: telemetry, intents, reviewed spec suggestions.

`crm_evolution.loop.build_loop()` wires the CRM of `crm_pipeline` (its spec, handlers and roles)
to contractspec-evolution on one SQLite (or PostgreSQL) engine; `crm_evolution.story.run_story()`
plays healthy traffic, injects a latency regression into `crm.deal.move`, and walks the result
through detection, suggestion, approval and the written envelope. Run it with
`python -m crm_evolution`.
"""
