"""Experiment results (contractspec-growth): comparisons, the SRM verdict and the lift plot."""

from __future__ import annotations

import inspect
import io
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contractspec.console.reviews._common import require_package
from contractspec.console.sections import ConsoleHost
from contractspec.core import (
    CallContext,
    ContractSpecError,
    HandlerCtx,
    NotFoundError,
    SpecRegistry,
    define_query,
    requires,
)

if TYPE_CHECKING:
    from contractspec.growth.results import ExperimentResult

__all__ = ["ExperimentInput", "ExperimentSummary", "Experiments", "ResultSource", "SrmVerdict"]

RESULT_OPERATION = "console.experiments.result"

#: `source(experiment_key, call) -> ExperimentResult` (sync or async): the app's analysis of one
#: experiment for the caller's tenant (e.g. `analyze_experiment` over its tracker's summaries).
ResultSource = Callable[[str, CallContext], "ExperimentResult | Awaitable[ExperimentResult]"]


class ExperimentInput(BaseModel):
    """Input of `console.experiments.result`."""

    experiment: str = Field(min_length=1, max_length=200)


class SrmVerdict(BaseModel):
    """The sample-ratio-mismatch check (see `contractspec.growth.SrmResult`)."""

    mismatch: bool
    p_value: float | None
    threshold: float
    observed: dict[str, int]
    expected: dict[str, float]
    reason: str | None


class ExperimentSummary(BaseModel):
    """Output of `console.experiments.result`: one row per metric and variation
    (`Comparison.to_record()`), the SRM verdict, the correction and alpha."""

    experiment: str
    control: str
    variations: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]]
    srm: SrmVerdict | None
    correction: str | None
    alpha: float


async def _result(source: ResultSource, key: str, call: CallContext) -> ExperimentResult:
    out: Any = source(key, call)
    if inspect.isawaitable(out):
        out = await out
    return out  # type: ignore[no-any-return]


def _png(result: ExperimentResult) -> bytes:
    figure = result.plot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=96)
    return buffer.getvalue()


class Experiments:
    """Experiment results: each comparison with its lift, CI and p-value, the SRM verdict (a
    mismatch is flagged: do not trust the lifts) and the lift plot as a PNG image route
    (`/<key>/plot.png`, from `ExperimentResult.plot()`; the console's CSP allows `img-src 'self'`).

    Constructing the section registers the query `console.experiments.result` (auth:
    `requires(permission)`) whose handler calls `source(key, call)`; the plot route runs that
    query first, so it has the same policy and tenant checks.

    Args:
        registry: The registry the console's executor runs.
        experiments: The experiment keys listed on the landing page.
        source: `source(key, call) -> ExperimentResult` (sync or async); raise `NotFoundError`
            for an unknown key.
        permission: What the policy must grant to see results (default `growth.results.read`).
        key: URL segment.
        title: Navigation label.

    Raises:
        ConfigurationError: contractspec-growth (with its `plot` extra for the image) is not
            installed.
    """

    template_dir: Path | None = None

    def __init__(
        self,
        registry: SpecRegistry,
        *,
        experiments: Sequence[str],
        source: ResultSource,
        permission: str = "growth.results.read",
        key: str = "experiments",
        title: str = "Experiments",
    ) -> None:
        require_package("contractspec.growth.results", "contractspec-growth[plot]", "Experiments")
        self.key = key
        self.title = title
        self.experiments = tuple(experiments)
        self.source = source
        self.operation = RESULT_OPERATION
        try:
            registry.get(RESULT_OPERATION)
            return
        except NotFoundError:
            pass
        op = define_query(
            RESULT_OPERATION,
            input=ExperimentInput,
            output=ExperimentSummary,
            auth=requires(permission),
            errors=[NotFoundError],
            tags=("console", "growth"),
            description="One experiment's comparisons and SRM verdict (the console's view).",
        )
        registry.register(op)
        known = set(self.experiments)

        @registry.handler(op)
        async def result(inp: ExperimentInput, ctx: HandlerCtx) -> ExperimentSummary:
            if inp.experiment not in known:
                raise NotFoundError(
                    f"no experiment {inp.experiment!r} in the console",
                    details={"experiment": inp.experiment},
                )
            r = await _result(source, inp.experiment, ctx.call)
            srm = r.srm
            return ExperimentSummary(
                experiment=r.experiment or inp.experiment,
                control=r.control,
                variations=list(r.variations),
                metrics=list(r.metrics),
                rows=r.to_records(),
                srm=None
                if srm is None
                else SrmVerdict(
                    mismatch=srm.mismatch,
                    p_value=srm.p_value,
                    threshold=srm.threshold,
                    observed=dict(srm.observed),
                    expected=dict(srm.expected),
                    reason=srm.reason,
                ),
                correction=r.correction,
                alpha=r.alpha,
            )

    async def visible(self, console: ConsoleHost, request: Request) -> bool:
        """Shown to callers the policy lets read results."""
        return await console.may(request, self.operation)

    def routes(self, console: ConsoleHost) -> Sequence[BaseRoute]:
        """`/` (the experiments), `/{experiment}` (its result), `/{experiment}/plot.png`."""

        async def index(request: Request) -> Response:
            await console.call_context(request)
            return console.render(request, "reviews/experiments.html", {"section": self})

        async def result(request: Request) -> Response:
            key = request.path_params["experiment"]
            try:
                summary = await console.execute(request, self.operation, {"experiment": key})
            except ContractSpecError as exc:
                return console.render_error(request, exc)
            return console.render(
                request, "reviews/experiment.html", {"section": self, "result": summary}
            )

        async def plot(request: Request) -> Response:
            key = request.path_params["experiment"]
            try:  # the query decides who may see it (policy, tenant)
                await console.execute(request, self.operation, {"experiment": key})
                found = await _result(self.source, key, await console.call_context(request))
            except ContractSpecError as exc:
                return console.render_error(request, exc)
            png = await run_in_threadpool(_png, found)
            return Response(png, media_type="image/png", headers={"cache-control": "no-store"})

        return [
            Route("/", index, methods=["GET"]),
            Route("/{experiment}", result, methods=["GET"]),
            Route("/{experiment}/plot.png", plot, methods=["GET"]),
        ]
