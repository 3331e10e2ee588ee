"""contractspec-console: a spec-driven web console (Starlette + Jinja2 + htmx) for operators and reviewers."""
