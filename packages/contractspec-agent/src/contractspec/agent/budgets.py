"""Budget reservations: totals that hold under parallel calls and concurrent runs.

An invariant such as `budget_cap()` is evaluated before the effect, outside its transaction, and
the gateway decides all of a model step's calls before any of them runs: evidence that reads a
stored total sees neither the step's other calls nor other runs in flight. A `Budget` on a tool
closes that window the way quotas are enforced in metering, *in the statement that raises the
counter*:

```py
refund = operation_tool(
    issue_refund, risk=RiskLevel.L1,
    budget=Budget(key="refunds:{order_id}", amount="amount", cap=50),
)
```

When the gateway writes a side-effecting call's ledger entry (after its invariants passed and
any approval was granted), it reserves `amount` against `key` of the caller's tenant, in the same
transaction: the memory store under a lock, the SQL store with one `INSERT … ON CONFLICT DO
UPDATE … WHERE reserved + amount <= cap` (PostgreSQL locks the row and re-checks the condition
on its latest version; SQLite has one writer). A refused reservation blocks the call with a
`budget_reservation` FAIL line in its proof, like an invariant failure (audited, the model sees
the reason). What happens to a reservation afterwards:

* the call succeeds: it stays reserved (the budget counts what was spent);
* the call ends in a known failure (it took no effect): released in the transaction that
  records the failure, so a later attempt can reserve again;
* the call is in doubt (timeout, cancelled or crashed while it ran): kept, since it may have
  taken effect; a re-run of the same action (reconciled, replayed through an idempotency key
  or approved) reuses it;
* the call never executes (blocked by an invariant, shadowed, waiting for or refused an
  approval): nothing was reserved. Reservations are taken at execution time, not while an
  approval is pending, so a pending approval never holds budget; an approved call is checked
  again when it runs and is blocked if the budget was used up meanwhile.

Before the reservation, the gateway also checks the budget as it stands (a read, one line of the
call's proof), so a call that cannot fit is blocked before anyone is asked to approve it and
shadow mode reports it as `would: blocked`.

A budget is a lifetime total per tenant and key. Tools that name the same key share the total
(each checks its own cap); put the period or subject in the key (`"refunds:{order_id}"`,
`"credits:{month}"` with `month` an argument) for narrower totals.
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Final, Literal, Protocol, cast, runtime_checkable

from attrs import define, field
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from contractspec.core import SpecDefinitionError, Transaction

__all__ = [
    "Budget",
    "BudgetClaim",
    "BudgetHold",
    "BudgetReservation",
    "BudgetStore",
    "BudgetUsage",
    "MemoryBudgetStore",
]

#: Decimal places budgets are kept to (amounts are rounded *up* to them, never down).
PLACES: Final = 6
#: The largest cap (and stored total): fits `NUMERIC(36, 6)` and SQLite's scaled 64-bit integers.
MAX_CAP: Final = Decimal(10) ** 12
#: Keys longer than this are stored as `sha256:<hex>` of the full key.
MAX_KEY: Final = 200
_QUANTUM: Final = Decimal(1).scaleb(-PLACES)
_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
ZERO: Final = Decimal(0)


class BudgetInputError(ValueError):
    """Internal: a call's arguments give no usable amount (the call is blocked, not crashed)."""


def _number(value: Any, what: str) -> Decimal:
    if isinstance(value, bool):
        raise BudgetInputError(f"{what} is a boolean, not a number")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        raise BudgetInputError(f"{what} is not a number ({str(value)[:40]!r})") from None
    if not number.is_finite():
        raise BudgetInputError(f"{what} is not a finite number ({number})")
    if number < 0:
        raise BudgetInputError(f"{what} is negative ({number}); a budget only grows")
    return number


