"""Redaction throughput: records per second through `TrafficRecorder.record` (goal: >= 5,000/s).

Each record is one finished call of a support-ticket command, as the executor hands it to a
traffic sink (`CallRecord`): a validated input model, an output model, and one committed event.
The records are realistic and mixed, and every one is different (its own names, addresses,
numbers), so no cache helps across records:

* input: the customer's name and e-mail (spec `PII`), a subject, a free-text body that holds an
  e-mail address, a national-format phone number, an IBAN or a card number, and a URL with
  credentials or an API key (one of each kind per record, rotating); HTTP headers
  (`Authorization`, `Cookie` with a session and harmless cookies, `X-Forwarded-For` with IPv4 and
  IPv6 addresses, `User-Agent`, `X-Request-Id`); metadata (UUIDs, epoch milliseconds, versions,
  amounts, a nested token object with `expires_at`);
* output: an id, a status, a timestamp and a summary that echoes the customer's name;
* event `support.ticket.opened`: the ticket id, the customer's e-mail (event `PII`) and a
  preview of the body.

Variants, interleaved round by round (median of `--rounds` rounds of `--records` records each):

* `redact=False`: sampling, JSON serialisation and buffering only (the floor);
* default `Redactor()`: spec PII and every echo of it, secret keys, credential headers, all
  detectors (e-mail, URL credentials, `key=value` secrets, provider keys, cards, IBANs, national
  ids, IPs, phone numbers of 23 countries).

The store is a `MemoryTrafficStore` (appended directly, no I/O), sample rate 1.0, so every record
is serialised and redacted. Single process, single thread; times are the process's CPU time
(`time.process_time`), which other load on a shared machine disturbs less than wall time.

Run: `uv run --all-packages --all-extras python benchmarks/redaction_throughput.py [--records N]`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel

from contractspec.core import (
    PII,
    CallRecord,
    EventEnvelope,
    authenticated,
    define_command,
    define_event,
)
from contractspec.testing import MemoryTrafficStore, Redactor, TrafficRecorder


class TicketIn(BaseModel):
    customer_name: Annotated[str, PII]
    customer_email: Annotated[str, PII]
    subject: str
    body: str
    headers: dict[str, str]
    metadata: dict[str, Any]


class TicketOut(BaseModel):
    id: str
    status: str
    created_at: AwareDatetime
    summary: str
    priority: int


class TicketOpened(BaseModel):
    ticket_id: str
    customer_email: Annotated[str, PII]
    preview: str


class Line(BaseModel):
    sku: str
    quantity: int
    unit_price: Decimal


class QuoteIn(BaseModel):
    customer_email: Annotated[str, PII]
    lines: list[Line]
    note: str | None = None


class QuoteOut(BaseModel):
    customer_email: Annotated[str, PII]
    total: Decimal
    lines: int


quote = define_command("shop.quote.create", input=QuoteIn, output=QuoteOut, auth=authenticated())

opened = define_event("support.ticket.opened", payload=TicketOpened)
spec = define_command(
    "support.ticket.open",
    input=TicketIn,
    output=TicketOut,
    auth=authenticated(),
    emits=[opened],
)

FIRST = ["Ada", "José", "Zoë", "Mehmet", "Anna-Lena", "Søren", "Priya", "Wei", "Olu", "Marta"]
LAST = ["Lovelace", "García", "Müller", "Yılmaz", "Nakamura", "Okafor", "Nowak", "Dubois"]  # noqa: RUF001
DOMAINS = ["example.org", "mail.example.com", "exämple.de", "corp.example.co.uk"]
#: Phone number formats (FR, DE, US, GB international, JP); `{}` is filled per record.
PHONES = ["06 12 34 56 {:02d}", "030 123456{:02d}", "(415) 555-26{:02d}", "+44 20 7946 09{:02d}",
          "03-1234-56{:02d}"]  # fmt: skip
SENSITIVE = [
    "pay to DE89 3704 0044 0532 0130 00 please",
    "card 4111 1111 1111 1111 exp 12/29",
    "my SSN is 536-22-1234",
    "connect postgresql://admin:hunter2@10.0.0.5:5432/app failed",
    "used key sk_live_51HqLyjWDarjtT1zdp7dcXYZab in the script",
    "login with password=Tr0ub4dor&3 did not work",
]


def make_record(n: int, rng: random.Random) -> CallRecord:
    """Call number `n`: every value is new, the shapes rotate through the kinds above."""
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)} {n}"
    email = f"{name.split()[0].lower()}.{n}@{rng.choice(DOMAINS)}"
    body = (
        f"Hello, this is {name}. Order #{100000 + n} arrived damaged on 2026-11-{1 + n % 28:02d}. "
        f"Reach me at {email} or {rng.choice(PHONES).format(n % 100)}; "
        f"{SENSITIVE[n % len(SENSITIVE)]}. "
        f"Build v2.{n % 40}.3, ISBN 978-3-16-148410-0, ref {uuid.UUID(int=rng.getrandbits(128))}."
    )
    inp = TicketIn(
        customer_name=name,
        customer_email=email,
        subject=f"Damaged parcel {n}",
        body=body,
        headers={
            "Authorization": f"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI{n:08d}In0.sig{n:010d}abc",
            "Cookie": f"sessionid=s{n:012d}abcdef; theme=dark; lang=en",
            "X-Forwarded-For": f"81.2.{n % 250}.{1 + n % 200}, 2a00:1450:4007:80e::{n % 9999:x}",
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
            "X-Request-Id": f"req-{n:08x}",
        },
        metadata={
            "trace": str(uuid.UUID(int=rng.getrandbits(128))),
            "received_ms": 1_733_467_200_000 + n,
            "client_version": f"4.{n % 12}.1",
            "amount": str(Decimal(n % 5000) / 100),
            "token": {"value": f"tv-{n:016x}", "expires_at": 1_733_470_800_000 + n, "id": n},
        },
    )
    now = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
    ticket = f"T-{n:07d}"
    out = TicketOut(
        id=ticket,
        status="open",
        created_at=now,
        summary=f"Ticket for {name}: damaged parcel",
        priority=n % 3,
    )
    event = EventEnvelope(
        id=f"e-{n}",
        name=opened.name,
        version=opened.version,
        occurred_at=now,
        payload=TicketOpened(ticket_id=ticket, customer_email=email, preview=body[:80]),
    )
    return CallRecord(
        spec=spec,
        input=inp,
        output=out,
        error=None,
        org_id="org-1",
        actor_id=f"u-{n % 50}",
        trace_id=f"trace-{n}",
        request_id=f"req-{n}",
        channel="http",
        started_at=now,
        duration_ms=3.2,
        events=(event,),
    )


def make_small_record(n: int, rng: random.Random) -> CallRecord:
    """A typical API call (as in `recorder_overhead.py`): an e-mail, three order lines, a note."""
    email = f"buyer.{n}@{rng.choice(DOMAINS)}"
    notes = [None, "deliver after 5pm", f"call me on +44 20 7946 09{n % 100:02d}", "gift wrap"]
    lines = [
        Line(sku=f"SKU-{rng.randrange(1000):03d}", quantity=1 + i, unit_price=Decimal("9.90"))
        for i in range(3)
    ]
    inp = QuoteIn(customer_email=email, lines=lines, note=notes[n % len(notes)])
    out = QuoteOut(customer_email=email, total=Decimal("59.40"), lines=3)
    return CallRecord(
        spec=quote,
        input=inp,
        output=out,
        error=None,
        org_id="org-1",
        actor_id=f"u-{n % 50}",
        trace_id=f"trace-{n}",
        request_id=f"req-{n}",
        channel="http",
        started_at=datetime(2026, 12, 6, 5, 0, tzinfo=UTC),
        duration_ms=1.1,
    )


def run(recorder: TrafficRecorder, records: list[CallRecord]) -> float:
    """CPU seconds of this process to record every record (the store is emptied first).

    CPU time rather than wall time: the benchmark machine is shared, and other processes'
    load would otherwise show up as redaction cost.
    """
    store = recorder.store
    assert isinstance(store, MemoryTrafficStore)
    store.snapshots.clear()
    started = time.process_time()
    for call in records:
        recorder.record(call)
    elapsed = time.process_time() - started
    assert len(store.snapshots) == len(records), recorder.stats
    return elapsed


def main() -> None:
    """Interleave the variants round by round; print median records/s of each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(15)
    workloads = {
        "support ticket (47 strings, free text with 6 kinds of secrets, headers, 1 event)": [
            make_record(n, rng) for n in range(args.records)
        ],
        "typical API call (e-mail, 3 order lines, a short note)": [
            make_small_record(n, rng) for n in range(args.records)
        ],
    }
    records = workloads[
        "support ticket (47 strings, free text with 6 kinds of secrets, headers, 1 event)"
    ]
    variants = {
        "redact=False (sampling, JSON, buffering)": TrafficRecorder(
            MemoryTrafficStore(), sample_rate=1.0, redact=False
        ),
        "Redactor() defaults": TrafficRecorder(
            MemoryTrafficStore(), sample_rate=1.0, redactor=Redactor()
        ),
    }
    # what redaction left of the first records' personal and secret values (should be nothing)
    probe = variants["Redactor() defaults"]
    for call in records[:6]:
        probe.record(call)
    stored = str([s.to_dict() for s in probe.store.snapshots])  # type: ignore[attr-defined]
    secrets = [
        *(c.input.customer_name.split()[1] for c in records[:6]),
        *(c.input.customer_email for c in records[:6]),
        "hunter2", "536-22-1234", "4111 1111 1111 1111", "Tr0ub4dor", "81.2.", "2a00:1450",
    ]  # fmt: skip
    print(f"left in the first 6 snapshots: {sorted({s for s in secrets if s in stored})}")
    for workload, records in workloads.items():
        for recorder in variants.values():  # warm-up (imports, caches of key kinds)
            run(recorder, records[:200])
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, recorder in variants.items():
                times[name].append(run(recorder, records))
        print(f"{workload}: {args.records} records per round, {args.rounds} rounds")
        rates = {name: args.records / statistics.median(t) for name, t in times.items()}
        for name, rate in rates.items():
            spread = [round(args.records / t) for t in sorted(times[name])]
            print(f"  {name:<44} {rate:>9,.0f} /s   (rounds, fastest first: {spread})")
        base = rates["redact=False (sampling, JSON, buffering)"]
        red = rates["Redactor() defaults"]
        cost = 1 / red * 1e6 - 1 / base * 1e6
        print(f"  redaction costs {cost:,.0f} us per record (goal: >= 5,000 records/s)")


if __name__ == "__main__":
    main()
