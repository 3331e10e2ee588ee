"""Errors raised by contractspec-jobs; all derive from `contractspec.core.ContractSpecError`.

Bad payloads and unknown options raise core's `SpecValidationError`; definition mistakes raise
core's `SpecDefinitionError`. The errors below are specific to queues and workers.
"""

from __future__ import annotations

from contractspec.core import ConflictError, ContractSpecError, NotFoundError

__all__ = ["JobTimeoutError", "LeaseLostError", "UnknownJobTypeError"]


class UnknownJobTypeError(NotFoundError):
    """A job type was enqueued that the queue's registry does not know.

    Register the job spec (`registry.register(define_job(...))`) in the registry the queue was
    built with, or fix the type name.
    """

    code = "unknown_job_type"


class LeaseLostError(ConflictError):
    """A worker tried to complete, fail or extend a job it no longer holds.

    It happens when the lease expired (the worker stalled longer than the lease and another worker
    took the job over) or when an operator cancelled the job while it ran. The worker drops its
    result; the job's current holder decides its outcome.
    """

    code = "job_lease_lost"


class JobTimeoutError(ContractSpecError, TimeoutError):
    """A job ran longer than its spec's `timeout` and was cancelled (recorded as its last error)."""

    code = "job_timeout"
