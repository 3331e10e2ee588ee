"""Run the `EvolutionPipeline` as a contractspec-jobs job on a schedule (optional integration).

`contractspec-evolution` does not depend on contractspec-jobs; this module needs it installed
(`pip install contractspec-jobs`). Register the returned job and schedule specs with your
`Scheduler`, and the handlers with your `Worker`:

```python
job, schedule, handlers = pipeline_job(pipeline, interval_s=60)
scheduler = Scheduler(queue, [schedule])
worker = Worker(queue, handlers)
```

A run that fails is retried by the worker with the job's backoff, like any job; runs never
overlap within one worker because the job's unique key is the schedule name.
"""

from __future__ import annotations

try:
    from contractspec.jobs import (
        JobContext,
        JobHandlers,
        JobSpec,
        ScheduleSpec,
        define_job,
        define_schedule,
    )
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.evolution.jobs needs contractspec-jobs: pip install contractspec-jobs "
        "(or run the pipeline with EvolutionPipeline.run_forever())"
    ) from exc

from datetime import timedelta

from pydantic import BaseModel

from contractspec.evolution.pipeline import EvolutionPipeline

__all__ = ["PipelineRunResult", "RunPipeline", "pipeline_job"]


class RunPipeline(BaseModel):
    """Payload of the pipeline job (empty: the pipeline knows what to do)."""


class PipelineRunResult(BaseModel):
    """Result of one pipeline job run."""

    closed: int
    intents: int
    suggestions: int
    created: int


def pipeline_job(
    pipeline: EvolutionPipeline,
    *,
    interval_s: float = 60.0,
    name: str = "evolution.pipeline.run",
    timeout_s: float = 300.0,
) -> tuple[JobSpec[RunPipeline], ScheduleSpec, JobHandlers]:
    """A job spec, an interval schedule and handlers that run `pipeline.run_once()`.

    Args:
        pipeline: The pipeline to run.
        interval_s: Seconds between runs.
        name: Job type and schedule name.
        timeout_s: Longest run before the worker cancels it.

    Returns:
        `(job_spec, schedule_spec, handlers)`.
    """
    job = define_job(
        name,
        payload=RunPipeline,
        result=PipelineRunResult,
        timeout=timedelta(seconds=timeout_s),
        max_attempts=3,
        unique_key=f"{name}:run",
        description="One pass of the evolution loop: aggregate, detect, suggest, orchestrate.",
    )
    schedule = define_schedule(job, interval=timedelta(seconds=interval_s), name=name)
    handlers = JobHandlers()

    async def run(payload: RunPipeline, ctx: JobContext) -> PipelineRunResult:
        result = await pipeline.run_once()
        return PipelineRunResult(
            closed=len(result.closed),
            intents=len(result.intents),
            suggestions=len(result.suggestions),
            created=len(result.submitted.created) if result.submitted else 0,
        )

    handlers.bind(job, run)
    return job, schedule, handlers
