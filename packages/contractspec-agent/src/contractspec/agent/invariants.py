"""Invariants and risk rules: declared data, evaluated without `eval`.

An invariant is a name and one comparison, e.g. `margin_floor: projected_margin >= 0.15`. Both
sides are arithmetic expressions over numbers, quoted strings, `true`/`false`/`null`, lists
(`["eu", "us"]`) and dotted paths into the action's namespace (its arguments and evidence):

```text
comparison := expr OP expr          OP: >= > <= < == != in "not in"
expr       := term (("+" | "-") term)*
term       := factor (("*" | "/") factor)*
factor     := NUMBER | STRING | true | false | null | PATH | "[" expr, ... "]" | "(" expr ")" | "-" factor
```

Expressions are parsed once, at definition time, by a small recursive-descent parser into a tree
that is then interpreted; numbers are exact `Decimal`s, so `0.1 + 0.2 == 0.3` holds. A path that
does not resolve, or values that cannot be compared, make the invariant FAIL (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from attrs import define, field

from contractspec.core import SpecDefinitionError

__all__ = [
    "Expression",
    "Invariant",
    "InvariantResult",
    "RiskRule",
    "budget_cap",
    "margin_floor",
    "parse_expression",
    "refund_limit",
]

_TOKEN: Final = re.compile(
    r"""\s*(?:
        (?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>>=|<=|==|!=|>|<|\+|-|\*|/|\(|\)|\[|\]|,)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)
_COMPARISONS: Final = (">=", "<=", "==", "!=", ">", "<", "in", "not in")
_MISSING: Final[Any] = object()


class _Missing(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"unexpected character {text[pos:].strip()[:1]!r} at {pos}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive-descent parser producing nested tuples: ("num", D), ("path", p), ("bin", op, l, r)..."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end of expression")
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok[1] != value:
            raise ValueError(f"expected {value!r}, got {tok[1]!r}")

    def comparison(self) -> tuple[Any, ...]:
        left = self.expr()
        tok = self.take()
        op = tok[1]
        if op == "not":
            self.expect("in")
            op = "not in"
        if op not in _COMPARISONS:
            raise ValueError(f"expected a comparison ({', '.join(_COMPARISONS)}), got {op!r}")
        right = self.expr()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()[1]!r} after the comparison")  # type: ignore[index]  # peek() is not None here
        return ("cmp", op, left, right)

    def expr(self) -> tuple[Any, ...]:
        node = self.term()
        while (tok := self.peek()) is not None and tok[1] in ("+", "-"):
            self.i += 1
            node = ("bin", tok[1], node, self.term())
        return node

    def term(self) -> tuple[Any, ...]:
        node = self.factor()
        while (tok := self.peek()) is not None and tok[1] in ("*", "/"):
            self.i += 1
            node = ("bin", tok[1], node, self.factor())
        return node

    def factor(self) -> tuple[Any, ...]:
        kind, value = self.take()
        if kind == "num":
            return ("lit", Decimal(value))
        if kind == "str":
            return ("lit", value[1:-1].encode().decode("unicode_escape"))
        if kind == "name":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "null":
                return ("lit", None)
            if value in ("in", "not"):
                raise ValueError(f"unexpected {value!r}")
            return ("path", value)
        if value == "(":
            node = self.expr()
            self.expect(")")
            return node
        if value == "-":
            return ("neg", self.factor())
        if value == "[":
            items: list[tuple[Any, ...]] = []
            if self.peek() is not None and self.peek()[1] == "]":  # type: ignore[index]  # checked
                self.i += 1
                return ("list", tuple(items))
            while True:
                items.append(self.expr())
                tok = self.take()
                if tok[1] == "]":
                    return ("list", tuple(items))
                if tok[1] != ",":
                    raise ValueError(f"expected ',' or ']' in a list, got {tok[1]!r}")
        raise ValueError(f"unexpected {value!r}")


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float):
        try:
            return Decimal(str(value))
        except InvalidOperation:  # pragma: no cover - nan/inf text always converts
            return None
    return None


