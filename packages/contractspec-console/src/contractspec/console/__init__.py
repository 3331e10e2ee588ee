"""contractspec-console: a spec-driven web console (Starlette + Jinja2 + htmx) for operators and reviewers."""

from contractspec.console.app import CONTENT_SECURITY_POLICY, Console, NavLink, PageLinks
from contractspec.console.sections import ConsoleHost, ConsoleSection

__all__ = (
    "CONTENT_SECURITY_POLICY",
    "Console",
    "ConsoleHost",
    "ConsoleSection",
    "NavLink",
    "PageLinks",
)