def _cap(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise SpecDefinitionError(
            f"Budget cap must be a number, got {value!r}; e.g. Budget(..., cap=50)",
            details={"field": "cap"},
        )
    try:
        cap = _number(value, "cap")
    except BudgetInputError as exc:
        raise SpecDefinitionError(
            f"Budget {exc}; give a finite number >= 0, e.g. cap=50", details={"field": "cap"}
        ) from None
    if cap > MAX_CAP or cap != cap.quantize(_QUANTUM, rounding=ROUND_CEILING):
        raise SpecDefinitionError(
            f"Budget cap {value!r} is out of range: at most {MAX_CAP:,} with at most {PLACES} "
            "decimal places",
            details={"field": "cap"},
        )
    return cap


def _fields(key: Any) -> tuple[str, ...]:
    if not isinstance(key, str) or not key.strip():
        raise SpecDefinitionError(
            f"Budget key must be a non-empty string, got {key!r}; e.g. key='refunds:{{order_id}}'",
            details={"field": "key"},
        )
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(key))
    except ValueError as exc:
        raise SpecDefinitionError(
            f"Budget key {key!r} is not a valid template ({exc}); write {{field}} for an "
            "argument and {{{{ }}}} for a literal brace",
            details={"field": "key"},
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _NAME.match(name) or spec or conversion:
            raise SpecDefinitionError(
                f"Budget key {key!r}: {{{name}}} must name one argument, e.g. {{order_id}} (no "
                "attributes, indexes, conversions or format specs)",
                details={"field": "key"},
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _amount(value: Any) -> str | Decimal | Callable[[BaseModel], Any]:
    if isinstance(value, str):
        if not _NAME.match(value):
            raise SpecDefinitionError(
                f"Budget amount {value!r} must name an argument (e.g. amount='amount'), or be a "
                "fixed number or a function of the arguments",
                details={"field": "amount"},
            )
        return value
    if callable(value):
        return cast("Callable[[BaseModel], Any]", value)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise SpecDefinitionError(
            f"Budget amount must be an argument name, a number or a function, got {value!r}",
            details={"field": "amount"},
        )
    try:
        return _number(value, "amount")
    except BudgetInputError as exc:
        raise SpecDefinitionError(f"Budget {exc}", details={"field": "amount"}) from None


@define(frozen=True)
class BudgetClaim:
    """What one call would reserve against one budget (computed from its arguments).

    Attributes:
        key: The budget key, its `{field}` placeholders filled in (tenant-scoped by the store).
        amount: The amount, rounded up to 6 decimal places.
        cap: The budget's cap.
        expression: The budget's condition, as shown in proofs.
    """

    key: str
    amount: Decimal
    cap: Decimal
    expression: str = ""


@define(frozen=True)
class Budget:
    """A total that calls of a tool reserve against, atomically, before they take effect.

    `Budget(key, amount, cap)`; checked when built (`SpecDefinitionError` naming the field), and
    against the tool's arguments by `tool()` / `operation_tool()`.

    Attributes:
        key: The budget's name within the tenant; `{field}` placeholders are filled with the
            call's arguments (`"refunds:{order_id}"`: one total per order). Keys over 200
            characters are stored as `sha256:<hex>` of the key.
        amount: What one call reserves: an argument name (`"amount"`), a fixed number (`1`:
            counts calls), or a function of the validated arguments returning a number. Must be
            a finite number >= 0; it is rounded up to 6 decimal places.
        cap: The most that may be reserved in total (a number >= 0, at most 10**12, at most 6
            decimal places), in the amount's unit.
    """

    key: str
    amount: str | Decimal | Callable[[BaseModel], Any] = field(converter=_amount)
    cap: Decimal = field(converter=_cap)
    fields: tuple[str, ...] = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "fields", _fields(self.key))

    @property
    def expression(self) -> str:
        """The condition as shown in proofs: `reserved(<key>) + <amount> <= <cap>`."""
        amount = self.amount if isinstance(self.amount, str | Decimal) else "amount(args)"
        return f"reserved({self.key}) + {amount} <= {self.cap}"

    def check(self, tool: str, model: type[BaseModel]) -> None:
        """Check that the key's placeholders and the amount name fields of `model`.

        Raises:
            SpecDefinitionError: A placeholder or the amount names no argument of the tool.
        """
        known = model.model_fields
        for name in self.fields:
            if name not in known:
                raise SpecDefinitionError(
                    f"tool {tool!r}: budget key {self.key!r} uses {{{name}}}, which is not an "
                    f"argument of the tool (arguments: {', '.join(known) or 'none'})",
                    details={"field": "budget"},
                )
        if isinstance(self.amount, str) and self.amount not in known:
            raise SpecDefinitionError(
                f"tool {tool!r}: budget amount {self.amount!r} is not an argument of the tool "
                f"(arguments: {', '.join(known) or 'none'})",
                details={"field": "budget"},
            )

    def key_for(self, args: BaseModel | Mapping[str, Any]) -> str:
        """The stored key for these arguments (placeholders filled; hashed past 200 chars)."""
        values: dict[str, str] = {}
        for name in self.fields:
            value = args.get(name) if isinstance(args, Mapping) else getattr(args, name, None)
            value = to_jsonable_python(value)
            values[name] = value if isinstance(value, str) else _json(value)
        key = self.key.format_map(values) if self.fields else self.key.format()
        if len(key) > MAX_KEY:
            return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return key

    def claim(self, args: BaseModel) -> BudgetClaim:
        """What a call with these (validated) arguments reserves.

        Raises:
            ValueError: The amount is not a finite number >= 0 (the gateway blocks the call).
        """
        source = self.amount
        if isinstance(source, Decimal):
            raw: Any = source
            what = "amount"
        elif isinstance(source, str):
            raw, what = getattr(args, source, None), f"argument {source!r}"
        else:
            try:
                raw = source(args)
            except Exception as exc:
                raise BudgetInputError(
                    f"the budget amount function failed ({type(exc).__name__})"
                ) from None
            what = "the budget amount"
        amount = _number(raw, what)
        if amount <= MAX_CAP:  # larger never fits any cap: kept as is, refused by the check
            amount = amount.quantize(_QUANTUM, rounding=ROUND_CEILING)
        return BudgetClaim(self.key_for(args), amount, self.cap, self.expression)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def budgets_of(value: Budget | Iterable[Budget] | None, tool: str) -> tuple[Budget, ...]:
    """Normalise a tool's `budget=` option (internal to `tool()` / `operation_tool()`)."""
    if value is None:
        return ()
    items = (value,) if isinstance(value, Budget) else tuple(value)
    for b in items:
        if not isinstance(b, Budget):
            raise SpecDefinitionError(
                f"tool {tool!r}: budget must be a Budget (or a list of them), got {b!r}; write "
                "Budget(key='refunds:{order_id}', amount='amount', cap=50)",
                details={"field": "budget"},
            )
    keys = [b.key for b in items]
    if len(set(keys)) != len(keys):
        raise SpecDefinitionError(
            f"tool {tool!r}: two budgets use the same key template; give each its own key",
            details={"field": "budget"},
        )
    return items


@define(frozen=True)
class BudgetReservation:
    """The answer of `BudgetStore.reserve`.

    Attributes:
        granted: Whether the amount is (now) reserved for the action.
        key: The budget key.
        amount: The amount asked for (or already held, when `held_before`).
        reserved: The budget's reserved total after the grant, or as found when refused.
        cap: The cap checked.
        held_before: The action already held a reservation on this key (an in-doubt call run
            again): nothing new was reserved.
    """

    granted: bool
    key: str
    amount: Decimal
    reserved: Decimal
    cap: Decimal
    held_before: bool = False


@define(frozen=True)
class BudgetUsage:
    """A budget as it stands.

    Attributes:
        key: The budget key.
        reserved: Total reserved (spent, in flight and in doubt).
        held: Of which the given action holds (0 without an action or reservation).
    """

    key: str
    reserved: Decimal
    held: Decimal = ZERO


@define(frozen=True)
class BudgetHold:
    """One action's reservation on one budget key.

    Attributes:
        action_id: The gateway action.
        key: The budget key.
        amount: What it reserved.
        status: `held` or `released`.
    """

    action_id: str
    key: str
    amount: Decimal
    status: Literal["held", "released"]


@runtime_checkable
class BudgetStore(Protocol):
    """Reserved totals per tenant and key, and each action's reservations.

    Writes happen inside core `Transaction`s (the gateway's ledger transactions) and commit or
    roll back with them. `reserve` must be atomic: concurrent reservers of one key never take
    more than its cap together.
    """

    async def reserve(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        key: str,
        action_id: str,
        amount: Decimal,
        cap: Decimal,
        now: datetime,
        new: bool = False,
    ) -> BudgetReservation:
        """Reserve `amount` for `action_id` if `reserved + amount <= cap`; an action that holds
        a reservation on `key` already is granted without reserving again. `new=True` is the
        caller's promise that the action holds nothing yet (the gateway's first attempt: its
        reservations commit with its first ledger entry), so the store may skip looking."""
        ...

    async def release(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        action_id: str,
        now: datetime,
        keys: Collection[str] | None = None,
    ) -> Decimal:
        """Release what `action_id` holds (on `keys`, or on every key); return the total
        released (0 when it held nothing: releasing twice releases once)."""
        ...

    async def usage(
        self, tx: Transaction, *, org_id: str | None, key: str, action_id: str | None = None
    ) -> BudgetUsage:
        """The budget's reserved total, and what `action_id` holds of it."""
        ...

    async def holds(
        self, tx: Transaction, *, org_id: str | None, action_id: str
    ) -> list[BudgetHold]:
        """The action's reservations (held and released), by key."""
        ...


class MemoryBudgetStore:
    """`BudgetStore` in dictionaries, under a lock; writes are undone (as deltas, so concurrent
    reservations are kept) if their transaction rolls back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reserved: dict[tuple[str | None, str], Decimal] = {}
        self._holds: dict[tuple[str | None, str, str], BudgetHold] = {}

    def _add(self, org_id: str | None, key: str, delta: Decimal) -> None:
        with self._lock:
            self._reserved[(org_id, key)] = self._reserved.get((org_id, key), ZERO) + delta

    async def reserve(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        key: str,
        action_id: str,
        amount: Decimal,
        cap: Decimal,
        now: datetime,
        new: bool = False,
    ) -> BudgetReservation:
        """Reserve under the lock (see `BudgetStore.reserve`)."""
        hold_key = (org_id, action_id, key)
        with self._lock:
            current = self._reserved.get((org_id, key), ZERO)
            hold = self._holds.get(hold_key)
            if hold is not None and hold.status == "held":
                return BudgetReservation(True, key, hold.amount, current, cap, held_before=True)
            if current + amount > cap:
                return BudgetReservation(False, key, amount, current, cap)
            self._reserved[(org_id, key)] = current + amount
            tx.undo_item(self._holds, hold_key)
            self._holds[hold_key] = BudgetHold(action_id, key, amount, "held")
        tx.add_undo(lambda: self._add(org_id, key, -amount))
        return BudgetReservation(True, key, amount, current + amount, cap)

    async def release(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        action_id: str,
        now: datetime,
        keys: Collection[str] | None = None,
    ) -> Decimal:
        """Release the action's held reservations (see `BudgetStore.release`)."""
        total = ZERO
        with self._lock:
            for hold_key, hold in list(self._holds.items()):
                if hold_key[:2] != (org_id, action_id) or hold.status != "held":
                    continue
                if keys is not None and hold.key not in keys:
                    continue
                tx.undo_item(self._holds, hold_key)
                self._holds[hold_key] = BudgetHold(action_id, hold.key, hold.amount, "released")
                self._reserved[(org_id, hold.key)] -= hold.amount
                tx.add_undo(functools.partial(self._add, org_id, hold.key, hold.amount))
                total += hold.amount
        return total

    async def usage(
        self, tx: Transaction, *, org_id: str | None, key: str, action_id: str | None = None
    ) -> BudgetUsage:
        """The budget's total and the action's share."""
        with self._lock:
            reserved = self._reserved.get((org_id, key), ZERO)
            hold = None if action_id is None else self._holds.get((org_id, action_id, key))
        held = hold.amount if hold is not None and hold.status == "held" else ZERO
        return BudgetUsage(key, reserved, held)

    async def holds(
        self, tx: Transaction, *, org_id: str | None, action_id: str
    ) -> list[BudgetHold]:
        """The action's reservations, by key."""
        with self._lock:
            found = [h for k, h in self._holds.items() if k[:2] == (org_id, action_id)]
        return sorted(found, key=lambda h: h.key)
