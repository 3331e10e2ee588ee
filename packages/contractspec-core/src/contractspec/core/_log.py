"""A structlog logger that imports structlog the first time it logs.

`import structlog` loads `structlog.dev`, which imports `rich` (tracebacks, pretty printing,
pygments) whenever rich is installed: about 150 ms before the first log line, paid by every
process that merely imports ContractSpec. Library modules therefore write

```python
from contractspec.core._log import get_logger

_log = get_logger(__name__)
```

instead of `structlog.get_logger(__name__)` at module level. The returned object forwards every
attribute (`info`, `exception`, `bind`, ...) to `structlog.get_logger(name)`, created on first
use, so logging behaves exactly as before: structlog's own lazy proxy still reads the
application's `structlog.configure(...)` when it logs, and `structlog.testing.capture_logs` still
captures. Library code never configures logging.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LazyLogger", "get_logger"]


class LazyLogger:
    """Stands in for `structlog.get_logger(name)` until the first attribute is read.

    Attributes:
        name: The logger name given to `structlog.get_logger` (usually the module's `__name__`).
    """

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            import structlog  # deferred: see the module docstring

            logger = self._logger = structlog.get_logger(self.name)
        return getattr(logger, attr)

    def __repr__(self) -> str:
        return f"<LazyLogger {self.name!r} ({'created' if self._logger is not None else 'not created'})>"


def get_logger(name: str) -> LazyLogger:
    """A logger named `name` whose structlog import waits for its first use.

    Args:
        name: The logger name, usually the calling module's `__name__`.

    Returns:
        A `LazyLogger`; any attribute (`debug`, `info`, `warning`, `error`, `exception`, `bind`,
        ...) is the one of `structlog.get_logger(name)`, created on first access.
    """
    return LazyLogger(name)
