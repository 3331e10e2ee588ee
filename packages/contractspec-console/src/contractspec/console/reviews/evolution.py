"""Spec suggestions of contractspec-evolution: the spec diff rendered, approve or reject."""

from __future__ import annotations

from typing import Any

from contractspec.console.reviews._common import (
    QueueAction,
    QueueSection,
    pretty,
    require_package,
)

__all__ = ["Suggestions", "patch_rows"]

_VERB = {"add": "added", "remove": "removed", "replace": "changed"}


def patch_rows(patch: list[dict[str, Any]]) -> list[dict[str, str]]:
    """RFC 6902 operations as rows to render: `{change, path, value}`.

    `change` is `added`, `removed`, `changed` (replace) or the operation's own name (`move`,
    `copy`, `test`); `value` is the JSON text of the new value (`""` for a removal).
    """
    rows = []
    for op in patch:
        verb = str(op.get("op", ""))
        rows.append(
            {
                "change": _VERB.get(verb, verb),
                "path": str(op.get("path", "")),
                "value": pretty(op["value"]) if "value" in op else str(op.get("from", "")),
            }
        )
    return rows


def _extra(item: Any) -> dict[str, Any]:
    breaking = [c for c in item.diff if c.get("severity") == "breaking"]
    return {"patch_rows": patch_rows(item.patch), "breaking_changes": len(breaking)}


class Suggestions(QueueSection):
    """Evolution suggestions: rationale, evidence, the classified spec diff (breaking changes
    flagged) and its RFC 6902 patch as added/removed/changed rows; approve, reject, apply.

    Runs `evolution.review.suggestions.{list,show,approve,reject,apply}` (register them with
    `contractspec.evolution.review.register_review_operations`).

    Raises:
        ConfigurationError: contractspec-evolution is not installed.
    """

    def __init__(self, *, key: str = "suggestions", title: str = "Spec suggestions") -> None:
        require_package("contractspec.evolution.review", "contractspec-evolution", "Suggestions")
        prefix = "evolution.review.suggestions"
        super().__init__(
            key=key,
            title=title,
            list_operation=f"{prefix}.list",
            show_operation=f"{prefix}.show",
            id_field="suggestion_id",
            actions=(
                QueueAction("approve", f"{prefix}.approve", "Approve"),
                QueueAction("reject", f"{prefix}.reject", "Reject", danger=True),
                QueueAction("apply", f"{prefix}.apply", "Write envelope", comment=None),
            ),
            list_template="reviews/suggestions.html",
            detail_template="reviews/suggestion.html",
            filters=("status", "operation"),
            detail_extra=_extra,
        )
