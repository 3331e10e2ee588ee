"""Import a heavy module (numpy) the first time a function uses it, not when ours is imported.

A service that only evaluates flags imports `contractspec.growth.flags`, which builds on the
experiment and hashing modules; their vectorised paths need numpy (~100-200 ms to import), the
single-subject paths mostly do not. Those modules therefore write

```python
if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy", __name__, "np")
```

so mypy sees the real module while at run time `np` is a stand-in: the first attribute read
(`np.full`, `np.ndarray`, ...) imports numpy and rebinds the owner module's global `np` to the
real module, so every later use is an ordinary global lookup with no indirection.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

__all__ = ["LazyModule", "lazy_module"]


class LazyModule:
    """Stands in for module `name` in the globals of module `owner`, under the name `alias`."""

    __slots__ = ("_alias", "_name", "_owner")

    def __init__(self, name: str, owner: str, alias: str) -> None:
        self._name = name
        self._owner = owner
        self._alias = alias

    def load(self) -> ModuleType:
        """Import the module and put it in place of this stand-in in the owner's globals.

        Returns:
            The imported module.
        """
        module = importlib.import_module(self._name)
        owner = sys.modules.get(self._owner)
        if owner is not None and owner.__dict__.get(self._alias) is self:
            setattr(owner, self._alias, module)
        return module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.load(), attr)

    def __repr__(self) -> str:
        return f"<LazyModule {self._name!r} (as {self._owner}.{self._alias}, not imported yet)>"


def lazy_module(name: str, owner: str, alias: str) -> Any:
    """A stand-in for `import name as alias` in module `owner`, imported on first attribute use.

    Args:
        name: The module to import later, e.g. `"numpy"`.
        owner: `__name__` of the module whose global receives the stand-in.
        alias: The global's name in `owner`, e.g. `"np"`; the real module replaces the
            stand-in there on first use.

    Returns:
        A `LazyModule` (typed `Any`: declare the real module under `TYPE_CHECKING`).
    """
    return LazyModule(name, owner, alias)
