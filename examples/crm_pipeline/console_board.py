"""The deals board of the CRM console: one column per stage, a card per deal, the moves the caller
may make from each card (`crm.deal.move` through the executor, CSRF-checked by the console).

The columns come from the CRM's own query `crm.pipeline.board` (count, value and largest deals
per stage), run as the caller; the section is listed for callers the policy lets run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contractspec.console import ConsoleHost
from crm_pipeline.models import CLOSED_STAGES, Stage

__all__ = ["StageBoard"]

_TEMPLATES = Path(__file__).parent / "templates"


class StageBoard:
    """A console section (`ConsoleSection`) showing the deals by stage.

    Args:
        per_column: Cards per column (0-50, the largest deals first).
        key: URL segment under the console.
        title: Navigation label.
    """

    template_dir: Path | None = _TEMPLATES

    def __init__(
        self, *, per_column: int = 25, key: str = "deals-board", title: str = "Deals by stage"
    ) -> None:
        self.per_column = per_column
        self.key = key
        self.title = title

    async def visible(self, console: ConsoleHost, request: Request) -> bool:
        """Shown to callers who may run `crm.pipeline.board`."""
        return await console.may(request, "crm.pipeline.board")

    def routes(self, console: ConsoleHost) -> Sequence[BaseRoute]:
        """`/`: the board."""

        async def board(request: Request) -> Response:
            await console.call_context(request)
            out: Any = await console.execute(
                request, "crm.pipeline.board", {"per_column": self.per_column}
            )
            may_move = await console.may(request, "crm.deal.move")
            columns = []
            for column in out.columns:
                closed = column.stage in CLOSED_STAGES
                columns.append(
                    {
                        "stage": column.stage.value,
                        "count": column.count,
                        "value": str(column.value),
                        "closed": closed,
                        "deals": [_card(deal) for deal in column.top_deals],
                        "moves": []
                        if closed or not may_move
                        else [s.value for s in Stage if s is not column.stage],
                    }
                )
            return console.render(request, "crm/stage_board.html", {"columns": columns})

        return [Route("/", board, methods=["GET"])]


def _card(deal: BaseModel) -> dict[str, Any]:
    data = deal.model_dump(mode="json")
    return {"id": data["id"], "title": data["title"], "amount": data["amount"]}
