"""The stages of `Executor.execute`, one module each, in the order a call passes through them.

```text
plan        resolve the spec (+ variant) and its handler once; validate input and output
authorize   actor, tenant membership, required permissions; record denials (never blocking)
invoke      transaction (or the batch's savepoint), idempotency reservation, handler through
            middleware, output check, declared events (outbox), audit record, commit
report      telemetry sample and traffic record, after the call has ended
```

`idempotency` holds the reservation/replay logic `invoke` uses. The `Executor`
(`contractspec.core.executor`) owns the ports and wires these stages; nothing here is public API.
"""