def _resolve(namespace: Mapping[str, Any], path: str) -> Any:
    current: Any = namespace
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif not isinstance(current, Mapping) and hasattr(current, part):
            current = getattr(current, part)
        else:
            raise _Missing(path)
    return current


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@define(frozen=True)
class Expression:
    """A parsed comparison. Build it with `parse_expression`.

    Attributes:
        text: The source text.
        paths: Every dotted path it reads, in order of appearance.
    """

    text: str
    tree: tuple[Any, ...] = field(repr=False)
    paths: tuple[str, ...] = ()

    def evaluate(self, namespace: Mapping[str, Any]) -> tuple[bool, dict[str, Any], str]:
        """Evaluate against `namespace`.

        Returns:
            `(passed, values_seen, message)`: `values_seen` maps each path to the value read (JSON
            form); `message` explains a failure (`""` when it passed).
        """
        seen: dict[str, Any] = {}
        try:
            passed = bool(self._eval(self.tree, namespace, seen))
        except _Missing as exc:
            return False, seen, f"{exc.path} is missing"
        except (TypeError, InvalidOperation, ZeroDivisionError) as exc:
            return False, seen, f"cannot evaluate {self.text!r}: {exc}"
        return passed, seen, "" if passed else f"{self.text} is false"

    def _eval(self, node: tuple[Any, ...], ns: Mapping[str, Any], seen: dict[str, Any]) -> Any:
        tag = node[0]
        if tag == "lit":
            return node[1]
        if tag == "path":
            value = _resolve(ns, node[1])
            seen[node[1]] = _jsonable(value)
            return value
        if tag == "list":
            return [self._eval(n, ns, seen) for n in node[1]]
        if tag == "neg":
            num = _number(self._eval(node[1], ns, seen))
            if num is None:
                raise TypeError("'-' needs a number")
            return -num
        left = self._eval(node[2], ns, seen)
        right = self._eval(node[3], ns, seen)
        op = node[1]
        if tag == "bin":
            a, b = _number(left), _number(right)
            if a is None or b is None:
                raise TypeError(f"{op!r} needs numbers, got {left!r} and {right!r}")
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            return a / b
        return _compare(op, left, right)


def _compare(op: str, left: Any, right: Any) -> bool:
    if op in ("in", "not in"):
        if not isinstance(right, list | tuple | set | frozenset):
            raise TypeError(f"'{op}' needs a list on the right, got {right!r}")
        norm = [(_number(r) if _number(r) is not None else r) for r in right]
        value = _number(left) if _number(left) is not None else left
        return (value in norm) is (op == "in")
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        left, right = a, b
    elif op not in ("==", "!=") and (type(left) is not type(right) or left is None):
        raise TypeError(f"cannot compare {left!r} with {right!r}")
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == ">=":
        return bool(left >= right)
    if op == ">":
        return bool(left > right)
    if op == "<=":
        return bool(left <= right)
    return bool(left < right)


def _collect_paths(node: tuple[Any, ...], out: list[str]) -> None:
    tag = node[0]
    if tag == "path":
        if node[1] not in out:
            out.append(node[1])
    elif tag == "list":
        for n in node[1]:
            _collect_paths(n, out)
    elif tag == "neg":
        _collect_paths(node[1], out)
    elif tag in ("bin", "cmp"):
        _collect_paths(node[2], out)
        _collect_paths(node[3], out)


