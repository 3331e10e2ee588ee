"""Run a relay or a consumer as its own process: `python -m contractspec.bus.nats ROLE FACTORY`.

```
python -m contractspec.bus.nats relay myapp.events:make_relay
python -m contractspec.bus.nats consume myapp.billing:make_subscriber
```

`FACTORY` is `module:function`; the function (sync or async, no arguments) builds what to run from
your app's settings: for `relay` an `OutboxRelay` (typically a `JetStreamRelay`), for `consume` a
`JetStreamSubscriber`. The process runs it until SIGTERM or SIGINT, then lets the batch in
progress finish (a relay marks what it published; a consumer's unacked messages are redelivered)
and exits 0. A factory that cannot be imported or returns something else exits 2 with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import signal
import sys
from collections.abc import Sequence
from typing import Any

from contractspec.bus.nats import JetStreamSubscriber
from contractspec.bus.outbox import OutboxRelay
from contractspec.core import ConfigurationError

_ROLES: dict[str, type[Any]] = {"relay": OutboxRelay, "consume": JetStreamSubscriber}


def load_factory(spec: str) -> Any:
    """Import `module:function`.

    Raises:
        ConfigurationError: Not `module:function`, or the module or attribute does not exist.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(
            f"factory {spec!r} must look like 'package.module:function'",
            details={"field": "factory"},
        )
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"cannot load factory {spec!r}: {exc}", details={"field": "factory"}
        ) from exc
    if not callable(target):
        raise ConfigurationError(f"factory {spec!r} is not callable", details={"field": "factory"})
    return target


async def serve(role: str, factory: Any) -> None:
    """Build the relay or subscriber with `factory()` and run it until SIGTERM/SIGINT.

    Raises:
        ConfigurationError: The factory returned something other than the role's type.
    """
    target = factory()
    if inspect.isawaitable(target):
        target = await target
    expected = _ROLES[role]
    if not isinstance(target, expected):
        raise ConfigurationError(
            f"the {role} factory must return a {expected.__name__}, got {type(target).__name__}",
            details={"field": "factory"},
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await target.run(stop=stop)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m contractspec.bus.nats",
        description="Run an outbox relay or a JetStream consumer until SIGTERM/SIGINT.",
    )
    parser.add_argument("role", choices=sorted(_ROLES), help="relay or consume")
    parser.add_argument("factory", help="module:function building the relay or subscriber")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.role, load_factory(args.factory)))
    except ConfigurationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
