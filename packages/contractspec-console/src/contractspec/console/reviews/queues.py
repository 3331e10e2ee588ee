"""Operations queues: dead (or failed) jobs (contractspec-jobs) and dead letters (contractspec-bus)."""

from __future__ import annotations

from typing import Literal

from contractspec.console.reviews._common import QueueAction, QueueSection, require_package

__all__ = ["DeadJobs", "DeadLetters"]


class DeadJobs(QueueSection):
    """Dead jobs (or failed ones, `queue="failed"`): payload and last error, retry or discard.

    Runs `jobs.review.<queue>.{list,show,retry,discard}` (register them with
    `contractspec.jobs.review.register_review_operations`).

    Raises:
        ConfigurationError: contractspec-jobs is not installed.
    """

    def __init__(
        self,
        *,
        queue: Literal["dead", "failed"] = "dead",
        key: str | None = None,
        title: str | None = None,
    ) -> None:
        require_package("contractspec.jobs.review", "contractspec-jobs", "DeadJobs")
        prefix = f"jobs.review.{queue}"
        super().__init__(
            key=key or f"{queue}-jobs",
            title=title or f"{queue.capitalize()} jobs",
            list_operation=f"{prefix}.list",
            show_operation=f"{prefix}.show",
            id_field="job_id",
            actions=(
                QueueAction("retry", f"{prefix}.retry", "Retry"),
                QueueAction("discard", f"{prefix}.discard", "Discard", danger=True),
            ),
            list_template="reviews/jobs.html",
            detail_template="reviews/job.html",
            filters=("job_type",),
        )


class DeadLetters(QueueSection):
    """Dead letters of the event bus: the failed event and error, replay or discard.

    Runs `bus.review.dead_letters.{list,show,replay,discard}` (register them with
    `contractspec.bus.review.register_review_operations`).

    Raises:
        ConfigurationError: contractspec-bus is not installed.
    """

    def __init__(self, *, key: str = "dead-letters", title: str = "Dead letters") -> None:
        require_package("contractspec.bus.review", "contractspec-bus", "DeadLetters")
        prefix = "bus.review.dead_letters"
        super().__init__(
            key=key,
            title=title,
            list_operation=f"{prefix}.list",
            show_operation=f"{prefix}.show",
            id_field="dead_letter_id",
            actions=(
                QueueAction("replay", f"{prefix}.replay", "Replay"),
                QueueAction("discard", f"{prefix}.discard", "Discard", danger=True),
            ),
            list_template="reviews/dead_letters.html",
            detail_template="reviews/dead_letter.html",
            filters=("event_name", "subscriber"),
        )