def parse_expression(text: str, *, what: str = "expression") -> Expression:
    """Parse one comparison (see the module docs for the grammar).

    Raises:
        SpecDefinitionError: The text is not a valid comparison; the message says where.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecDefinitionError(
            f"{what}: expected a comparison such as 'projected_margin >= 0.15', got {text!r}",
            details={"field": "expression"},
        )
    try:
        tree = _Parser(text).comparison()
    except ValueError as exc:
        raise SpecDefinitionError(
            f"{what}: {text!r} is not a valid comparison ({exc}); write e.g. "
            "'amount <= 500' or 'spent + amount <= budget'",
            details={"field": "expression", "expression": text},
        ) from None
    paths: list[str] = []
    _collect_paths(tree, paths)
    return Expression(text.strip(), tree, tuple(paths))


@define(frozen=True)
class InvariantResult:
    """One line of an action's proof.

    Attributes:
        name: The invariant's name.
        expression: Its comparison text.
        passed: PASS (`True`) or FAIL (`False`).
        values: The value seen for every path it read.
        message: Why it failed (`""` when it passed).
    """

    name: str
    expression: str
    passed: bool
    values: Mapping[str, Any] = field(factory=dict)
    message: str = ""

    @property
    def verdict(self) -> str:
        """`"PASS"` or `"FAIL"`."""
        return "PASS" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "expression": self.expression,
            "verdict": self.verdict,
            "values": dict(self.values),
            "message": self.message,
        }


def _expression_converter(value: Expression | str) -> Expression:
    return value if isinstance(value, Expression) else parse_expression(value, what="invariant")


@define(frozen=True)
class Invariant:
    """A named condition every call of a tool must satisfy; a FAIL blocks the call.

    `Invariant(name, expression, description="")`; the expression is parsed when the invariant is
    built, so a bad one raises `SpecDefinitionError` at definition time.

    Attributes:
        name: Short identifier shown in the proof (`margin_floor`).
        expression: A comparison (string or `Expression`), e.g. `"projected_margin >= 0.15"`.
        description: What the rule protects, for people reading action packets.
    """

    name: str
    expression: Expression = field(converter=_expression_converter)
    description: str = ""

    def check(self, namespace: Mapping[str, Any]) -> InvariantResult:
        """Evaluate against the action's namespace (arguments and evidence)."""
        passed, values, message = self.expression.evaluate(namespace)
        return InvariantResult(self.name, self.expression.text, passed, values, message)


@define(frozen=True)
class RiskRule:
    """Raises a call's risk level when its condition holds (`amount > 1000` → L2).

    Rules only ever raise the declared level: a tool declared L2 cannot be made L1 by data.
    `RiskRule(when, level, name="")`.

    Attributes:
        when: A comparison, e.g. `"amount > 1000"`. A path that does not resolve counts as true
            (fail closed: unknown data means the higher risk).
        level: The level (0-3 or `RiskLevel`) the call gets when `when` holds.
        name: Identifier shown in the packet.
    """

    when: Expression = field(converter=_expression_converter)
    level: int
    name: str = ""

    def applies(self, namespace: Mapping[str, Any]) -> bool:
        """Whether the rule raises the level for this call."""
        passed, _, message = self.when.evaluate(namespace)
        return passed or message.endswith("is missing")


def margin_floor(minimum: float | str, *, field: str = "projected_margin") -> Invariant:
    """`margin_floor: <field> >= minimum` (e.g. `minimum=0.15` for a 15 % margin, as a fraction)."""
    return Invariant(
        "margin_floor",
        f"{field} >= {minimum}",
        f"the projected margin must stay at or above {minimum} (fraction, not percent)",
    )


def budget_cap(
    cap: float | str | None = None,
    *,
    amount: str = "amount",
    spent: str = "budget_spent",
    cap_field: str = "budget_cap",
) -> Invariant:
    """`budget_cap: <spent> + <amount> <= cap` (a number, or the evidence field `cap_field`)."""
    limit = str(cap) if cap is not None else cap_field
    return Invariant(
        "budget_cap",
        f"{spent} + {amount} <= {limit}",
        "spending so far plus this amount must stay within the budget",
    )


def refund_limit(limit: float | str, *, field: str = "amount") -> Invariant:
    """`refund_limit: <field> <= limit` (same currency unit as the argument)."""
    return Invariant("refund_limit", f"{field} <= {limit}", f"a refund may not exceed {limit}")
