"""The red-team report: attacks tried, blocked and escaped, per category; JSON and Markdown."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

from attrs import define, field

from contractspec.testing.redteam._target import Category

__all__ = [
    "AttackResult",
    "CategoryStats",
    "Finding",
    "RedTeamEscapeError",
    "RedTeamReport",
    "Verdict",
]


class Verdict(enum.StrEnum):
    """How one attack ended.

    * `blocked`: nothing it aimed at took effect (judged from the ledger, run log and approvals).
    * `escaped`: at least one check found an effect that should not have happened.
    * `error`: the harness could not run the attack to the end (the target raised something
      that is not a ContractSpec error); nothing is proven either way.
    """

    BLOCKED = "blocked"
    ESCAPED = "escaped"
    ERROR = "error"


class RedTeamEscapeError(AssertionError):
    """`RedTeamReport.assert_no_escapes()` found escaped (or unrunnable) attacks."""


@define(frozen=True)
class Finding:
    """One broken guarantee found in the records of an attack.

    Attributes:
        check: Which check fired: `unapproved_privileged_call`, `per_call_limit_exceeded`,
            `total_limit_exceeded`, `tenant_data_leaked`, `tool_budget_exceeded`,
            `step_budget_exceeded`.
        message: What happened, in words.
        evidence: Where it was seen (run id, action id, tool, amounts...), JSON.
    """

    check: str
    message: str
    evidence: Mapping[str, Any] = field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"check": self.check, "message": self.message, "evidence": dict(self.evidence)}


@define(frozen=True)
class AttackResult:
    """The outcome of one scenario.

    Attributes:
        scenario: Scenario id.
        category: Its category.
        goal: What the attacker wanted.
        verdict: `Verdict`.
        mode: `scripted` (compromised model) or `live` (a real model).
        findings: The broken guarantees (empty unless escaped).
        defences: What stopped calls, as recorded: `"<tool>: <status> (<reason>)"` for refused
            tool calls and `"run: <error code>"` for a run the runner stopped.
        attempted: Whether the model called a tool the attack aimed at (always true when
            scripted; in live mode false means the model itself refused).
        run_ids: The runs the attack made.
        error: The unexpected exception (`Type: message`) for `error` verdicts.
    """

    scenario: str
    category: Category
    goal: str
    verdict: Verdict
    mode: str = "scripted"
    findings: tuple[Finding, ...] = ()
    defences: tuple[str, ...] = ()
    attempted: bool = True
    run_ids: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "scenario": self.scenario,
            "category": self.category.value,
            "goal": self.goal,
            "verdict": self.verdict.value,
            "mode": self.mode,
            "attempted": self.attempted,
            "findings": [f.to_dict() for f in self.findings],
            "defences": list(self.defences),
            "run_ids": list(self.run_ids),
            "error": self.error,
        }


@define(frozen=True)
class CategoryStats:
    """Counts for one category: `tried = blocked + escaped + errors`."""

    tried: int = 0
    blocked: int = 0
    escaped: int = 0
    errors: int = 0

    @property
    def escape_rate(self) -> float:
        """`escaped / tried` as a fraction (0.0 when nothing was tried): the attack success
        rate."""
        return self.escaped / self.tried if self.tried else 0.0

    def to_dict(self) -> dict[str, int | float]:
        """JSON form."""
        return {
            "tried": self.tried,
            "blocked": self.blocked,
            "escaped": self.escaped,
            "errors": self.errors,
            "escape_rate": round(self.escape_rate, 4),
        }


@define(frozen=True)
class RedTeamReport:
    """All attacks of a red-team run.

    Attributes:
        agent: `name@version` of the attacked agent.
        mode: `scripted` or `live`.
        results: One `AttackResult` per scenario, in run order.
        warnings: Weak spots read from the configuration before any attack (a privileged tool
            below the agent's approval level, a money tool without invariants, no tool-call
            limit); they do not fail `assert_no_escapes`, the attacks decide.
    """

    agent: str
    mode: str
    results: tuple[AttackResult, ...]
    warnings: tuple[str, ...] = ()

    @property
    def tried(self) -> int:
        """Attacks run."""
        return len(self.results)

    @property
    def blocked(self) -> tuple[AttackResult, ...]:
        """Attacks the guards held against."""
        return tuple(r for r in self.results if r.verdict is Verdict.BLOCKED)

    @property
    def escaped(self) -> tuple[AttackResult, ...]:
        """Attacks that got something past the guards."""
        return tuple(r for r in self.results if r.verdict is Verdict.ESCAPED)

    @property
    def errors(self) -> tuple[AttackResult, ...]:
        """Attacks that could not be run to the end."""
        return tuple(r for r in self.results if r.verdict is Verdict.ERROR)

    def result(self, scenario: str) -> AttackResult:
        """The result of scenario `scenario`.

        Raises:
            KeyError: No such scenario in this report (the message lists them).
        """
        for r in self.results:
            if r.scenario == scenario:
                return r
        raise KeyError(f"no scenario {scenario!r}; known: {', '.join(self.scenarios())}")

    def scenarios(self) -> list[str]:
        """Scenario ids in run order."""
        return [r.scenario for r in self.results]

    def by_category(self) -> dict[Category, CategoryStats]:
        """`CategoryStats` per category that was tried, in `Category` order."""
        out: dict[Category, CategoryStats] = {}
        for cat in Category:
            rows = [r for r in self.results if r.category is cat]
            if not rows:
                continue
            out[cat] = CategoryStats(
                tried=len(rows),
                blocked=sum(r.verdict is Verdict.BLOCKED for r in rows),
                escaped=sum(r.verdict is Verdict.ESCAPED for r in rows),
                errors=sum(r.verdict is Verdict.ERROR for r in rows),
            )
        return out

    def assert_no_escapes(self, *, allow_errors: bool = False) -> None:
        """Fail (for pytest) unless every attack was blocked.

        Args:
            allow_errors: Accept attacks that could not be run (default: they fail too, since
                nothing was proven about them).

        Raises:
            RedTeamEscapeError: An `AssertionError` listing each escape with its findings.
        """
        bad = list(self.escaped) + ([] if allow_errors else list(self.errors))
        if not bad:
            return
        lines = [
            f"{len(self.escaped)} of {self.tried} attacks on {self.agent} escaped"
            + (f", {len(self.errors)} could not be run" if self.errors else "")
            + ":"
        ]
        for r in bad:
            lines.append(f"- {r.scenario} [{r.verdict.value}] {r.goal}")
            lines.extend(f"    {f.check}: {f.message}" for f in r.findings)
            if r.error:
                lines.append(f"    error: {r.error}")
        raise RedTeamEscapeError("\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        """JSON form: totals (with `escape_rate`, a fraction), per-category counts with the
        OWASP LLM Top 10 entry, and every result."""
        return {
            "agent": self.agent,
            "mode": self.mode,
            "summary": {
                "tried": self.tried,
                "blocked": len(self.blocked),
                "escaped": len(self.escaped),
                "errors": len(self.errors),
                "escape_rate": round(len(self.escaped) / self.tried, 4) if self.tried else 0.0,
            },
            "categories": {
                c.value: {**s.to_dict(), "owasp": c.owasp} for c, s in self.by_category().items()
            },
            "warnings": list(self.warnings),
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """`to_dict()` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def to_markdown(self) -> str:
        """A readable report: totals, a table per category, then every escape with its evidence."""
        lines = [
            f"# Red-team report: {self.agent} ({self.mode})",
            "",
            f"{self.tried} attacks tried, {len(self.blocked)} blocked, "
            f"{len(self.escaped)} escaped, {len(self.errors)} could not be run.",
            "",
            "| category | tried | blocked | escaped | errors | OWASP LLM |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for cat, s in self.by_category().items():
            lines.append(
                f"| {cat.value} | {s.tried} | {s.blocked} | {s.escaped} | {s.errors} "
                f"| {cat.owasp} |"
            )
        if self.warnings:
            lines += ["", "## Configuration warnings", ""]
            lines.extend(f"- {w}" for w in self.warnings)
        if self.escaped or self.errors:
            lines += ["", "## Escapes"]
            for r in self.escaped + self.errors:
                lines += ["", f"### {r.scenario} ({r.verdict.value})", "", f"Goal: {r.goal}", ""]
                lines.extend(f"- **{f.check}**: {f.message}" for f in r.findings)
                if r.error:
                    lines.append(f"- error: {r.error}")
        lines += [
            "",
            "## All attacks",
            "",
            "| scenario | verdict | stopped by |",
            "| --- | --- | --- |",
        ]
        for r in self.results:
            stopped = "; ".join(r.defences[:3]) + (" …" if len(r.defences) > 3 else "")
            lines.append(f"| {r.scenario} | {r.verdict.value} | {_cell(stopped) or '-'} |")
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
